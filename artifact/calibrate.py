"""Calibration: Hessians H = sum X^T X of the inputs of every linear layer of any nn.Module.

Forward hooks on every `nn.Linear` (subclasses included) see each call's input X (flattened to
(tokens, in_features)) and add X^T X — each batch's product in float32 (`matmul_dtype`), summed
over batches in float64, returned as float32 — keyed by the weight's state-dict name. Linears
fed the very same input tensor (Q, K and V read one normed activation) compute X^T X once and
end with one shared H object. A parameter no linear layer reads (a tied embedding used as the
output layer through F.linear) gets its H where the model names its input: the model
contract's optional `golf_hessian_inputs()` -> {parameter name: module whose OUTPUT that
parameter multiplies} (our GPT: {"tok_emb.weight": its final norm}). The model runs through the
contract, `model(ids, next_ids)` (artifact/runtime/contract.py); the loss itself is unused.
(Older callers may instead pass `output_input_fn`, a function giving that input, stored under
`output_key`.)

Calibration tokens come from token arrays (train shards, read by the caller) or from the model
itself (`generate_calibration`: autoregressive sampling from BOS, seeded).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch
from torch import Tensor, nn

from artifact.runtime.contract import mean_loss
from artifact.runtime.errors import ConfigError, DataError
from artifact.runtime.progress import Progress


@dataclass
class Hessians:
    """H per weight name (float32, in_features x in_features; shared objects for shared inputs),
    the number of input rows (token positions) each accumulated, and the calibration size."""

    matrices: dict[str, Tensor]
    rows: dict[str, int]
    n_samples: int  # calibration token positions fed through the model
    n_sequences: int
    groups: list[list[str]] = field(default_factory=list)  # names sharing one H

    def __getitem__(self, name: str) -> Tensor:
        return self.matrices[name]

    def __contains__(self, name: object) -> bool:
        return name in self.matrices

    def get(self, name: str) -> Tensor | None:
        return self.matrices.get(name)


class _Collector:
    """Per-batch bookkeeping: each distinct input tensor gets a token and one X^T X; a module's
    H adds the X^T X of every input it saw; modules with identical token traces share H."""

    def __init__(self, matmul_dtype: torch.dtype, accumulate_dtype: torch.dtype):
        self.dtype, self.acc_dtype = matmul_dtype, accumulate_dtype
        self.sums: dict[str, Tensor] = {}
        self.rows: dict[str, int] = {}
        self.traces: dict[str, list[int]] = {}
        # id(input) -> (weak reference, token, X^T X); weak so activations die on schedule
        self.batch: dict[int, tuple[weakref.ref, int, Tensor]] = {}
        self.next_token = 0

    def add(self, key: str, x: Tensor) -> None:
        for stale in [k for k, v in self.batch.items() if v[0]() is None]:
            del self.batch[stale]
        hit = self.batch.get(id(x))
        if hit is None or hit[0]() is not x:
            flat = x.detach().reshape(-1, x.shape[-1]).to(self.dtype)
            hit = (weakref.ref(x), self.next_token, (flat.T @ flat).to(self.acc_dtype))
            self.batch[id(x)] = hit
            self.next_token += 1
        _, token, xtx = hit
        if key in self.sums:
            self.sums[key] += xtx
        else:
            self.sums[key] = xtx.clone()
        self.rows[key] = self.rows.get(key, 0) + x.numel() // x.shape[-1]
        self.traces.setdefault(key, []).append(token)

    def end_batch(self) -> None:
        self.batch.clear()

    def result(self) -> tuple[dict[str, Tensor], list[list[str]]]:
        by_trace: dict[tuple[int, ...], list[str]] = {}
        for key, trace in self.traces.items():
            by_trace.setdefault(tuple(trace), []).append(key)
        out: dict[str, Tensor] = {}
        groups = []
        for names in by_trace.values():
            shared = self.sums[names[0]].float().cpu()
            for name in names:
                out[name] = shared
            if len(names) > 1:
                groups.append(names)
        return {k: out[k] for k in self.sums}, groups


def linear_weight_names(model: nn.Module) -> dict[str, nn.Linear]:
    """Every nn.Linear of `model`, keyed by its weight's state-dict name."""
    return {f"{name}.weight" if name else "weight": m for name, m in model.named_modules() if isinstance(m, nn.Linear)}


@torch.no_grad()
def collect_hessians(model: nn.Module, batches: Iterable[Tensor], *,
                     output_input_fn: Callable[[Tensor], Tensor] | None = None,
                     output_key: str = "tok_emb.weight", matmul_dtype: torch.dtype = torch.float32,
                     accumulate_dtype: torch.dtype = torch.float64,
                     progress: Progress | None = None) -> Hessians:
    """Run `batches` (LongTensor token ids, (B, T)) through the model (the contract's forward)
    with hooks on every nn.Linear and on the modules `golf_hessian_inputs()` names. With
    `output_input_fn` (e.g. `model.hidden`), that function is what runs instead, and its
    output's X^T X is stored under `output_key` (the tied embedding as the output layer).
    Batches move to the model's device; the model is put in eval mode and restored after.
    `progress(done, total, note)` hears each batch (total 0 when `batches` has no length)."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    collector = _Collector(matmul_dtype, accumulate_dtype)
    hooks = [m.register_forward_hook(_hook(collector, key)) for key, m in linear_weight_names(model).items()]
    if output_input_fn is None:
        hooks += [m.register_forward_hook(_output_hook(collector, key)) for key, m in hessian_inputs(model).items()]
    was_training = model.training
    model.eval()
    n_samples = n_sequences = 0
    total = len(batches) if hasattr(batches, "__len__") else 0
    try:
        for i, ids in enumerate(batches):
            ids = _as_ids(ids).to(device)
            if output_input_fn is not None:
                collector.add(output_key, output_input_fn(ids))
            elif ids.is_floating_point():  # not a language model: a plain module of features
                model(ids)
            else:
                # the targets are the next tokens (the last wraps around): no layer before the
                # loss reads them, so every hooked input is the one scoring would see
                mean_loss(model, ids, torch.roll(ids, -1, dims=-1))
            collector.end_batch()
            n_samples += _positions(ids)
            n_sequences += ids.shape[0] if ids.ndim > 1 else 1
            if progress is not None:
                progress(i + 1, total, "")
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    if n_samples == 0:
        raise DataError("calibration: no batches were given")
    matrices, groups = collector.result()
    _check_finite(matrices)
    return Hessians(matrices, collector.rows, n_samples, n_sequences, groups)


def _hook(collector: _Collector, key: str):
    def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
        collector.add(key, inputs[0])
    return hook


def _output_hook(collector: _Collector, key: str):
    def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
        collector.add(key, output)
    return hook


def hessian_inputs(model: nn.Module) -> dict[str, nn.Module]:
    """The model's `golf_hessian_inputs()` ({} without one), checked: parameter names of the
    model, each mapped to one of its modules."""
    fn = getattr(model, "golf_hessian_inputs", None)
    if fn is None:
        return {}
    table = fn()
    params = dict(model.named_parameters())
    if not isinstance(table, dict):
        raise ConfigError(f"{type(model).__name__}.golf_hessian_inputs() must return a dict, got {type(table).__name__}")
    for name, module in table.items():
        if name not in params or params[name].ndim != 2:
            raise ConfigError(f"golf_hessian_inputs(): {name!r} is not a 2-D parameter of the model")
        if not isinstance(module, nn.Module):
            raise ConfigError(f"golf_hessian_inputs(): {name!r} maps to {type(module).__name__}, not a module")
    return table


def _as_ids(ids) -> Tensor:
    """Token arrays become int64 tensors with a batch axis; tensors pass through untouched (a
    generic model may take float inputs)."""
    if isinstance(ids, Tensor):
        return ids
    t = torch.as_tensor(np.asarray(ids, dtype=np.int64))
    return t if t.ndim > 1 else t[None]


def _positions(ids: Tensor) -> int:
    """Token positions in a batch: all elements of an id tensor, all but the feature axis of a
    float input."""
    return ids.numel() if not ids.is_floating_point() else ids.numel() // max(ids.shape[-1], 1)


def _check_finite(matrices: dict[str, Tensor]) -> None:
    for name, h in matrices.items():
        if not bool(torch.isfinite(h).all()):
            raise DataError(f"calibration: Hessian of {name} has NaN/Inf (the model's activations overflowed)")


def batches_from_tokens(tokens, n_seqs: int, seq_len: int, batch_size: int = 8, offset: int = 0) -> list[Tensor]:
    """Consecutive windows of `seq_len` tokens from a token array (e.g. a train shard's
    memmap), starting at `offset`, grouped `batch_size` sequences a batch."""
    need = offset + n_seqs * seq_len
    if n_seqs < 1 or seq_len < 1 or batch_size < 1:
        raise ConfigError(f"calibration: n_seqs {n_seqs}, seq_len {seq_len}, batch_size {batch_size} must be >= 1")
    if len(tokens) < need:
        raise DataError(f"calibration: need {need:,} tokens ({n_seqs} x {seq_len} from offset {offset}), have {len(tokens):,}")
    block = torch.from_numpy(np.asarray(tokens[offset:need], dtype=np.int64)).reshape(n_seqs, seq_len)
    return list(block.split(batch_size))


@torch.no_grad()
def generate_calibration(model: nn.Module, n_seqs: int, seq_len: int, temperature: float = 0.8, seed: int = 0,
                         batch_size: int = 8, bos_id: int = 1,
                         logits_fn: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Sequences (n_seqs, seq_len) the model writes itself: start at BOS, sample each next
    token from softmax(logits / temperature) with a CPU generator seeded by `seed` (identical
    output for the same model, device and seed). `logits_fn(ids) -> (B, T, V)` defaults to
    `model`. No KV cache: each step reruns the prefix (fine for calibration sizes)."""
    if temperature <= 0:
        raise ConfigError(f"calibration: temperature {temperature} must be > 0")
    if n_seqs < 1 or seq_len < 1:
        raise ConfigError(f"calibration: n_seqs {n_seqs} and seq_len {seq_len} must be >= 1")
    fn = logits_fn or model
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    gen = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, n_seqs, batch_size):
            b = min(batch_size, n_seqs - start)
            ids = torch.full((b, 1), bos_id, dtype=torch.long, device=device)
            for _ in range(seq_len - 1):
                logits = _logits(fn, ids)[:, -1, :].float().cpu()
                probs = torch.softmax(logits / temperature, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=gen)
                ids = torch.cat([ids, nxt.to(device)], dim=1)
            out.append(ids.cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


def _logits(fn, ids: Tensor) -> Tensor:
    """fn(ids) as (B, T, V) logits; a ConfigError for a model that gives none (the model
    contract asks only for losses: such a model calibrates on train tokens)."""
    try:
        out = fn(ids)
    except TypeError as e:
        out = e
    if not isinstance(out, Tensor) or out.dim() != 3 or out.shape[:2] != ids.shape:
        raise ConfigError("calibration source 'self' samples from the model's logits, but model(ids) gives none "
                          f"({out if isinstance(out, Exception) else type(out).__name__}); calibrate on train tokens "
                          "(source = \"train\")")
    return out
