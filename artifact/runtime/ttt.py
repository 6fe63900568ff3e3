"""Test-time training (TTT) in the eval harness, legal by construction (artifact/docs/val_bpb.md).

The rule: a token may be trained on only after it has been scored, and every target is scored
exactly once. Every mode here is one loop over an ordered *plan* of groups of windows
(`artifact.runtime.scoring` windows: (start, end, score_from), inputs tokens[start:end], scoring the
targets start+score_from .. end−1). For each group the loop FIRST scores all of its windows with
the current weights (no grad, `evaluate.WindowScorer`, the very code of the plain eval), THEN
updates on training windows that lie inside targets already scored. Nothing else ever reaches
the optimizer, so the ordering is the proof; `TTTTrace` records it so a test can check it.

Modes (`TTTConfig.mode`):
- "chunked": full-model TTT (seeds 000, 002). The plain eval's own windows (flat or sliding) are
  grouped into chunks of ~`chunk_tokens` targets in stream order; after scoring chunk c the
  model trains `epochs` passes over chunk c's targets (windows of seq_len), lr on a cosine over
  the stream; the last chunk is never trained on (nothing is left to score). Frozen first
  `frozen_blocks` blocks. Scores exactly the plain eval's windows: with lr 0 it IS the plain eval.
- "lora": per-document LoRA TTT. Documents start at BOS (id 1); each document's targets are
  scored in chunks of `chunk_tokens` (≤ seq_len) with up to seq_len tokens of context from the
  same document, and after each chunk the document's own LoRA adapters (fresh for every
  document, B = 0) take `epochs` steps on that chunk. The base weights are never changed.
- "phased": seed 004's global phased TTT: per-document LoRA TTT as above, and after each of
  `phases` equal slices of the first `prefix_docs` documents has been scored, the base model
  trains (`global_epochs` passes, `lr`, cosine over phases) on all documents scored so far.

Document modes score the same targets as the plain eval (flat: the truncated stream; sliding:
all N−1), so the bytes are identical; only the context differs (it restarts at each document):
`eval_documents` gives that reference without any update.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Iterable, Iterator

import numpy as np
import torch
from torch import nn

from .errors import ConfigError, DataError
from .byte_count import ByteCounter
from .config import build_dataclass
from .contract import require_per_token, token_losses
from .progress import Progress, Reporter
from .scoring import (Window, WindowScorer, batch_windows, check_window_args, flat_kept_tokens, iter_flat_windows,
                      iter_sliding_windows, prepare_stream)
from .tokenizer import BOS_ID

MODES = ("chunked", "lora", "phased")
OPTIMIZERS = ("sgd", "adamw")
DEFAULT_CHUNK = {"chunked": 32768, "lora": 64, "phased": 64}


@dataclass
class TTTConfig:
    """Knobs of one TTT run. `chunk_tokens` None = 32768 (chunked) or 64 (lora/phased);
    `lr` drives full-model updates (chunked, and phased's global phases), `lora_lr` the
    adapters. `batch_seqs` × `train_seq_len` (None = the eval's seq_len) shape the full-model
    training steps. `lora_targets`: names (or name suffixes, e.g. "c_q", "attn.proj") of the
    nn.Linear modules that get adapters; ("all",) = every nn.Linear."""

    mode: str = "chunked"
    chunk_tokens: int | None = None
    epochs: int = 1
    optimizer: str = "sgd"
    lr: float = 0.002
    cosine: bool = True
    momentum: float = 0.9
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    frozen_blocks: int = 0
    batch_seqs: int = 8
    train_seq_len: int | None = None
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_lr: float = 0.001
    lora_optimizer: str = "adamw"
    lora_targets: tuple[str, ...] = ("c_q", "c_v", "attn.proj", "mlp.fc", "mlp.proj")
    phases: int = 1
    prefix_docs: int = 2000
    global_epochs: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.lora_targets, str):
            self.lora_targets = tuple(t.strip() for t in self.lora_targets.split(",") if t.strip())
        self.lora_targets = tuple(self.lora_targets)
        self.validate()

    def validate(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(f"ttt config: {msg}")

        def finite_nonneg(name: str) -> None:
            value = getattr(self, name)
            need(isinstance(value, (int, float)) and math.isfinite(value) and value >= 0,
                 f"{name} {value!r} must be a finite number >= 0")

        need(self.mode in MODES, f"mode {self.mode!r} must be one of {', '.join(MODES)}")
        need(self.optimizer in OPTIMIZERS, f"optimizer {self.optimizer!r} must be one of {', '.join(OPTIMIZERS)}")
        need(self.lora_optimizer in OPTIMIZERS,
             f"lora_optimizer {self.lora_optimizer!r} must be one of {', '.join(OPTIMIZERS)}")
        for name in ("chunk_tokens", "train_seq_len"):
            value = getattr(self, name)
            need(value is None or (isinstance(value, int) and value >= 1), f"{name} {value!r} must be >= 1")
        for name in ("epochs", "frozen_blocks", "prefix_docs", "global_epochs"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) >= 0, f"{name} must be an integer >= 0")
        for name in ("batch_seqs", "lora_rank", "phases"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, f"{name} must be an integer >= 1")
        for name in ("lr", "lora_lr", "weight_decay", "grad_clip", "lora_alpha"):
            finite_nonneg(name)
        need(self.lora_alpha > 0, "lora_alpha must be > 0")
        need(isinstance(self.momentum, (int, float)) and 0.0 <= self.momentum < 1.0,
             f"momentum {self.momentum!r} must be a number in [0, 1)")
        need(len(self.lora_targets) > 0, "lora_targets names no module")

    def chunk_for(self, seq_len: int) -> int:
        """Targets per chunk for this mode (document modes: at most seq_len)."""
        chunk = self.chunk_tokens or DEFAULT_CHUNK[self.mode]
        if self.mode != "chunked" and chunk > seq_len:
            raise ConfigError(f"ttt config: chunk_tokens {chunk} exceeds seq_len {seq_len}; a "
                              f"{self.mode} chunk is scored in one window")
        return chunk

    @classmethod
    def from_dict(cls, data: dict, source: str = "ttt config") -> "TTTConfig":
        return build_dataclass(cls, data, source)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["lora_targets"] = list(self.lora_targets)
        return out


@dataclass
class TTTResult:
    """Figures of one TTT eval: the same fields as `EvalResult` for the score, plus what the
    training did. `score_seconds`/`train_seconds` split `seconds`."""

    mode: str
    seq_len: int
    stride: int | None
    chunk_tokens: int
    val_loss: float
    val_bpb: float
    tokens: int
    bytes: int
    seconds: float
    score_seconds: float
    train_seconds: float
    chunks: int
    documents: int
    updates: int
    trained_targets: int
    device: str
    config: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


class TTTTrace:
    """Event log of a run, for proofs: `scores` holds (event, first target, end target) per
    scored window, `updates` (event, kind, [(start, end, loss_from), ...]) per optimizer step,
    where a training window feeds tokens[start:end] and its loss covers targets
    start+loss_from .. end−1, and kind is "chunk" (full model, chunked), "lora" (a document's
    adapters) or "global" (phased: the base model). Events count up from 0 in the order things
    happened."""

    def __init__(self) -> None:
        self.clock = 0
        self.scores: list[tuple[int, int, int]] = []
        self.updates: list[tuple[int, str, list[Window]]] = []

    def scored(self, window: Window) -> None:
        start, end, score_from = window
        self.scores.append((self.clock, start + score_from, end))
        self.clock += 1

    def updated(self, kind: str, windows: list[Window]) -> None:
        self.updates.append((self.clock, kind, list(windows)))
        self.clock += 1


# ----------------------------------------------------------------------------- plans
def document_spans(tokens: np.ndarray, n_targets: int) -> list[tuple[int, int]]:
    """Target ranges [first, end) of the documents among the first `n_targets` targets: a
    document starts at each BOS (its targets predict what follows the BOS) and its last target
    predicts the next document's BOS. A stream that does not open with BOS starts with a
    partial document."""
    bos = np.flatnonzero(np.asarray(tokens[:n_targets]) == BOS_ID).tolist()
    starts = bos if bos and bos[0] == 0 else [0, *bos]
    return [(a, b) for a, b in zip(starts, [*starts[1:], n_targets]) if b > a]


def document_windows(span: tuple[int, int], chunk: int, seq_len: int) -> list[Window]:
    """One window per chunk of the document's targets: chunk [a, b) is scored from inputs
    tokens[max(first, b − L):b], i.e. with up to L − (b − a) tokens of earlier context from
    the same document, never across its start."""
    first, end = span
    out = []
    for a in range(first, end, chunk):
        b = min(a + chunk, end)
        start = max(first, b - seq_len)
        out.append((start, b, a - start))
    return out


def training_windows(first: int, end: int, seq_len: int) -> list[Window]:
    """Consecutive windows of ≤ L targets covering targets [first, end), loss on all of them."""
    return [(s, min(s + seq_len, end), 0) for s in range(first, end, seq_len)]


def _eval_plan(n_tokens: int, seq_len: int, stride: int | None) -> tuple[int, Iterator[Window]]:
    """(targets, windows) of the plain eval over a stream of n_tokens: flat (truncated) or sliding."""
    if stride is None:
        if (n_tokens - 1) // seq_len < 1:
            raise DataError(f"flat eval at seq_len {seq_len} needs at least {seq_len + 1} tokens, got {n_tokens}")
        kept = flat_kept_tokens(n_tokens, seq_len)
        return kept - 1, iter_flat_windows(kept, seq_len)
    if n_tokens < 2:
        raise DataError(f"sliding eval needs at least 2 tokens, got {n_tokens}")
    return n_tokens - 1, iter_sliding_windows(n_tokens - 1, seq_len, stride)


def chunk_groups(windows: Iterable[Window], chunk_tokens: int) -> Iterator[list[Window]]:
    """Consecutive windows grouped by (first scored target // chunk_tokens): chunks in stream
    order, no window split (a chunk may hold more or fewer targets when windows straddle)."""
    for _, group in itertools.groupby(windows, key=lambda w: (w[0] + w[2]) // chunk_tokens):
        yield list(group)


# ----------------------------------------------------------------------------- LoRA
class LoRAAdapters:
    """Low-rank adapters on chosen nn.Linear modules, added by forward hooks: the module's
    output gains (α/r)·(x Aᵀ) Bᵀ. The base weights are never touched; `remove()` takes the hooks
    off again. `reset()` gives fresh adapters (A seeded, B = 0, so a fresh adapter adds zero)."""

    def __init__(self, model: nn.Module, targets: tuple[str, ...], rank: int, alpha: float,
                 skip_prefixes: tuple[str, ...], seed: int, device: torch.device):
        linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        wanted = [(n, m) for n, m in linears if _matches(n, targets) and not n.startswith(skip_prefixes)]
        if not wanted:
            names = ", ".join(n for n, _ in linears) or "none"
            raise ConfigError(f"ttt config: lora_targets {list(targets)} match no trainable nn.Linear "
                              f"of the model (its linear layers: {names})")
        self.scale, self.seed, self.enabled = alpha / rank, seed, True
        self.names = [n for n, _ in wanted]
        self.a = [torch.zeros(rank, m.in_features, device=device, requires_grad=True) for _, m in wanted]
        self.b = [torch.zeros(m.out_features, rank, device=device, requires_grad=True) for _, m in wanted]
        self.hooks = [m.register_forward_hook(self._hook(i)) for i, (_, m) in enumerate(wanted)]
        self.reset()

    def _hook(self, i: int):
        def add_delta(module, inputs, output):
            if not self.enabled:
                return None
            x = inputs[0]
            return output + (x @ self.a[i].to(x.dtype).t()) @ self.b[i].to(x.dtype).t() * self.scale
        return add_delta

    def parameters(self) -> list[torch.Tensor]:
        return [*self.a, *self.b]

    def reset(self) -> None:
        gen = torch.Generator().manual_seed(self.seed)  # every document starts from the same adapters
        with torch.no_grad():
            for a, b in zip(self.a, self.b):
                bound = 1.0 / math.sqrt(a.size(1))
                a.copy_(torch.rand(a.shape, generator=gen).mul_(2 * bound).sub_(bound))
                b.zero_()

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()
        self.hooks = []


def _matches(name: str, targets: tuple[str, ...]) -> bool:
    return "all" in targets or any(name == t or name.endswith("." + t) for t in targets)


# ----------------------------------------------------------------------------- training
def _frozen_prefixes(model: nn.Module, frozen_blocks: int) -> tuple[str, ...]:
    if frozen_blocks == 0:
        return ()
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise ConfigError("ttt config: frozen_blocks needs a model with a `blocks` list")
    if frozen_blocks > len(blocks):
        raise ConfigError(f"ttt config: frozen_blocks {frozen_blocks} exceeds the model's {len(blocks)} blocks")
    return tuple(f"blocks.{i}." for i in range(frozen_blocks))


def _make_optimizer(kind: str, params: list[torch.Tensor], lr: float, cfg: TTTConfig):
    if not params:
        raise ConfigError("ttt config: nothing left to train (every parameter is frozen)")
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)


def _cosine(lr: float, frac: float, on: bool) -> float:
    return lr * 0.5 * (1.0 + math.cos(math.pi * frac)) if on else lr


class _Runner:
    """Shared state of one run: the scorer (sums, device), the trace, timers, counters."""

    def __init__(self, model, tokens, counter, sidecar, cfg: TTTConfig, seq_len, device, trace):
        self.model, self.tokens, self.cfg, self.seq_len = model, tokens, cfg, seq_len
        self.train_len = cfg.train_seq_len or seq_len
        self.scorer = WindowScorer(model, tokens, counter, sidecar, device)
        self.trace = trace
        self.score_s = self.train_s = 0.0
        self.updates = self.trained = 0

    def score(self, windows: list[Window], batch_seqs: int) -> None:
        """Score windows with the current weights (inference mode, eval mode)."""
        t0 = time.perf_counter()
        self.model.eval()
        with torch.inference_mode():
            for batch in batch_windows(windows, batch_seqs):
                self.scorer.score(batch)
                if self.trace is not None:
                    for w in batch:
                        self.trace.scored(w)
        self.score_s += time.perf_counter() - t0

    def train(self, kind: str, windows: list[Window], optimizer, params: list[torch.Tensor], lr: float,
              epochs: int) -> None:
        """`epochs` passes of optimizer steps over the windows (each batch = one step); the loss
        is the mean cross-entropy of each window's targets from its loss_from on."""
        if not windows or epochs == 0:
            return
        t0 = time.perf_counter()
        dev = self.scorer.device
        for group in optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        for _ in range(epochs):
            for batch in batch_windows(windows, self.cfg.batch_seqs):
                x = torch.from_numpy(np.stack([self.tokens[s:e] for s, e, _ in batch]).astype(np.int64)).to(dev)
                y = torch.from_numpy(np.stack([self.tokens[s + 1:e + 1] for s, e, _ in batch]).astype(np.int64)).to(dev)
                with self.scorer.autocast():
                    nll = token_losses(self.model, x, y, "test-time training")
                loss_from = torch.tensor([f for _, _, f in batch], device=dev)
                keep = torch.arange(x.size(1), device=dev)[None, :] >= loss_from[:, None]
                loss = torch.where(keep, nll, 0.0).sum() / keep.sum()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if self.cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
                optimizer.step()
                self.updates += 1
                self.trained += int(keep.sum())
                if self.trace is not None:
                    self.trace.updated(kind, batch)
        optimizer.zero_grad(set_to_none=True)
        self.model.eval()
        self.train_s += time.perf_counter() - t0


def _trainable(model: nn.Module, frozen: tuple[str, ...]) -> list[torch.Tensor]:
    """Set requires_grad: False for parameters under the frozen prefixes, True otherwise."""
    params = []
    for name, p in model.named_parameters():
        p.requires_grad_(not name.startswith(frozen))
        if p.requires_grad:
            params.append(p)
    return params


def _run_chunked(run: _Runner, n_targets: int, windows: Iterator[Window], chunk: int, batch_seqs: int,
                 meter: Reporter) -> tuple[int, int]:
    cfg = run.cfg
    params = _trainable(run.model, _frozen_prefixes(run.model, cfg.frozen_blocks))
    opt = _make_optimizer(cfg.optimizer, params, cfg.lr, cfg)
    chunks = 0
    for group in chunk_groups(windows, chunk):
        run.score(group, batch_seqs)  # first: score the whole chunk with the current weights
        chunks += 1
        first, end = group[0][0] + group[0][2], group[-1][1]
        if end < n_targets:  # then train on it, unless nothing is left to score
            lr = _cosine(cfg.lr, first / n_targets, cfg.cosine)
            run.train("chunk", training_windows(first, end, run.train_len), opt, params, lr, cfg.epochs)
        meter(end, lambda: f"bpb {run.scorer.running_bpb():.4f} chunks {chunks}")
    return chunks, 0


def _run_documents(run: _Runner, n_targets: int, chunk: int, meter: Reporter, phased: bool) -> tuple[int, int]:
    cfg, model = run.cfg, run.model
    spans = document_spans(run.tokens, n_targets)
    frozen = _frozen_prefixes(model, cfg.frozen_blocks)
    base_state = [(p, p.requires_grad) for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)  # the adapters train; the base weights take no gradient
    adapt = cfg.epochs > 0  # epochs 0: plain document scoring, no adapters at all
    lora = (LoRAAdapters(model, cfg.lora_targets, cfg.lora_rank, cfg.lora_alpha, frozen, cfg.seed, run.scorer.device)
            if adapt else None)
    boundaries = _phase_boundaries(min(cfg.prefix_docs, len(spans)), cfg.phases) if phased else {}
    global_opt = global_params = None
    chunks = 0
    try:
        for d, span in enumerate(spans):
            if adapt:
                lora.reset()
                opt = _make_optimizer(cfg.lora_optimizer, lora.parameters(), cfg.lora_lr, cfg)
            for w in document_windows(span, chunk, run.seq_len):
                run.score([w], 1)  # first: score this chunk of the document
                chunks += 1
                if adapt and w[1] < span[1]:  # then adapt on it, unless the document is done
                    run.train("lora", [w], opt, lora.parameters(), cfg.lora_lr, cfg.epochs)
            meter(span[1], lambda: f"bpb {run.scorer.running_bpb():.4f} docs {d + 1}/{len(spans)}")
            if d + 1 in boundaries and d + 1 < len(spans):
                if adapt:
                    lora.enabled = False  # global phase: the base model on every document scored so far
                global_params = _trainable(model, frozen)  # the same tensors every phase
                if global_opt is None:
                    global_opt = _make_optimizer(cfg.optimizer, global_params, cfg.lr, cfg)
                windows = [w for a, b in spans[:d + 1] for w in training_windows(a, b, run.train_len)]
                lr = _cosine(cfg.lr, boundaries[d + 1] / cfg.phases, cfg.cosine)
                run.train("global", windows, global_opt, global_params, lr, cfg.global_epochs)
                for p in model.parameters():
                    p.requires_grad_(False)
                if adapt:
                    lora.enabled = True
    finally:
        if adapt:
            lora.remove()
        for p, flag in base_state:
            p.requires_grad_(flag)
    return chunks, len(spans)


def _phase_boundaries(prefix_docs: int, phases: int) -> dict[int, int]:
    """Document counts after which a global phase runs -> phase index (0-based)."""
    out: dict[int, int] = {}
    for k in range(1, phases + 1):
        n = round(prefix_docs * k / phases)
        if n > 0 and n not in out:
            out[n] = len(out)
    return out


def run_ttt(model: nn.Module, tokens, counter: ByteCounter | None, seq_len: int, cfg: TTTConfig,
            stride: int | None = None, batch_seqs: int = 8, device=None, sidecar=None,
            progress: Progress | None = None, trace: TTTTrace | None = None, in_place: bool = False) -> TTTResult:
    """Score the stream with test-time training (see the module docstring) and return val_bpb.

    The targets and their bytes are those of `eval_flat` (stride None) or `eval_sliding`
    (stride S) over the same tokens. "chunked" and "phased" train a copy of `model` (or
    `model` itself with `in_place`, to keep the adapted weights); "lora" runs on `model` and
    leaves its weights bit-identical. `trace` records every score and update (for legality
    proofs). The model's requires_grad flags and train/eval mode are restored."""
    check_window_args(seq_len, stride)
    if not isinstance(cfg, TTTConfig):
        raise ConfigError(f"run_ttt needs a TTTConfig, got {type(cfg).__name__}")
    require_per_token(model, "test-time training")  # before any scoring
    arr, side = prepare_stream(tokens, counter, sidecar)
    n_targets, windows = _eval_plan(arr.size, seq_len, stride)
    arr = arr[:n_targets + 1]
    side = side[:n_targets + 1] if side is not None else None
    chunk = cfg.chunk_for(seq_len)
    work = model if cfg.mode == "lora" or in_place else copy.deepcopy(model)
    run = _Runner(work, arr, counter, side, cfg, seq_len, device, trace)
    was_training = model.training
    flags = [(p, p.requires_grad) for p in work.parameters()]
    meter = Reporter(progress, n_targets, f"ttt {cfg.mode} L={seq_len}")
    t0 = time.perf_counter()
    try:
        if cfg.mode == "chunked":
            chunks, docs = _run_chunked(run, n_targets, windows, chunk, batch_seqs, meter)
        else:
            chunks, docs = _run_documents(run, n_targets, chunk, meter, phased=cfg.mode == "phased")
        loss = run.scorer.total_loss(f"ttt {cfg.mode}")
    finally:
        model.train(was_training)
        for p, flag in flags:
            p.requires_grad_(flag)
    seconds = time.perf_counter() - t0
    if run.scorer.scored != n_targets:  # the plan covers every target once; guard it anyway
        raise DataError(f"ttt {cfg.mode}: scored {run.scorer.scored} targets, expected {n_targets}")
    if run.scorer.bytes <= 0:
        raise DataError(f"ttt {cfg.mode}: the {n_targets} scored targets cover 0 bytes; val_bpb is undefined")
    nbytes = run.scorer.bytes
    return TTTResult(
        mode=cfg.mode, seq_len=seq_len, stride=stride, chunk_tokens=chunk,
        val_loss=loss / n_targets, val_bpb=loss / (math.log(2) * nbytes), tokens=n_targets, bytes=nbytes,
        seconds=seconds, score_seconds=run.score_s, train_seconds=run.train_s, chunks=chunks,
        documents=docs, updates=run.updates, trained_targets=run.trained, device=str(run.scorer.device),
        config=cfg.to_dict(),
    )


def eval_documents(model: nn.Module, tokens, counter: ByteCounter | None, seq_len: int, chunk_tokens: int,
                   stride: int | None = None, device=None, sidecar=None, progress: Progress | None = None) -> TTTResult:
    """The document modes' scoring with no update at all: every document scored in chunks with
    context restarting at its BOS (the reference the lora/phased numbers compare against)."""
    cfg = TTTConfig(mode="lora", chunk_tokens=chunk_tokens, epochs=0)
    return run_ttt(model, tokens, counter, seq_len, cfg, stride=stride, device=device, sidecar=sidecar,
                   progress=progress)
