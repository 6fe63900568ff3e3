"""Writing token shards in the challenge's format (artifact/docs/shards.md); the format's
constants and the reader are `artifact.runtime.shards`, which ships in submissions."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from artifact.runtime.errors import ShardError
from artifact.runtime.files import atomic_writer
from artifact.runtime.shards import HEADER_INTS, MAGIC, MAX_VOCAB, VERSION


def write_shard(path: str | Path, tokens) -> Path:
    """Write `tokens` (ints in [0, 65536)) as one shard, atomically (temp file + rename)."""
    path = Path(path)
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise ShardError(f"{path}: tokens must be one-dimensional, got shape {arr.shape}")
    if arr.size >= 2**31:
        raise ShardError(f"{path}: {arr.size} tokens is more than one shard can hold")
    if arr.size and (arr.min() < 0 or arr.max() >= MAX_VOCAB):
        raise ShardError(f"{path}: token ids must lie in [0, 65536)")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = MAGIC, VERSION, arr.size
    with atomic_writer(path) as f:
        f.write(header.tobytes())
        f.write(arr.astype("<u2", copy=False).tobytes())
    return path
