"""`golf rank-check`: does the fit's predicted loss rank real loss across whole-model configurations?

    golf rank-check [CKPT] [--data DIR] [-n N] [--seed S] [--max-tokens T] [--cache DIR] [--json]

Draws N random configurations (one measured candidate per quantizable tensor, uniform over each
tensor's list, deterministic in the seed), and for each compares the measurement's predicted
Δloss (Σ of the tensors' predicted_dloss) with the real one: the configuration is packed exactly
as `golf fit` packs its choice (`fit.build_recipe` → `pack.pack_state_dict`), the decoder's
dequantized weights are loaded, and the flat val loss on a val prefix minus the unquantized loss
is the real Δloss (both in nats per token). The figure is their Spearman rank correlation.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from artifact.fit import build_recipe
from artifact.measure import Choice
from artifact.models import ModelSpec
from artifact.pack import pack_state_dict
from artifact.pipeline import prepare
from artifact.runtime.errors import ConfigError, DataError
from artifact.runtime.progress import Progress
from artifact.runtime.scoring import eval_flat, val_stream
from artifact.solve import solve

DEFAULT_CONFIGS = 20
DEFAULT_TOKENS = 16384


def average_ranks(values) -> np.ndarray:
    """1-based ranks; tied values share the mean of the ranks they span."""
    a = np.asarray(values, dtype=np.float64)
    order = np.argsort(a, kind="stable")
    ranks = np.empty(a.size, dtype=np.float64)
    ranks[order] = np.arange(1, a.size + 1)
    _, group = np.unique(a, return_inverse=True)
    return (np.bincount(group, weights=ranks) / np.bincount(group))[group]


def pearson(x, y) -> float:
    """Pearson correlation; DataError when either side is constant (it is undefined)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or x.size < 2:
        raise DataError(f"correlation needs two 1-D sequences of equal length >= 2, got {x.shape} and {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise DataError("correlation of non-finite values")
    dx, dy = x - x.mean(), y - y.mean()
    denom = float(np.sqrt((dx * dx).sum() * (dy * dy).sum()))
    if denom == 0.0:
        raise DataError("correlation is undefined: one sequence is constant")
    return float(np.clip((dx * dy).sum() / denom, -1.0, 1.0))


def spearman(x, y) -> float:
    """Spearman rank correlation (Pearson on average ranks, so ties are handled)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise DataError(f"correlation needs two 1-D sequences of equal length, got {x.shape} and {y.shape}")
    return pearson(average_ranks(x), average_ranks(y))


def random_configs(measurement, n: int, seed: int = 0) -> list[dict[str, str]]:
    """n whole-model choices {tensor: label}, each tensor's label uniform over its candidates.
    Each configuration first draws one nonzero LQER rank from the grid and draws among the
    candidates at rank 0 or that rank (one rank per artifact, as the seeds' recipes use)."""
    rng = np.random.default_rng(seed)
    nonzero = sorted({r for r in measurement.grid.lqer_ranks if r})
    configs = []
    for _ in range(n):
        rank = int(rng.choice(nonzero)) if nonzero else 0
        choice = {}
        for name, t in measurement.tensors.items():
            labels = [l for l in t.candidates if Choice.parse(l).lqer_rank in (0, rank)]
            choice[name] = labels[int(rng.integers(len(labels)))]
        configs.append(choice)
    return configs


def local_configs(measurement, tensor_bytes: int, n: int, seed: int = 0, spread: int = 6) -> list[dict[str, str]]:
    """n whole-model choices around the solver's choice for `tensor_bytes` of quantized tensors:
    each tensor, with probability 1/2, moves to one of the `spread` candidates nearest in bytes to
    its chosen one. This is the region where the fit's ranking has to be right."""
    names, cands = measurement.solver_input()
    center = solve(dict(zip(names, cands)), tensor_bytes)
    rng = np.random.default_rng(seed)
    configs = []
    for _ in range(n):
        choice = {}
        for name, options, label in zip(names, cands, center.labels):
            if rng.random() < 0.5:
                at = next(b for b, _, l in options if l == label)
                near = sorted(options, key=lambda o: (abs(o[0] - at), o[2]))[:spread]
                label = near[int(rng.integers(len(near)))][2]
            choice[name] = label
        configs.append(choice)
    return configs


def ranking_check(checkpoint, data, cache, n_configs: int = DEFAULT_CONFIGS, seed: int = 0,
                  max_tokens: int | None = DEFAULT_TOKENS, grid=None,
                  progress: Callable[[str], Progress] | None = None, around: int | None = None,
                  model: ModelSpec | None = None) -> dict:
    """Predicted vs real Δloss over `n_configs` random configurations of `checkpoint`. Returns
    {spearman, pearson, pairs: [{config, predicted_dloss, real_dloss, predicted_bytes, choices}],
    base_loss, n_configs, seed, max_tokens, seconds, ...}. `cache` is the measurement cache (as
    `golf fit`'s); `grid` the candidate grid; `progress(stage)` the progress callback of a stage
    ("calibrate", "measure", "rank-check"); `around` (tensor bytes): draw configurations near the
    solver's choice there (`local_configs`) instead of uniformly over every candidate; `model`
    the model to load (default golf's GPT)."""
    if n_configs < 2:
        raise ConfigError(f"rank check needs at least 2 configurations, got {n_configs}")
    t0 = time.perf_counter()
    p = prepare(checkpoint, data, cache, grid, progress, model=model)
    report = progress("rank-check") if progress else None
    net, state, m = p["model"], p["state"], p["measurement"]
    own = {k: v.detach().clone() for k, v in net.state_dict().items()}
    stream = val_stream(p["data"], p["loaded"].vocab_size, max_tokens or None)
    tokens, counter, sidecar = stream.tokens, stream.counter, stream.sidecar

    def val_loss() -> float:
        return eval_flat(net, tokens, counter, p["seq_len"], batch_seqs=16, device="cpu",
                         sidecar=sidecar).val_loss

    base = val_loss()
    pairs = []
    try:
        configs = random_configs(m, n_configs, seed) if around is None else local_configs(m, around, n_configs, seed)
        for i, choices in enumerate(configs):
            recipe = build_recipe(choices, p["calibration"], m.grid.lqer_codec, m.grid.scales_codec)
            packed = pack_state_dict(state, recipe, p["hessians"], predict_sizes=False)
            net.load_state_dict({k: packed.dequantized[k].to(v.dtype) for k, v in state.items()})
            real = val_loss() - base
            predicted = sum(m.tensors[n].predicted_dloss(l) for n, l in choices.items())
            pairs.append({"config": i, "predicted_dloss": float(predicted), "real_dloss": float(real),
                          "predicted_bytes": int(sum(m.tensors[n].candidates[l]["bytes"] for n, l in choices.items())),
                          "choices": choices})
            if report is not None:
                report(i + 1, n_configs, f"predicted {predicted:.4f} real {real:.4f} nats")
    finally:
        net.load_state_dict(own)
    pred = [q["predicted_dloss"] for q in pairs]
    real = [q["real_dloss"] for q in pairs]
    return {"checkpoint": str(checkpoint), "model": p["loaded"].report(), "n_configs": n_configs, "seed": seed, "around": around,
            "max_tokens": max_tokens, "val_tokens": int(len(tokens)), "base_loss": base,
            "spearman": spearman(pred, real), "pearson": pearson(pred, real), "pairs": pairs,
            "measure": m.stats, "seconds": time.perf_counter() - t0}
