"""Test-wide settings: idle OpenMP threads sleep (set before torch is imported; see analysis/cli.py)."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402  (after the environment is set)


@pytest.fixture
def one_thread():
    """Small tensors gain nothing from threads, and on a shared 2-core machine OpenMP threads
    wait on each other; modules opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
