"""Training batches with the baseline's semantics, from memory-mapped train shards.

`TokenStream` reads the sorted train shards one after another and wraps around at the end.
`BatchLoader.next_batch` takes ONE contiguous chunk of (local_tokens + 1) · world_size tokens
per micro-step; rank r uses span r, inputs are the span minus its last token and targets the
span minus its first, both reshaped to (-1, seq_len). Every rank walks the same stream, so the
batches are deterministic and disjoint across ranks without any communication.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from artifact.errors import ConfigError, DataError, ShardError
from train.shards import read_shard


class TokenStream:
    """Endless sequential reader over shards (in the given order, wrapping around)."""

    def __init__(self, files: list[Path], vocab_size: int | None = None):
        if not files:
            raise DataError("no training shards to read")
        self.files = [Path(f) for f in files]
        self.vocab_size = vocab_size
        self.file_index = 0
        self.tokens = self._open(0)
        self.pos = 0

    def _open(self, index: int) -> np.ndarray:
        return read_shard(self.files[index])

    def _advance(self) -> None:
        self.file_index = (self.file_index + 1) % len(self.files)
        self.tokens = self._open(self.file_index)
        self.pos = 0

    def take(self, n: int) -> np.ndarray:
        """The next `n` tokens as an int64 array (crossing shard boundaries as needed)."""
        pieces: list[np.ndarray] = []
        remaining, empty_in_a_row = n, 0
        while remaining > 0:
            available = self.tokens.size - self.pos
            if available <= 0:
                empty_in_a_row += 1
                if empty_in_a_row > len(self.files):
                    raise DataError(f"training shards hold no tokens: {self.files[0].parent}")
                self._advance()
                continue
            empty_in_a_row = 0
            k = min(remaining, available)
            piece = np.asarray(self.tokens[self.pos:self.pos + k], dtype=np.int64)
            self._check_ids(piece)
            pieces.append(piece)
            self.pos += k
            remaining -= k
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def _check_ids(self, piece: np.ndarray) -> None:
        # Checked per chunk, not per shard, so a 10^8-token shard is never scanned up front.
        if self.vocab_size is not None and piece.size and int(piece.max()) >= self.vocab_size:
            raise ShardError(
                f"{self.files[self.file_index]}: token id {int(piece.max())} is out of range for vocab "
                f"size {self.vocab_size}; the tokenizer/model does not match these shards"
            )


class BatchLoader:
    """Per-rank (x, y) batches: `next_batch(global_tokens, seq_len, grad_accum_steps)`."""

    def __init__(self, files: list[Path], rank: int = 0, world_size: int = 1,
                 device: str | torch.device = "cpu", vocab_size: int | None = None):
        self.rank, self.world_size, self.device = rank, world_size, torch.device(device)
        self.stream = TokenStream(files, vocab_size)
        self.tokens_taken = 0

    def next_batch(self, global_tokens: int, seq_len: int, grad_accum_steps: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        local_tokens = micro_batch_tokens(global_tokens, seq_len, self.world_size, grad_accum_steps)
        span = local_tokens + 1
        chunk = self.stream.take(span * self.world_size)
        self.tokens_taken += chunk.size
        local = torch.from_numpy(chunk[self.rank * span:(self.rank + 1) * span])
        x = local[:-1].reshape(-1, seq_len)
        y = local[1:].reshape(-1, seq_len)
        non_blocking = self.device.type == "cuda"
        return x.to(self.device, non_blocking=non_blocking), y.to(self.device, non_blocking=non_blocking)


def micro_batch_tokens(global_tokens: int, seq_len: int, world_size: int, grad_accum_steps: int) -> int:
    """Tokens one rank processes per micro-step; must be a positive multiple of seq_len."""
    local = global_tokens // (world_size * grad_accum_steps)
    if local <= 0 or local % seq_len:
        raise ConfigError(
            f"batch_tokens {global_tokens} split over {world_size} rank(s) x {grad_accum_steps} "
            f"micro-step(s) gives {local} tokens, not a positive multiple of seq_len {seq_len}"
        )
    return local
