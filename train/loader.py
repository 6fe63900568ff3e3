"""Training batches with the baseline's semantics, from memory-mapped train shards.

`TokenStream` reads the sorted train shards one after another and wraps around at the end.
`BatchLoader.next_batch` takes ONE contiguous chunk of (local_tokens + 1) · world_size tokens
per micro-step; rank r uses span r, inputs are the span minus its last token and targets the
span minus its first, both reshaped to (-1, seq_len). Every rank walks the same stream, so the
batches are deterministic and disjoint across ranks without any communication.

`BosAlignedLoader` (TrainConfig `loader = "bos_aligned"`) packs documents instead: every
sequence of seq_len + 1 tokens starts at a document's BOS and runs on through the following
documents. At its end, the document that is cut loses its tail when that tail is shorter than
a sequence (dropped, counted in `tokens_skipped`: fewer than seq_len + 1 tokens per sequence)
and the next sequence starts at the next BOS; a longer tail (a document longer than a
sequence) is split instead: it continues in the next sequence (the only sequences that do not
start with BOS). As in the sequential loader, the target across a sequence boundary is unused. Sequence k of each micro-step goes to rank k // local_seqs, so ranks get disjoint
sequences of one shared stream, and a single process with N micro-steps sees the same
sequences as N ranks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from artifact.runtime.errors import ConfigError, DataError, ShardError
from artifact.runtime.shards import read_shard


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


class BosAlignedLoader:
    """Per-rank (x, y) batches whose sequences start at documents (see module docstring)."""

    REFILL = 1 << 16

    def __init__(self, files: list[Path], bos_id: int, rank: int = 0, world_size: int = 1,
                 device: str | torch.device = "cpu", vocab_size: int | None = None):
        self.rank, self.world_size, self.device = rank, world_size, torch.device(device)
        self.bos_id = bos_id
        self.stream = TokenStream(files, vocab_size)
        self.total_tokens = sum(int(read_shard(f).size) for f in self.stream.files)
        self.buffer = np.zeros(0, dtype=np.int64)
        self.pos = 0
        self.continuing = False  # the next sequence continues a split document
        self.tokens_taken = 0
        self.tokens_skipped = 0

    def _ensure(self, n: int) -> None:
        """At least `n` tokens buffered from `pos` on."""
        if self.buffer.size - self.pos >= n:
            return
        more = self.stream.take(max(n, self.REFILL))
        self.buffer = np.concatenate([self.buffer[self.pos:], more])
        self.pos = 0

    def _skip_to_bos(self) -> None:
        scanned = 0
        while True:
            self._ensure(1)
            hits = np.flatnonzero(self.buffer[self.pos:] == self.bos_id)
            if hits.size:
                self.tokens_skipped += int(hits[0])
                self.pos += int(hits[0])
                return
            scanned += self.buffer.size - self.pos
            self.tokens_skipped += self.buffer.size - self.pos
            if scanned > self.total_tokens:
                raise DataError(f"{self.stream.files[0].parent}: no BOS token (id {self.bos_id}) in the training "
                                "shards; the bos_aligned loader needs documents that start with BOS")
            self.pos = self.buffer.size

    def next_sequence(self, length: int) -> np.ndarray:
        """The next `length` tokens starting at a BOS (or continuing a split document)."""
        if not self.continuing:
            self._skip_to_bos()
        self._ensure(length + 1)
        seq = self.buffer[self.pos:self.pos + length].copy()
        self.pos += length
        if not bool((seq[1:] == self.bos_id).any()):
            # One document fills the whole sequence: split it, the next sequence continues it.
            self.continuing = int(self.buffer[self.pos]) != self.bos_id
        else:
            # The last document was cut: its tail is dropped if shorter than a sequence, else
            # (a long document) it is split and continues in the next sequence.
            self._ensure(length)
            self.continuing = not bool((self.buffer[self.pos:self.pos + length] == self.bos_id).any())
        return seq

    def next_batch(self, global_tokens: int, seq_len: int, grad_accum_steps: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        local_tokens = micro_batch_tokens(global_tokens, seq_len, self.world_size, grad_accum_steps)
        local_seqs = local_tokens // seq_len
        seqs = [self.next_sequence(seq_len + 1) for _ in range(local_seqs * self.world_size)]
        self.tokens_taken += sum(s.size for s in seqs)
        mine = np.stack(seqs[self.rank * local_seqs:(self.rank + 1) * local_seqs])
        local = torch.from_numpy(mine)
        x, y = local[:, :-1].contiguous(), local[:, 1:].contiguous()
        non_blocking = self.device.type == "cuda"
        return x.to(self.device, non_blocking=non_blocking), y.to(self.device, non_blocking=non_blocking)


def make_loader(kind: str, files: list[Path], rank: int, world_size: int, device, vocab_size: int | None,
                bos_id: int = 1):
    """The loader TrainConfig `loader` names: "sequential" (baseline) or "bos_aligned"."""
    if kind == "bos_aligned":
        return BosAlignedLoader(files, bos_id, rank, world_size, device, vocab_size)
    if kind == "sequential":
        return BatchLoader(files, rank, world_size, device, vocab_size)
    raise ConfigError(f"train config: loader {kind!r} must be 'sequential' or 'bos_aligned'")
