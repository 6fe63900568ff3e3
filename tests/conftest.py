"""Test-wide settings: idle OpenMP threads sleep (set before torch is imported; see analysis/cli.py)."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
