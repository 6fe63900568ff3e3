"""val_bpb, exactly as the challenge computes it (artifact/docs/val_bpb.md), and `golf eval`.

Flow: load the val shards (and a CaseOps byte side-car when the dataset has one) → cut the
stream into windows (flat or sliding) → run the model over batches of windows through the model
contract (`artifact.runtime.contract`) → per-token cross-entropy in nats (float32) of the scored
positions, summed in float64, next to the bytes
those targets cover (`artifact.runtime.byte_count`) → val_bpb = Σ loss / (ln 2 · Σ bytes).

A target position t is the prediction of token t+1 from tokens ≤ t; a window (start, end,
score_from) feeds tokens[start:end] and predicts tokens[start+1:end+1], scoring its relative
positions ≥ score_from. Every target is scored exactly once in either mode.

`golf eval --ttt {chunked,lora,phased}` adds a test-time-training run (`artifact.runtime.ttt`) scored on
the same targets with the same `WindowScorer`, and reports both figures.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from torch import nn

from .errors import ConfigError, DataError, GolfError
from .byte_count import ByteCounter, check_sidecar, check_tokenizer
from .contract import mean_loss, model_vocab, per_token, token_losses
from .progress import Progress, Reporter
from .shards import DataPaths, load_tokens, read_header, read_shard, resolve_data

Window = tuple[int, int, int]  # (start, end, score_from): inputs tokens[start:end]


@dataclass
class EvalResult:
    """Figures of one evaluation. `tokens` counts scored targets; `bytes` the text bytes they
    cover; `val_loss` is the mean loss in nats per scored target; `stride` is None in flat mode."""

    mode: str
    seq_len: int
    stride: int | None
    val_loss: float
    val_bpb: float
    tokens: int
    bytes: int
    seconds: float
    tokens_per_s: float
    windows: int = 0
    device: str = "cpu"

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------- windows
def flat_kept_tokens(n_tokens: int, seq_len: int) -> int:
    """Tokens flat eval keeps: floor((N-1)/L)·L + 1 (the tail is never scored)."""
    return max((n_tokens - 1) // seq_len, 0) * seq_len + 1


def iter_flat_windows(n_tokens: int, seq_len: int) -> Iterator[Window]:
    """Consecutive windows of L targets over the truncated stream; each scores all positions."""
    for k in range((n_tokens - 1) // seq_len if n_tokens > 0 else 0):
        yield (k * seq_len, (k + 1) * seq_len, 0)


def count_sliding_windows(total: int, seq_len: int, stride: int) -> int:
    """How many windows `iter_sliding_windows` yields (without listing them)."""
    if total <= 0:
        return 0
    context = seq_len - stride
    return max(1, -(-(total - context) // stride))


def iter_sliding_windows(total: int, seq_len: int, stride: int) -> Iterator[Window]:
    """Sliding windows over `total` targets: starts 0, S, 2S, … ; window 0 scores all of its
    positions, window k ≥ 1 only its positions ≥ C = L − S (targets kS+C .. kS+L−1), and exists
    while kS + C < total, i.e. while it has something left to score. Windows at the end are
    cut at `total` (shorter than L). Window 0 exists whenever total ≥ 1, even if total ≤ C."""
    check_window_args(seq_len, stride)
    if total <= 0:
        return
    context = seq_len - stride
    yield (0, min(seq_len, total), 0)
    start = stride
    while start + context < total:
        yield (start, min(start + seq_len, total), context)
        start += stride


def sliding_windows(total: int, seq_len: int, stride: int) -> list[Window]:
    """List form of `iter_sliding_windows` (for tests and inspection)."""
    return list(iter_sliding_windows(total, seq_len, stride))


def check_window_args(seq_len: int, stride: int | None = None) -> None:
    if seq_len < 1:
        raise ConfigError(f"seq_len {seq_len} must be >= 1")
    if stride is not None and not 1 <= stride <= seq_len:
        raise ConfigError(f"stride {stride} must be in 1..seq_len ({seq_len})")


def batch_windows(windows: Iterable[Window], batch_seqs: int) -> Iterator[list[Window]]:
    """Group consecutive windows of equal length, at most `batch_seqs` per group (no padding,
    so any model — causal or not — sees exactly the window's tokens)."""
    batch: list[Window] = []
    for w in windows:
        if batch and (len(batch) == batch_seqs or w[1] - w[0] != batch[0][1] - batch[0][0]):
            yield batch
            batch = []
        batch.append(w)
    if batch:
        yield batch


# ----------------------------------------------------------------------------- core loop
def _resolve_device(model: nn.Module, device) -> torch.device:
    """None: where the model's parameters are; "auto": CUDA when available; else as named."""
    if device is None:
        param = next(model.parameters(), None)
        return param.device if param is not None else torch.device("cpu")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda requested but CUDA is not available")
    return dev


def _window_bytes(x_np: np.ndarray, y_np: np.ndarray, batch: list[Window], counter: ByteCounter | None,
                  sidecar) -> np.ndarray:
    """(B, T) bytes of every target of the batch's windows (scored or not): the side-car entry
    of each target token when there is a side-car, else the counter's table rule."""
    if sidecar is not None:
        return np.stack([sidecar[s + 1:e + 1] for s, e, _ in batch]).astype(np.int64)
    return counter.count(x_np, y_np)


class WindowScorer:
    """Scores batches of windows of one token stream with one model, accumulating Σ loss (float64,
    on the device), Σ bytes and the count of scored targets. Shared by the plain eval and by
    test-time training (`artifact.runtime.ttt`), so both score a window exactly alike. Construct it once
    per stream: it moves the model to the device and checks the stream's ids against its vocab."""

    def __init__(self, model: nn.Module, tokens: np.ndarray, counter: ByteCounter | None, sidecar,
                 device=None):
        self.model, self.tokens, self.counter, self.sidecar = model, tokens, counter, sidecar
        self.device = _resolve_device(model, device)
        model.to(self.device)
        self.top_id = int(tokens.max()) if tokens.size else 0
        _check_vocab(model, self.top_id)
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.bytes = self.scored = 0

    def autocast(self):
        """bf16 autocast on CUDA, nothing on CPU (float32)."""
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def score(self, batch: list[Window]) -> None:
        """Score one batch of equal-length windows (call under no_grad/inference_mode, with the
        model in eval mode) and add its sums. Through the model contract: per-token losses, or
        the mean times the count when every position is scored (flat windows) and the model
        gives only its mean."""
        tokens, dev = self.tokens, self.device
        length = batch[0][1] - batch[0][0]
        x_np = np.stack([tokens[s:e] for s, e, _ in batch]).astype(np.int64)
        y_np = np.stack([tokens[s + 1:e + 1] for s, e, _ in batch]).astype(np.int64)
        x = torch.from_numpy(x_np).to(dev, non_blocking=True)
        y = torch.from_numpy(y_np).to(dev, non_blocking=True)
        starts = [f for _, _, f in batch]
        with self.autocast():
            if max(starts) == 0 and not per_token(self.model):
                self.loss_sum += mean_loss(self.model, x, y).double() * y.numel()
            else:
                nll = token_losses(self.model, x, y)
                mask = torch.arange(length, device=dev)[None, :] >= torch.tensor(starts, device=dev)[:, None]
                # torch.where, not boolean indexing: no host sync on CUDA
                self.loss_sum += torch.where(mask, nll.double(), 0.0).sum()
        nbytes = _window_bytes(x_np, y_np, batch, self.counter, self.sidecar)
        np_mask = np.arange(length)[None, :] >= np.array(starts)[:, None]
        self.bytes += int(nbytes[np_mask].sum())
        self.scored += int(np_mask.sum())

    def running_bpb(self) -> float:
        """bpb so far (syncs the device)."""
        return self.loss_sum.item() / (math.log(2) * max(self.bytes, 1))

    def total_loss(self, label: str) -> float:
        """Σ loss as a float; a non-finite sum is an error naming `label`."""
        total = float(self.loss_sum.item())
        if not math.isfinite(total):
            raise GolfError(f"{label}: the model produced a non-finite loss ({total}); "
                            "its weights or activations hold NaN/Inf")
        return total


def _score_windows(model: nn.Module, tokens: np.ndarray, windows: Iterator[Window], n_windows: int,
                   counter: ByteCounter | None, sidecar, batch_seqs: int, device,
                   label: str, progress: Progress | None) -> tuple[float, int, int, float, torch.device]:
    """Run the model over the windows; return (Σ loss nats, Σ bytes, scored targets, seconds, device)."""
    if batch_seqs < 1:
        raise ConfigError(f"batch_seqs {batch_seqs} must be >= 1")
    scorer = WindowScorer(model, tokens, counter, sidecar, device)
    was_training = model.training
    model.eval()
    done = 0
    report = Reporter(progress, n_windows, label)
    t0 = time.perf_counter()
    try:
        with torch.inference_mode():
            for batch in batch_windows(windows, batch_seqs):
                scorer.score(batch)
                done += len(batch)
                report(done, lambda: f"bpb {scorer.running_bpb():.4f}")
        total_loss = scorer.total_loss(label)
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - t0
    return total_loss, scorer.bytes, scorer.scored, seconds, scorer.device


def _check_vocab(model: nn.Module, top_id: int) -> None:
    # Checked before any forward: an out-of-range id is an IndexError on CPU and a device-side
    # assert (a dead CUDA context) on GPU.
    vocab = model_vocab(model)
    if vocab is None:
        raise ConfigError(f"cannot tell the vocabulary of {type(model).__name__}: give it a `vocab_size` "
                          "attribute or an nn.Embedding")
    if top_id >= vocab:
        raise DataError(f"token id {top_id} in the data is beyond the model's vocab of {vocab}; "
                        "the data does not belong to this model")


def _result(mode, seq_len, stride, loss, nbytes, scored, seconds, n_windows, dev) -> EvalResult:
    if nbytes <= 0:
        raise DataError(f"{mode} eval: the {scored} scored targets cover 0 bytes; val_bpb is undefined")
    return EvalResult(
        mode=mode, seq_len=seq_len, stride=stride,
        val_loss=loss / scored, val_bpb=loss / (math.log(2) * nbytes),
        tokens=scored, bytes=nbytes, seconds=seconds,
        tokens_per_s=scored / seconds if seconds > 0 else float("inf"),
        windows=n_windows, device=str(dev),
    )


def prepare_stream(tokens, counter, sidecar) -> tuple[np.ndarray, np.ndarray | None]:
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise DataError(f"val tokens must be a 1-D stream, got shape {arr.shape}")
    side = check_sidecar(sidecar, arr.size) if sidecar is not None else None
    if side is None and counter is None:
        raise DataError("byte counting needs either a tokenizer's ByteCounter or a byte side-car")
    return arr, side


def eval_flat(model: nn.Module, tokens, counter: ByteCounter | None, seq_len: int, batch_seqs: int = 8,
              device=None, sidecar=None, progress: Progress | None = None) -> EvalResult:
    """Flat eval: the stream truncated to floor((N−1)/L)·L + 1 tokens, cut into consecutive
    windows of L targets, context restarting at each window; every kept target scored once.
    `sidecar` (one byte count per token) replaces the counter's tables. `device` None = where
    the model already is ("auto" = CUDA when available); the model is moved there. CUDA runs
    under bf16 autocast, CPU in float32."""
    check_window_args(seq_len)
    arr, side = prepare_stream(tokens, counter, sidecar)
    n_windows = (arr.size - 1) // seq_len if arr.size else 0
    if n_windows == 0:
        raise DataError(f"flat eval at seq_len {seq_len} needs at least {seq_len + 1} tokens, got {arr.size}")
    kept = flat_kept_tokens(arr.size, seq_len)
    arr = arr[:kept]
    side = side[:kept] if side is not None else None
    loss, nbytes, scored, secs, dev = _score_windows(
        model, arr, iter_flat_windows(kept, seq_len), n_windows, counter, side, batch_seqs, device,
        f"eval flat L={seq_len}", progress)
    return _result("flat", seq_len, None, loss, nbytes, scored, secs, n_windows, dev)


def eval_sliding(model: nn.Module, tokens, counter: ByteCounter | None, seq_len: int, stride: int,
                 batch_seqs: int = 8, device=None, sidecar=None, progress: Progress | None = None) -> EvalResult:
    """Sliding-window eval over all N−1 targets (see `iter_sliding_windows`): each target is
    scored exactly once, with up to L − S tokens of context beyond window 0. Other arguments
    as in `eval_flat`."""
    check_window_args(seq_len, stride)
    arr, side = prepare_stream(tokens, counter, sidecar)
    total = arr.size - 1
    if total < 1:
        raise DataError(f"sliding eval needs at least 2 tokens, got {arr.size}")
    n_windows = count_sliding_windows(total, seq_len, stride)
    loss, nbytes, scored, secs, dev = _score_windows(
        model, arr, iter_sliding_windows(total, seq_len, stride), n_windows, counter, side, batch_seqs,
        device, f"eval sliding L={seq_len} S={stride}", progress)
    return _result("sliding", seq_len, stride, loss, nbytes, scored, secs, n_windows, dev)


# ----------------------------------------------------------------------------- data
def load_val(data: DataPaths, vocab_size: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The val stream: sorted val shards concatenated (ids checked < vocab_size), and the
    concatenated byte side-car when the dataset ships one (shard for shard the same length)."""
    val_files = sorted(data.require_val())
    tokens = load_tokens(val_files, vocab_size)
    if not data.byte_sidecars:
        return tokens, None
    side_files = sorted(data.byte_sidecars)
    if len(side_files) != len(val_files):
        raise DataError(f"{data.dataset_dir}: {len(side_files)} byte side-car shards for "
                        f"{len(val_files)} val shards; expected one per val shard")
    for vf, sf in zip(val_files, side_files):
        n_tok, n_side = read_header(vf), read_header(sf)
        if n_tok != n_side:
            raise DataError(f"{sf}: {n_side} byte entries but {vf.name} holds {n_tok} tokens")
    sidecar = np.concatenate([np.asarray(read_shard(f)) for f in side_files])
    return tokens, sidecar


@dataclass
class ValStream:
    """The val tokens of a dataset and what counts their bytes: a tokenizer's tables or, for a
    CaseOps dataset, the byte side-car (then `counter` is None)."""

    tokens: np.ndarray
    counter: ByteCounter | None
    sidecar: np.ndarray | None
    data: DataPaths

    @property
    def byte_rule(self) -> str:
        return "side-car" if self.sidecar is not None else "tokenizer tables"


def val_stream(data: DataPaths | str | Path, vocab_size: int, max_tokens: int | None = None) -> ValStream:
    """The val stream of a data folder (or resolved DataPaths) for a model of `vocab_size`, cut
    to the first `max_tokens` tokens when given. A dataset built for a larger vocabulary than the
    model's, one with no way to count bytes, or a tokenizer that is not the data's
    (`byte_count.check_tokenizer`) is a DataError."""
    paths = data if isinstance(data, DataPaths) else resolve_data(data, vocab_size=vocab_size)
    if paths.vocab_size is not None and paths.vocab_size > vocab_size:
        raise DataError(f"{paths.dataset_dir}: dataset vocab {paths.vocab_size} exceeds the model's {vocab_size}")
    tokens, sidecar = load_val(paths, vocab_size)
    counter = None
    if sidecar is None:
        counter = ByteCounter.from_sentencepiece(paths.require_tokenizer(), vocab_size)
        named = paths.dataset_dir.name.endswith(f"_sp{paths.vocab_size}")
        check_tokenizer(counter, tokens, paths.vocab_size if named else None, str(paths.dataset_dir))
    if max_tokens is not None:
        if max_tokens < 2:
            raise ConfigError(f"max_tokens {max_tokens} must be >= 2")
        tokens = tokens[:max_tokens]
        sidecar = sidecar[:max_tokens] if sidecar is not None else None
    return ValStream(tokens, counter, sidecar, paths)
