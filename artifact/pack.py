"""The packer: a state dict and a recipe in, container entries out — plus, for every tensor, the
exact weights the shipped decoder will rebuild and a row of figures (error, predicted bytes).

Per tensor, in this order: magnitude pruning (the rule's fraction) → clip and scales (the rule's
clip rule) → GPTQ (rules with `gptq`, Hessian required) or round-to-nearest → LQER on the
recipe's top-k tensors by error → ±1-code pruning to a byte target (`[prune_pm1] target_bytes`)
→ `TensorEntry`. `PackResult.dequantized` is computed from the entries with the decoder's own
functions (`decoder.dequantize`, `decoder.apply_lqer`) in float32 numpy, exactly as
`decoder.decode` rebuilds them, so what is measured is what ships.

Hessians are used where the recipe asks for them (GPTQ, `hsdclip`, LQER ranked or scaled by
the Hessian) and for the reported error; a plain clip search stays a weight-MSE search even when
Hessians are given (as the records' "GPTQ-lite" was), so a recipe packs the same with or without
calibration when it does not need it. LQER corrects the error against the *unpruned* weights;
its candidates are the quantized 2-D tensors matching `[lqer] among` whose shapes fit the rank and
the factors' group sizes (the records' B groups of 64 need columns divisible by 64).

Calibration (running a model) is `calibrate_for_recipe`: Hessians from train tokens or from
tokens the model generates itself, as the recipe's `[calibration]` table says.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from artifact import codec as codecs
from artifact.calibrate import batches_from_tokens, collect_hessians, generate_calibration
from artifact.container import QuantBlock, TensorEntry, bf16_bits, build_blob
from artifact.runtime.decoder import apply_lqer, dequantize
from artifact.runtime.errors import ConfigError, DataError
from artifact.gptq import gptq_quantize
from artifact.lqer import LowRank, lqer, select_targets
from artifact.prune import magnitude_prune, prune_to_size
from artifact.quant import Quantized, check_finite, quantize_tensor, weighted_error
from artifact.recipe import Recipe, TensorPlan
from artifact.runtime.progress import Progress

QUANTIZED_SCHEMES = ("per_row", "per_tensor", "ternary", "binary")


@dataclass
class PackResult:
    """Entries for `container.build_blob` / `write_artifact` (state-dict order), one row of
    figures per tensor, and the float32 weights the decoder will produce for each tensor."""

    entries: list[TensorEntry]
    rows: list[dict[str, Any]]
    dequantized: dict[str, Tensor]
    recipe: str = ""
    lqer_targets: list[str] = field(default_factory=list)
    pm1_pruned: int = 0

    def to_frame(self):
        """`rows` (one per tensor) as a pandas DataFrame, for a notebook."""
        import pandas as pd  # only a notebook user pays for pandas here

        return pd.DataFrame(self.rows)


@dataclass
class _Packed:
    """Work in progress for one tensor."""

    plan: TensorPlan
    weight: Tensor  # the original tensor (detached, CPU)
    q: Quantized
    low_rank: LowRank | None = None


def recipe_needs_hessians(recipe: Recipe) -> bool:
    """True when packing with `recipe` needs calibration Hessians (GPTQ, hsdclip, LQER by H)."""
    return recipe.needs_hessians()


# ------------------------------------------------------------------------------ calibration

def calibrate_for_recipe(model: torch.nn.Module, recipe: Recipe, train_tokens=None,
                         output_input_fn: Callable[[Tensor], Tensor] | None = None,
                         progress: Progress | None = None) -> dict[str, Tensor | None]:
    """Hessians (X^T X per linear weight name, and per parameter the model's
    `golf_hessian_inputs()` names: `calibrate.collect_hessians`) from the recipe's calibration
    tokens: windows of `train_tokens` (source "train"; e.g. a train shard's memmap) or sequences
    the model samples itself (source "self"; seeded, so repeatable; needs `model(ids)` to give
    logits, as golf's GPT does). `output_input_fn` (older callers) stores the output layer's
    input under the recipe's `output_key` instead of the model's own map."""
    cal = recipe.calibration
    if cal.source == "train":
        if train_tokens is None:
            raise DataError(f"recipe {recipe.name}: calibration source 'train' needs train tokens (a train shard)")
        batches = batches_from_tokens(train_tokens, cal.n_seqs, cal.seq_len, cal.batch_size, cal.offset)
    else:
        ids = generate_calibration(model, cal.n_seqs, cal.seq_len, cal.temperature, cal.seed,
                                   cal.batch_size, cal.bos_id)
        batches = list(ids.split(cal.batch_size))
    return hessians_for_recipe(model, recipe, batches, output_input_fn, progress)


def hessians_for_recipe(model: torch.nn.Module, recipe: Recipe, batches,
                        output_input_fn: Callable[[Tensor], Tensor] | None = None,
                        progress: Progress | None = None) -> dict[str, Tensor | None]:
    """Hessians from the given calibration `batches` (token-id tensors), keyed as
    `pack_state_dict` reads them: X^T X per linear weight, the tied output layer's under the
    recipe's `output_key` via `output_input_fn`, and None for every other 2-D parameter."""
    key = recipe.calibration.output_key
    hessians = collect_hessians(model, batches, output_input_fn=output_input_fn, output_key=key, progress=progress)
    out = dict(hessians.matrices)
    # None marks a matrix no linear layer reads and the model names no input for (an extra
    # embedding table: bigram hash, value embeddings, an untied input embedding): calibrated,
    # but with no Hessian to have. GPTQ rules round it to nearest.
    out.update({n: None for n, p in model.state_dict().items() if p.ndim == 2 and n not in out})
    return out


# ------------------------------------------------------------------------------ packing

def pack_state_dict(state_dict: dict[str, Tensor], recipe: Recipe, hessians=None, progress=None,
                    predict_sizes: bool = True) -> PackResult:
    """Pack every tensor of `state_dict` under `recipe`.

    `hessians`: {weight name: X^T X} (a dict or `calibrate.Hessians`), required when the recipe
    needs them (`recipe_needs_hessians`). `progress(done, total, name)` hears each tensor.
    `predict_sizes=False`
    skips the per-tensor byte predictions (rows then hold None) for speed."""
    packed, targets, pm1 = _pack_tensors(state_dict, recipe, hessians, progress)
    entries = [_entry(p, recipe) for p in packed.values()]
    dequantized = {e.name: torch.from_numpy(decoded_weights(e)) for e in entries}
    rows = [_row(p, e, dequantized[e.name], _hessian(hessians, e.name), predict_sizes)
            for p, e in zip(packed.values(), entries)]
    return PackResult(entries, rows, dequantized, recipe.name, targets, pm1)


def pack_entries(state_dict: dict[str, Tensor], recipe: Recipe, hessians=None, progress=None) -> list[TensorEntry]:
    """The container entries of `pack_state_dict` alone (no figures, no decoded weights): what
    `container.build_blob` turns into the artifact."""
    packed, _, _ = _pack_tensors(state_dict, recipe, hessians, progress)
    return [_entry(p, recipe) for p in packed.values()]


def _pack_tensors(state_dict, recipe: Recipe, hessians, progress) -> tuple[dict[str, _Packed], list[str], int]:
    """Every tensor quantized, LQER-corrected and ±1-pruned: (work per tensor, LQER targets,
    ±1 codes zeroed)."""
    plans = recipe.plan(state_dict)
    for name, t in state_dict.items():  # fail before any work on a bad checkpoint
        _check_finite(t.detach(), name)
    if recipe_needs_hessians(recipe) and hessians is None:
        needing = [n for n, p in plans.items() if p.gptq is not None or p.spec.clip.kind == "hsdclip"]
        what = f"tensor {needing[0]} (GPTQ / Hessian-aware clip)" if needing else "its LQER settings"
        raise ConfigError(f"recipe {recipe.name}: {what} needs calibration Hessians, but none were given "
                          "(calibrate first: calibrate_for_recipe)")
    report = _reporter(progress, len(plans))
    packed: dict[str, _Packed] = {}
    for i, (name, plan) in enumerate(plans.items()):
        w = state_dict[name].detach().cpu()
        packed[name] = _Packed(plan, w, quantize_planned(name, w, plan, hessians, recipe.name))
        report(i + 1, name)
    targets = _apply_lqer(packed, recipe, hessians) if recipe.lqer is not None else []
    pm1 = _apply_pm1(packed, recipe) if recipe.prune_pm1 and recipe.prune_pm1.target_bytes else 0
    return packed, targets, pm1


def _check_finite(t: Tensor, name: str) -> None:
    """CheckpointError naming the tensor if it holds NaN/Inf. A sum is NaN/Inf whenever an
    element is (and, rarely, when finite values overflow): only then is the exact check run."""
    if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t.sum(dtype=torch.float64))):
        check_finite(t, name)


def _reporter(progress: Progress | None, total: int):
    if progress is None:
        return lambda done, name: None
    return lambda done, name: progress(done, total, name)


def _hessian(hessians, name: str) -> Tensor | None:
    return None if hessians is None else hessians.get(name)


def quantize_planned(name: str, w: Tensor, plan: TensorPlan, hessians, recipe_name: str) -> Quantized:
    """Prune → clip/scale → GPTQ or round-to-nearest, for one tensor."""
    spec = plan.spec
    if spec.scheme not in QUANTIZED_SCHEMES:  # passthrough and the baseline's own rule
        return quantize_tensor(w, spec, name=name)
    x = magnitude_prune(w.float(), plan.prune) if plan.prune > 0 else w.float()
    needs_h = plan.gptq is not None or spec.clip.kind == "hsdclip"
    h = _hessian(hessians, name) if needs_h else None
    if needs_h and h is None:
        # A tensor calibration marked as read by no linear layer (None, see calibrate_for_recipe)
        # is rounded to nearest under a GPTQ rule; a missing Hessian, or an hsdclip rule, is an error.
        if plan.gptq is None or hessians is None or name not in hessians:
            why = "GPTQ" if plan.gptq is not None else "hsdclip"
            raise ConfigError(f"recipe {recipe_name}: tensor {name} needs a Hessian ({why}) but calibration has none for it")
        return quantize_tensor(x, spec, None, name=name)
    if plan.gptq is not None:
        return gptq_quantize(x, h, spec, plan.gptq, name=name)
    return quantize_tensor(x, spec, h, name=name)


def _apply_lqer(packed: dict[str, _Packed], recipe: Recipe, hessians) -> list[str]:
    """Correct the recipe's LQER targets in place; return the target names (state-dict order)."""
    cfg = recipe.lqer
    candidates = {n: p for n, p in packed.items()
                  if p.plan.spec.scheme in QUANTIZED_SCHEMES and p.weight.ndim == 2
                  and any(fnmatch.fnmatchcase(n, g) for g in cfg.among)
                  and _factors_fit(cfg, cfg.rank_for(n), p.weight.shape)}
    errors = {}
    for n, p in candidates.items():
        h = None
        if cfg.rank_by == "hessian":
            h = _hessian(hessians, n)
            if h is None:
                raise ConfigError(f"recipe {recipe.name}: [lqer] rank_by = 'hessian' but there is no Hessian for {n}")
        errors[n] = weighted_error(p.weight, p.q.dequantize(), h)
    names, patterns = None, cfg.target_patterns
    if patterns is not None:  # globs or plain names among the candidates (`names` or `ranks`)
        names = [n for n in candidates if any(fnmatch.fnmatchcase(n, g) for g in patterns)]
        missing = [g for g in patterns if not any(fnmatch.fnmatchcase(n, g) for n in candidates)]
        if missing:
            key = "ranks" if cfg.ranks is not None else "names"
            raise ConfigError(f"recipe {recipe.name}: [lqer] {key} {missing} match no quantized 2-D tensor "
                              f"whose shape fits {'its rank' if cfg.ranks else f'rank {cfg.rank}'} "
                              f"and the factors' group sizes")
    chosen = set(select_targets(errors, cfg.top_k, names))
    for n, p in candidates.items():
        if n not in chosen:
            continue
        h = _hessian(hessians, n) if cfg.scaling != "none" else None
        if cfg.scaling != "none" and h is None:
            raise ConfigError(f"recipe {recipe.name}: [lqer] scaling {cfg.scaling!r} needs a Hessian for {n}")
        p.low_rank = lqer(p.weight.float(), p.q.dequantize(), cfg.rank_for(n), cfg.factor_a, cfg.factor_b, hessian=h,
                          scaling=cfg.scaling, refit_b=cfg.refit_b, name=n)
    return [n for n in candidates if n in chosen]


def _factors_fit(cfg, rank: int | None, shape) -> bool:
    """Whether the factors' group sizes divide their columns (A: rows x rank, B: rank x cols);
    tensors they do not fit (or without a rank in `[lqer] ranks`) are not LQER candidates."""
    if rank is None:
        return False
    cols = int(shape[1])
    ga, gb = cfg.factor_a.group_size, cfg.factor_b.group_size
    return rank <= min(int(d) for d in shape) and (ga is None or rank % ga == 0) and (gb is None or cols % gb == 0)


def _apply_pm1(packed: dict[str, _Packed], recipe: Recipe) -> int:
    """Zero ±1 codes (smallest s² first) until the real blob fits `target_bytes`."""
    cfg = recipe.prune_pm1
    names = [n for n, p in packed.items() if p.plan.spec.scheme in QUANTIZED_SCHEMES and p.q.scheme != "binary"
             and any(fnmatch.fnmatchcase(n, g) for g in cfg.among)]
    if not names:
        return 0

    def blob_size(qs: list[Quantized]) -> int:
        trial = dict(packed)
        for n, q in zip(names, qs):
            trial[n] = replace(packed[n], q=q)
        return len(build_blob([_entry(p, recipe) for p in trial.values()]))

    result = prune_to_size([packed[n].q for n in names], blob_size, cfg.target_bytes)
    for n, q in zip(names, result.quantized):
        packed[n].q = q
    return result.count


# ------------------------------------------------------------------------------ entries

def _entry(p: _Packed, recipe: Recipe) -> TensorEntry:
    plan, q = p.plan, p.q
    shape = tuple(int(d) for d in p.weight.shape)
    if q.is_passthrough:
        return TensorEntry(plan.name, shape, plan.dtype, passthrough=_passthrough_values(q, plan.name),
                           codec=plan.codec, stream=plan.stream)
    lqer_blocks = None
    if p.low_rank is not None:
        factor_codec = recipe.lqer.codec or recipe.codec
        lqer_blocks = tuple(QuantBlock(f.codes.numpy(), f.scales.numpy(), f.group_size, factor_codec)
                            for f in (p.low_rank.a, p.low_rank.b))
    return TensorEntry(plan.name, shape, plan.dtype, codes=q.codes.numpy(), scales=q.scales.numpy(),
                       group_size=q.group_size, codec=plan.codec, lqer=lqer_blocks, bits=q.bits,
                       scales_codec=plan.scales_codec, stream=plan.stream)


def _passthrough_values(q: Quantized, name: str) -> np.ndarray:
    """The stored values of a passthrough tensor as the container takes them."""
    t = q.codes
    if t.dtype == torch.bfloat16:
        return bf16_bits(t.float().numpy())
    if t.dtype in (torch.float16, torch.float32):
        return t.numpy()
    if t.dtype == torch.float64:  # the baseline rule keeps small float64 tensors: the container's
        return t.float().numpy()  # widest float is fp32, and the manifest dtype brings back float64
    raise ConfigError(f"tensor {name}: passthrough of dtype {t.dtype} cannot be stored (use fp16 or fp32)")


def _block_weights(codes: np.ndarray, scales: np.ndarray, group_size: int | None) -> np.ndarray:
    """One code block dequantized as the decoder does (one scale, per row, or grouped)."""
    scales = np.asarray(scales)
    if scales.size == 1 and group_size is None:
        return dequantize(codes, scales.reshape(()))
    return dequantize(codes, scales, group_size)


def decoded_weights(e: TensorEntry) -> np.ndarray:
    """The float32 weights `decoder.decode` will produce for entry `e`."""
    shape = tuple(int(d) for d in e.shape)
    if e.passthrough is not None:
        v = np.asarray(e.passthrough)
        w = (v.astype(np.uint32) << 16).view(np.float32) if v.dtype == np.uint16 else v.astype(np.float32)
        return np.ascontiguousarray(w.reshape(shape))
    w = _block_weights(e.codes, e.scales, e.group_size).reshape(shape)
    if e.lqer is not None:
        w = apply_lqer(w, *(_block_weights(f.codes, f.scales, f.group_size) for f in e.lqer))
    return np.ascontiguousarray(w, dtype=np.float32)


# ------------------------------------------------------------------------------ figures

def _clip_label(p: _Packed) -> str | None:
    if p.plan.spec.scheme not in ("per_row", "per_tensor"):
        return "percentile:0.9999984" if p.q.meta.get("rule") == "baseline_int8" else None
    c = p.plan.spec.clip
    arg = {"absmax": "", "percentile": f"{c.q:.10g}", "search": c.per, "sdclip": f"{c.k:.10g}",
           "hsdclip": f"{c.k:.10g},{c.lam:.10g}"}[c.kind]
    return f"{c.kind}:{arg}" if arg else c.kind


def _predict(spec: str, array: np.ndarray | None, on: bool) -> int | None:
    if not on:
        return None
    if array is None:
        return 0
    return int(codecs.predict_size(spec, np.ascontiguousarray(array).reshape(-1) if array.ndim == 0 else array))


def _row(p: _Packed, e: TensorEntry, w_hat: Tensor, h: Tensor | None, predict: bool) -> dict[str, Any]:
    """Figures for one tensor: its plan, its error, and predicted bytes per part."""
    q = p.q
    scheme = f"raw {p.plan.dtype}" if q.scheme == "raw" else q.scheme
    code_bytes = _predict(e.codec, e.passthrough if e.passthrough is not None else e.codes, predict)
    scale_bytes = _predict(e.scales_codec, e.scales, predict) if e.scales is not None else (0 if predict else None)
    lqer_bytes = 0 if predict else None
    if predict and e.lqer is not None:
        lqer_bytes = sum(_predict(f.codec, f.codes, True) + _predict(e.scales_codec, f.scales, True) for f in e.lqer)
    use_h = h is not None and p.weight.ndim == 2 and tuple(h.shape) == (p.weight.shape[1],) * 2
    total = None if not predict else code_bytes + scale_bytes + lqer_bytes
    return {
        "name": e.name, "shape": list(e.shape), "params": int(p.weight.numel()), "dtype": e.dtype,
        "rule": p.plan.rule, "scheme": scheme, "bits": q.bits, "clip": _clip_label(p),
        "group_size": q.group_size, "gptq": q.meta.get("gptq") == "ok",
        "lqer_rank": p.low_rank.rank if p.low_rank is not None else 0, "prune": p.plan.prune,
        "pm1_pruned": int(q.meta.get("pm1_pruned", 0)), "codec": e.codec,
        "scales_codec": e.scales_codec if e.scales is not None else None,
        "error": weighted_error(p.weight.float(), w_hat, h if use_h else None),
        "error_kind": "hessian" if use_h else "sse",
        "code_bytes": code_bytes, "scale_bytes": scale_bytes, "lqer_bytes": lqer_bytes, "bytes": total,
        "bits_per_weight": (total * 8 / max(1, p.weight.numel())) if total is not None else None,
    }
