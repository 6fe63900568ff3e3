"""val_bpb, exactly as the challenge computes it (challenge.md §2–§3), and `golf eval`.

Flow: load the val shards (and a CaseOps byte side-car when the dataset has one) → cut the
stream into windows (flat or sliding) → run the model over batches of windows → per-token
cross-entropy in nats (float32) of the scored positions, summed in float64, next to the bytes
those targets cover (`train.byte_count`) → val_bpb = Σ loss / (ln 2 · Σ bytes).

A target position t is the prediction of token t+1 from tokens ≤ t; a window (start, end,
score_from) feeds tokens[start:end] and predicts tokens[start+1:end+1], scoring its relative
positions ≥ score_from. Every target is scored exactly once in either mode.

`golf eval --ttt {chunked,lora,phased}` adds a test-time-training run (`train.ttt`) scored on
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
import torch.nn.functional as F
from torch import nn

from artifact.cliutil import Progress, add_json_flag, emit
from artifact.errors import CheckpointError, ConfigError, DataError, GolfError
from train.byte_count import ByteCounter, check_sidecar
from train.shards import DataPaths, load_tokens, read_header, read_shard

Window = tuple[int, int, int]  # (start, end, score_from): inputs tokens[start:end]
_COUNT_CHUNK = 1 << 22


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
    _check_window_args(seq_len, stride)
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


def _check_window_args(seq_len: int, stride: int | None = None) -> None:
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
    test-time training (`train.ttt`), so both score a window exactly alike. Construct it once
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
        model in eval mode) and add its sums."""
        tokens, dev = self.tokens, self.device
        length = batch[0][1] - batch[0][0]
        x_np = np.stack([tokens[s:e] for s, e, _ in batch]).astype(np.int64)
        y_np = np.stack([tokens[s + 1:e + 1] for s, e, _ in batch]).astype(np.int64)
        x = torch.from_numpy(x_np).to(dev, non_blocking=True)
        y = torch.from_numpy(y_np).to(dev, non_blocking=True)
        with self.autocast():
            logits = self.model(x)
        _check_logits(logits, len(batch), length, self.top_id)
        first = min(f for _, _, f in batch)  # positions before it are scored by no window
        starts = torch.tensor([f for _, _, f in batch], device=dev)
        mask = torch.arange(first, length, device=dev)[None, :] >= starts[:, None]
        nll = F.cross_entropy(logits[:, first:].float().reshape(-1, logits.size(-1)),
                              y[:, first:].reshape(-1), reduction="none").view(len(batch), -1)
        # torch.where, not boolean indexing: no host sync on CUDA
        self.loss_sum += torch.where(mask, nll.double(), 0.0).sum()
        nbytes = _window_bytes(x_np, y_np, batch, self.counter, self.sidecar)
        np_mask = np.arange(length)[None, :] >= np.array([f for _, _, f in batch])[:, None]
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
                   label: str, progress: bool) -> tuple[float, int, int, float, torch.device]:
    """Run the model over the windows; return (Σ loss nats, Σ bytes, scored targets, seconds, device)."""
    if batch_seqs < 1:
        raise ConfigError(f"batch_seqs {batch_seqs} must be >= 1")
    scorer = WindowScorer(model, tokens, counter, sidecar, device)
    was_training = model.training
    model.eval()
    done = 0
    meter = Progress(label, n_windows, enabled=progress)
    meter.last = time.perf_counter()  # first line after `every_s`, not at once
    t0 = time.perf_counter()
    try:
        with torch.inference_mode():
            for batch in batch_windows(windows, batch_seqs):
                scorer.score(batch)
                done += len(batch)
                if progress and time.perf_counter() - meter.last >= meter.every_s:
                    # .item() syncs the device, so only when a progress line is due
                    meter.update(done, f"bpb {scorer.running_bpb():.4f}")
        total_loss = scorer.total_loss(label)
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - t0
    return total_loss, scorer.bytes, scorer.scored, seconds, scorer.device


def _model_vocab(model: nn.Module) -> int | None:
    """The model's input vocabulary: its config's, else its first embedding's row count."""
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if isinstance(vocab, int):
        return vocab
    emb = next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)
    return emb.num_embeddings if emb is not None else None


def _check_vocab(model: nn.Module, top_id: int) -> None:
    # Checked before any forward: an out-of-range id is an IndexError on CPU and a device-side
    # assert (a dead CUDA context) on GPU.
    vocab = _model_vocab(model)
    if vocab is not None and top_id >= vocab:
        raise DataError(f"token id {top_id} in the data is beyond the model's vocab of {vocab}; "
                        "the data does not belong to this model")


def _check_logits(logits, batch: int, length: int, top_id: int) -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3 or tuple(logits.shape[:2]) != (batch, length):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise CheckpointError(f"model returned {shape}; expected logits of shape ({batch}, {length}, vocab)")
    if top_id >= logits.size(-1):
        raise DataError(f"token id {top_id} in the data is beyond the model's {logits.size(-1)} logits; "
                        "the data does not belong to this model's vocabulary")


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


def _prepare(tokens, counter, sidecar) -> tuple[np.ndarray, np.ndarray | None]:
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise DataError(f"val tokens must be a 1-D stream, got shape {arr.shape}")
    side = check_sidecar(sidecar, arr.size) if sidecar is not None else None
    if side is None and counter is None:
        raise DataError("byte counting needs either a tokenizer's ByteCounter or a byte side-car")
    return arr, side


def eval_flat(model: nn.Module, tokens, counter: ByteCounter | None, seq_len: int, batch_seqs: int = 8,
              device=None, sidecar=None, progress: bool = True) -> EvalResult:
    """Flat eval: the stream truncated to floor((N−1)/L)·L + 1 tokens, cut into consecutive
    windows of L targets, context restarting at each window; every kept target scored once.
    `sidecar` (one byte count per token) replaces the counter's tables. `device` None = where
    the model already is ("auto" = CUDA when available); the model is moved there. CUDA runs
    under bf16 autocast, CPU in float32."""
    _check_window_args(seq_len)
    arr, side = _prepare(tokens, counter, sidecar)
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
                 batch_seqs: int = 8, device=None, sidecar=None, progress: bool = True) -> EvalResult:
    """Sliding-window eval over all N−1 targets (see `iter_sliding_windows`): each target is
    scored exactly once, with up to L − S tokens of context beyond window 0. Other arguments
    as in `eval_flat`."""
    _check_window_args(seq_len, stride)
    arr, side = _prepare(tokens, counter, sidecar)
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


def unigram_bpb(train_tokens, val_tokens, counter: ByteCounter | None, seq_len: int,
                sidecar=None, vocab_size: int | None = None) -> float:
    """bpb of an add-one smoothed unigram model fitted on `train_tokens`, scored on exactly the
    targets `eval_flat` scores at `seq_len` (same truncation, same byte rule). The smoothing
    spans `vocab_size` ids (default: the counter's table size)."""
    _check_window_args(seq_len)
    val, side = _prepare(val_tokens, counter, sidecar)
    vocab = vocab_size or (counter.table_size if counter is not None else None)
    if vocab is None:
        raise ConfigError("unigram_bpb needs vocab_size when no ByteCounter is given")
    train = np.asarray(train_tokens)
    if train.size == 0:
        raise DataError("unigram_bpb: no training tokens")
    if int(train.max()) >= vocab or int(val.max()) >= vocab:
        raise DataError(f"unigram_bpb: token ids reach {max(int(train.max()), int(val.max()))}, "
                        f"beyond the vocab of {vocab}")
    kept = flat_kept_tokens(val.size, seq_len)
    if kept < 2:
        raise DataError(f"unigram_bpb at seq_len {seq_len} needs at least {seq_len + 1} val tokens")
    counts = np.zeros(vocab, dtype=np.float64)
    for i in range(0, train.size, _COUNT_CHUNK):  # chunks: no int64 copy of a 100M-token shard
        counts += np.bincount(train[i:i + _COUNT_CHUNK], minlength=vocab)
    log_p = np.log(counts + 1.0) - math.log(train.size + vocab)
    loss, nbytes = 0.0, 0
    for lo in range(1, kept, _COUNT_CHUNK):  # target token indices lo..hi-1
        hi = min(lo + _COUNT_CHUNK, kept)
        loss -= float(log_p[val[lo:hi]].sum())
        if side is not None:
            nbytes += int(side[lo:hi].sum(dtype=np.int64))
        else:
            nbytes += int(counter.count(val[lo - 1:hi - 1], val[lo:hi]).sum())
    if nbytes <= 0:
        raise DataError("unigram_bpb: the scored targets cover 0 bytes")
    return loss / (math.log(2) * nbytes)


# ----------------------------------------------------------------------------- command line
def _meta_seq_len(meta) -> int | None:
    """The training sequence length recorded in a checkpoint's metadata, if any."""
    if not isinstance(meta, dict):
        return None
    for key in ("seq_len", "train_seq_len"):
        if isinstance(meta.get(key), int):
            return meta[key]
    for section in ("train", "training", "config"):
        sub = meta.get(section)
        if isinstance(sub, dict):
            found = _meta_seq_len(sub)
            if found:
                return found
    return None


def register(sub) -> None:
    p = sub.add_parser("eval", help="exact val_bpb of a checkpoint (flat or sliding window, optional TTT)",
                       description="Score a checkpoint on a dataset's validation shards with the "
                                   "challenge's exact val_bpb rule. Numbers on non-FineWeb text are "
                                   "not comparable with FineWeb results.")
    p.add_argument("checkpoint", nargs="?", default=None,
                   help="checkpoint folder or file (default: the bundled checkpoint)")
    p.add_argument("--data", default=None, help="data root or dataset folder (default: bundled data)")
    p.add_argument("--seq-len", type=int, default=None,
                   help="window length L (default: the checkpoint's training seq_len, else 1024)")
    p.add_argument("--stride", type=int, default=None, help="sliding-window stride S (default: flat eval)")
    p.add_argument("--batch-seqs", type=int, default=8, help="windows per forward pass (default 8)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto = CUDA (bf16 autocast) when available, else CPU (float32)")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="evaluate only the first N val tokens (quick looks; not the full score)")
    add_ttt_flags(p)
    add_json_flag(p)
    p.set_defaults(run=_run_eval, help_parser=p)


# flag -> (TTTConfig field, type, help); defaults live in TTTConfig alone
_TTT_FLAGS = {
    "--ttt-chunk": ("chunk_tokens", int, "targets per chunk (default 32768 chunked, 64 lora/phased; <= seq_len there)"),
    "--ttt-epochs": ("epochs", int, "passes over each scored chunk (lora: steps per chunk; default 1)"),
    "--ttt-optimizer": ("optimizer", str, "full-model optimizer: sgd or adamw (default sgd)"),
    "--ttt-lr": ("lr", float, "full-model lr (chunked; phased global phases; default 0.002)"),
    "--ttt-momentum": ("momentum", float, "SGD momentum (default 0.9)"),
    "--ttt-weight-decay": ("weight_decay", float, "weight decay (default 0)"),
    "--ttt-grad-clip": ("grad_clip", float, "gradient-norm clip, 0 = off (default 1.0)"),
    "--ttt-freeze-blocks": ("frozen_blocks", int, "freeze the first N blocks (default 0)"),
    "--ttt-batch-seqs": ("batch_seqs", int, "training windows per step (default 8)"),
    "--ttt-seq-len": ("train_seq_len", int, "full-model training window length (default: --seq-len)"),
    "--ttt-lora-rank": ("lora_rank", int, "LoRA rank (default 8)"),
    "--ttt-lora-alpha": ("lora_alpha", float, "LoRA alpha; the delta is scaled alpha/rank (default 16)"),
    "--ttt-lora-lr": ("lora_lr", float, "LoRA lr (default 0.001)"),
    "--ttt-lora-optimizer": ("lora_optimizer", str, "LoRA optimizer: sgd or adamw (default adamw)"),
    "--ttt-lora-targets": ("lora_targets", str, "comma list of nn.Linear names/suffixes, or 'all' "
                                                "(default c_q,c_v,attn.proj,mlp.fc,mlp.proj)"),
    "--ttt-phases": ("phases", int, "phased: global phases over the prefix documents (default 1)"),
    "--ttt-prefix-docs": ("prefix_docs", int, "phased: documents covered by the global phases (default 2000)"),
    "--ttt-global-epochs": ("global_epochs", int, "phased: passes over the scored documents per phase (default 1)"),
    "--ttt-seed": ("seed", int, "seed of the LoRA initialisation (default 0)"),
}


def add_ttt_flags(p) -> None:
    """The `--ttt` flags of `golf eval` (and of `golf pack`, so a submission scores the same way)."""
    g = p.add_argument_group("test-time training (score first, then train on scored tokens only)")
    g.add_argument("--ttt", choices=("chunked", "lora", "phased"), default=None,
                   help="also score with test-time training and report both val_bpb figures")
    for flag, (dest, kind, text) in _TTT_FLAGS.items():
        metavar = {int: "N", float: "X"}.get(kind, "NAME")
        g.add_argument(flag, dest="ttt_" + dest, type=kind, default=None, metavar=metavar, help=text)
    g.add_argument("--ttt-no-cosine", dest="ttt_cosine", action="store_false", default=None,
                   help="constant lr instead of the cosine decay over the stream / phases")


def ttt_config_from_args(args):
    """The TTTConfig of the command line (only the flags given override its defaults)."""
    from train.ttt import TTTConfig

    given = {dest: getattr(args, "ttt_" + dest) for dest, _, _ in _TTT_FLAGS.values()}
    given["cosine"] = args.ttt_cosine
    overrides = {k: v for k, v in given.items() if v is not None}
    return TTTConfig(mode=args.ttt, **overrides)


def _run_eval(args) -> int:
    from train.bundled import BUNDLED_CHECKPOINT, BUNDLED_DATA
    from train.checkpoint import load_checkpoint
    from train.shards import resolve_data

    ttt_cfg = ttt_config_from_args(args) if args.ttt else None  # bad knobs fail before any work
    ckpt = Path(args.checkpoint) if args.checkpoint else BUNDLED_CHECKPOINT
    model, cfg, meta = load_checkpoint(ckpt)
    vocab = int(cfg.vocab_size)
    data = resolve_data(args.data or BUNDLED_DATA, vocab_size=vocab)
    if data.vocab_size is not None and data.vocab_size > vocab:
        raise DataError(f"{data.dataset_dir}: dataset vocab {data.vocab_size} exceeds the model's {vocab}")
    tokens, sidecar = load_val(data, vocab)
    counter = None
    if data.tokenizer is not None:
        counter = ByteCounter.from_sentencepiece(data.tokenizer, vocab)
    elif sidecar is None:
        data.require_tokenizer()  # raises: no way to count bytes
    if args.max_tokens is not None:
        if args.max_tokens < 2:
            raise ConfigError(f"--max-tokens {args.max_tokens} must be >= 2")
        tokens = tokens[:args.max_tokens]
        sidecar = sidecar[:args.max_tokens] if sidecar is not None else None
    seq_len = args.seq_len or _meta_seq_len(meta) or 1024
    if ttt_cfg is not None:
        ttt_cfg.chunk_for(seq_len)
    common = dict(batch_seqs=args.batch_seqs, device=args.device, sidecar=sidecar, progress=True)
    if args.stride is not None:
        result = eval_sliding(model, tokens, counter, seq_len, args.stride, **common)
    else:
        result = eval_flat(model, tokens, counter, seq_len, **common)
    out = result.to_dict()
    out.update(checkpoint=str(ckpt), dataset=str(data.dataset_dir),
               byte_rule="side-car" if sidecar is not None else "tokenizer tables",
               val_tokens=int(np.asarray(tokens).size))
    if ttt_cfg is not None:
        out["ttt"] = _ttt_figures(model, tokens, counter, seq_len, args, ttt_cfg, sidecar, result)
    emit(out, args.json, _text)
    return 0


def _ttt_figures(model, tokens, counter, seq_len, args, cfg, sidecar, plain: EvalResult) -> dict:
    """The TTT run's figures next to the plain eval's; document modes also report the
    per-document scoring without any update (their context restarts at each BOS)."""
    from train.ttt import eval_documents, run_ttt

    common = dict(stride=args.stride, device=args.device, sidecar=sidecar)
    res = run_ttt(model, tokens, counter, seq_len, cfg, batch_seqs=args.batch_seqs, progress=True, **common)
    if (res.tokens, res.bytes) != (plain.tokens, plain.bytes):  # the proof's premise; never expected
        raise GolfError(f"ttt scored {res.tokens} targets / {res.bytes} bytes, the plain eval "
                        f"{plain.tokens} / {plain.bytes}")
    out = res.to_dict()
    out.update(baseline_val_bpb=plain.val_bpb, gain_bpb=plain.val_bpb - res.val_bpb, doc_baseline=None)
    if cfg.mode != "chunked":
        docs = eval_documents(model, tokens, counter, seq_len, res.chunk_tokens, progress=True, **common)
        out["doc_baseline"] = {"val_bpb": docs.val_bpb, "val_loss": docs.val_loss, "seconds": docs.seconds}
    return out


def _text(r: dict) -> str:
    mode = r["mode"] + (f" (stride {r['stride']})" if r["stride"] else "")
    return "\n".join([
        f"checkpoint   {r['checkpoint']}",
        f"dataset      {r['dataset']}  (bytes from {r['byte_rule']})",
        f"mode         {mode}, seq_len {r['seq_len']}, {r['windows']} windows on {r['device']}",
        f"val_loss     {r['val_loss']:.6f} nats/token",
        f"val_bpb      {r['val_bpb']:.6f}",
        f"scored       {r['tokens']:,} tokens, {r['bytes']:,} bytes",
        f"time         {r['seconds']:.2f} s, {r['tokens_per_s']:,.0f} tokens/s",
        *(_ttt_text(r["ttt"]) if r.get("ttt") else []),
    ])


def _ttt_text(t: dict) -> list[str]:
    lines = [
        f"ttt          {t['mode']}, chunk {t['chunk_tokens']}, {t['chunks']} chunks"
        + (f", {t['documents']} documents" if t["documents"] else "")
        + f", {t['updates']} updates on {t['device']}",
    ]
    if t.get("doc_baseline"):
        lines.append(f"ttt doc ref  val_bpb {t['doc_baseline']['val_bpb']:.6f} (documents scored apart, no update)")
    lines += [
        f"ttt val_bpb  {t['val_bpb']:.6f}  (without TTT {t['baseline_val_bpb']:.6f}, gain {t['gain_bpb']:+.6f})",
        f"ttt time     {t['seconds']:.2f} s (scoring {t['score_seconds']:.2f} s, training {t['train_seconds']:.2f} s)",
    ]
    return lines
