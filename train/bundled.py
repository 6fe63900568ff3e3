"""Paths of the bundled default: a small checkpoint trained by this project's own trainer on
the real mixed-English corpus, its tokenizer, a held-out val shard and a small train shard
(for calibration). Every command that takes a checkpoint or data falls back to these."""

from __future__ import annotations

from pathlib import Path

BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"
BUNDLED_DATA = BUNDLED_DIR / "data"
BUNDLED_CHECKPOINT = BUNDLED_DIR / "checkpoint"
# Figures the bundled checkpoint scored when it was committed (rewritten by the bundling script).
BUNDLED_FIGURES = BUNDLED_DIR / "figures.json"
