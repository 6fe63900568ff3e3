"""How many bytes of text each scored target token stands for (artifact/docs/val_bpb.md).

val_bpb divides the summed loss by the number of UTF-8 bytes the scored tokens cover. With a
plain SentencePiece dataset those bytes come from three tables built off the tokenizer:

  base[y]      0 for control/unknown/unused pieces, 1 for byte-fallback pieces, else the UTF-8
               length of the piece after removing ONE leading "▁" (U+2581);
  space[y]     the (normal) piece starts with "▁";
  boundary[x]  x is a control/unknown/unused piece or an id beyond the tokenizer's vocab;

  bytes_t = base[y] + (space[y] and not boundary[x])     (y = target, x = the token before it)

so a word-initial space costs one byte unless it follows BOS, and BOS as a target costs 0.
The tables span max(tokenizer vocab, model vocab) ids (a model may pad its vocabulary), but an
id the tokenizer has no piece for is an error wherever bytes are counted: its bytes are unknown,
so data holding one was not tokenized with this tokenizer (counting it as 0 bytes would lower
val_bpb). `check_tokenizer` applies the same rules as `golf data check` to a val stream.

A CaseOps dataset instead ships a byte side-car (one entry per token: the original bytes that
token covers), which replaces the tables: the bytes of target token t are side-car entry t.
`target_bytes` gives either rule for a whole token stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import DataError
from .tokenizer import load_tokenizer

SPACE_MARK = "\u2581"  # "▁": SentencePiece's escaped space


@dataclass(frozen=True, eq=False)
class ByteCounter:
    """The three byte tables of one tokenizer (see module docstring). `tokenizer_vocab` ids are
    real pieces and the only ones `count` accepts; the rest of `table_size` is a model's padding."""

    base: np.ndarray  # int64 (table_size,)
    space: np.ndarray  # bool (table_size,)
    boundary: np.ndarray  # bool (table_size,)
    tokenizer_vocab: int
    source: str = "<tables>"
    _torch_cache: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        n = len(self.base)
        if len(self.space) != n or len(self.boundary) != n:
            raise DataError(f"{self.source}: byte tables differ in length")
        if self.tokenizer_vocab > n:
            raise DataError(f"{self.source}: tokenizer vocab {self.tokenizer_vocab} exceeds table size {n}")

    @property
    def table_size(self) -> int:
        return len(self.base)

    @classmethod
    def from_sentencepiece(cls, model_path: str | Path, vocab_size: int | None = None) -> "ByteCounter":
        """Build the tables from a SentencePiece `.model` file.

        `vocab_size` is the model's vocabulary: the tables then cover max(tokenizer, model) ids.
        A tokenizer with MORE pieces than the model is an error: the shards may hold ids the
        model cannot predict, so model and tokenizer do not belong together. Fewer pieces is
        fine (a `hard_vocab_limit=False` tokenizer may come out smaller than asked, and a model
        may pad its vocabulary); the ids in between are boundaries worth 0 bytes."""
        path = Path(model_path)
        sp = load_tokenizer(path)  # DataError when missing or not a SentencePiece model
        return cls.from_processor(sp, vocab_size, source=str(path))

    @classmethod
    def from_processor(cls, sp, vocab_size: int | None = None, source: str = "<tokenizer>") -> "ByteCounter":
        """Build the tables from a loaded `SentencePieceProcessor` (see `from_sentencepiece`)."""
        sp_vocab = int(sp.vocab_size())
        if vocab_size is not None:
            if vocab_size <= 0:
                raise DataError(f"{source}: model vocab size {vocab_size} must be positive")
            if sp_vocab > vocab_size:
                raise DataError(
                    f"{source}: tokenizer has {sp_vocab} pieces but the model's vocab is {vocab_size}; "
                    "this tokenizer does not belong to this model"
                )
        size = max(sp_vocab, vocab_size or 0)
        base = np.zeros(size, dtype=np.int64)
        space = np.zeros(size, dtype=bool)
        boundary = np.ones(size, dtype=bool)  # ids beyond the tokenizer stay boundaries
        for i in range(sp_vocab):
            if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
                continue
            boundary[i] = False
            if sp.is_byte(i):
                base[i] = 1
                continue
            piece = sp.id_to_piece(i)
            if piece.startswith(SPACE_MARK):
                space[i] = True
                piece = piece[1:]
            base[i] = len(piece.encode("utf-8"))
        return cls(base=base, space=space, boundary=boundary, tokenizer_vocab=sp_vocab, source=source)

    def count(self, prev_ids, tgt_ids):
        """Bytes of each target `tgt_ids[i]` preceded by `prev_ids[i]` (same shapes).

        Works on numpy arrays (returns int64 numpy) and torch tensors (returns int64 on the
        tensors' device). Ids outside [0, tokenizer_vocab) raise DataError (module docstring)."""
        if isinstance(tgt_ids, torch.Tensor) or isinstance(prev_ids, torch.Tensor):
            return self._count_torch(torch.as_tensor(prev_ids), torch.as_tensor(tgt_ids))
        prev = np.asarray(prev_ids)
        tgt = np.asarray(tgt_ids)
        if prev.shape != tgt.shape:
            raise DataError(f"{self.source}: prev ids {prev.shape} and target ids {tgt.shape} differ in shape")
        self._check_range(prev, "previous")
        self._check_range(tgt, "target")
        prev = prev.astype(np.int64, copy=False)
        tgt = tgt.astype(np.int64, copy=False)
        return self.base[tgt] + (self.space[tgt] & ~self.boundary[prev])

    def _count_torch(self, prev: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        if prev.shape != tgt.shape:
            raise DataError(f"{self.source}: prev ids {tuple(prev.shape)} and target ids {tuple(tgt.shape)} differ in shape")
        self._check_range(prev, "previous")
        self._check_range(tgt, "target")
        base, space, boundary = self._tables_on(tgt.device)
        prev, tgt = prev.long(), tgt.long()
        return base[tgt] + (space[tgt] & ~boundary[prev]).long()

    def _tables_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        key = str(device)
        if key not in self._torch_cache:
            self._torch_cache[key] = (
                torch.from_numpy(self.base).to(device),
                torch.from_numpy(self.space).to(device),
                torch.from_numpy(self.boundary).to(device),
            )
        return self._torch_cache[key]

    def _check_range(self, ids, what: str) -> None:
        empty = ids.numel() == 0 if isinstance(ids, torch.Tensor) else ids.size == 0
        if empty:
            return
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= self.tokenizer_vocab:
            bad = hi if hi >= self.tokenizer_vocab else lo
            raise DataError(f"{self.source}: {what} token id {bad} has no piece in this tokenizer "
                            f"({self.tokenizer_vocab} pieces): the data was not tokenized with it")

    def sequence_bytes(self, tokens) -> np.ndarray:
        """Bytes of every target of a token stream: entry t is target tokens[t+1] after
        tokens[t] (length N-1), as int64."""
        arr = np.asarray(tokens)
        if arr.ndim != 1:
            raise DataError(f"{self.source}: expected a 1-D token stream, got shape {arr.shape}")
        if arr.size < 2:
            return np.zeros(0, dtype=np.int64)
        return self.count(arr[:-1], arr[1:])


def check_tokenizer(counter: ByteCounter, tokens, declared: int | None, where: str) -> None:
    """The tokenizer must be the one `tokens` (a val stream, from the dataset `where`) was made
    with, by the rules of `golf data check`: as many pieces as the dataset declares (its folder's
    `_sp<V>`, when it says) and a piece for every id. One DataError, never a score."""
    if declared is not None and declared != counter.tokenizer_vocab:
        raise DataError(f"{counter.source}: tokenizer has {counter.tokenizer_vocab} pieces but the dataset {where} "
                        f"says {declared}: this tokenizer does not belong to this data")
    arr = np.asarray(tokens)
    if arr.size and int(arr.max()) >= counter.tokenizer_vocab:
        raise DataError(f"{where}: val token id {int(arr.max())} has no piece in {counter.source} "
                        f"({counter.tokenizer_vocab} pieces): the data was not tokenized with this tokenizer")


def check_sidecar(sidecar, n_tokens: int, source: str = "byte side-car") -> np.ndarray:
    """Validate a CaseOps byte side-car against a stream of `n_tokens` tokens; return it as a
    1-D numpy array. Its length must equal the token count (one entry per token)."""
    arr = np.asarray(sidecar)
    if arr.ndim != 1:
        raise DataError(f"{source}: expected one entry per token (1-D), got shape {arr.shape}")
    if arr.size != n_tokens:
        raise DataError(
            f"{source}: {arr.size} byte entries for {n_tokens} tokens; the side-car must have "
            "exactly one entry per token"
        )
    if arr.size and np.issubdtype(arr.dtype, np.signedinteger) and int(arr.min()) < 0:
        raise DataError(f"{source}: negative byte count {int(arr.min())}")
    return arr


def sidecar_bytes(sidecar, positions) -> np.ndarray:
    """Side-car rule: the bytes of the target at token index `positions` (the target's own
    index in the stream, i.e. t+1 for the target after tokens[t]) are `sidecar[positions]`."""
    return np.asarray(sidecar)[np.asarray(positions)].astype(np.int64, copy=False)


def target_bytes(tokens, counter: ByteCounter | None = None, sidecar=None) -> np.ndarray:
    """Bytes of every target of a token stream (length N-1, int64): from the side-car when one
    is given (it replaces the tables), else from `counter`'s tables."""
    arr = np.asarray(tokens)
    if sidecar is not None:
        side = check_sidecar(sidecar, arr.size)
        return side[1:].astype(np.int64)
    if counter is None:
        raise DataError("byte counting needs either a tokenizer's ByteCounter or a byte side-car")
    return counter.sequence_bytes(arr)
