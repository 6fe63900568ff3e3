"""The quantization frontier, measured: the fit against fixed recipes at the recipes' own bytes,
with and without each lever of the candidate space and the loss model.

For one checkpoint: every recipe is packed and scored (its total bytes as shipped, compact code,
and its val_bpb gap to the unquantized model); then, at each recipe's total bytes, the budget fit
(`artifact.fit.fit`: solve, pack, repair until the real blob fits) is packed and scored on the
same val tokens, once per lever configuration: "all" (every lever), "-LEVER" (all but that one)
and "none" (the grid and loss model as they were before any lever). A lever is a set of candidate
labels (`LEVERS`: its candidates are hidden from the solver when it is off) or a loss-model
switch. The gap ratio is the fit's gap over the recipe's.

Noise: the val prefix is cut into `segments` equal parts, each scored alone (flat windows); the
win (recipe bpb − fit bpb) is taken per part, and its standard error over the parts is the noise a
win must beat. The fit's predicted Δloss (nats/token, from the measurement) is set against the
real one (val loss nats/token) at the chosen point.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from artifact.budget import resolve_budget
from artifact.calibrate import batches_from_tokens
from artifact.fit import counted_code_bytes, fit
from artifact.measure import Choice, Grid, Measurement
from artifact.pack import pack_state_dict, recipe_needs_hessians
from artifact.pipeline import prepare, probe_loss_fn, probe_seqs, recipe_hessians
from artifact.recipe import load_recipe
from artifact.runtime.scoring import eval_flat, val_stream
from artifact.runtime.shards import load_tokens
from artifact.submission import plan_files

DEFAULT_RECIPES = ("record-1855", "seed-004", "seed-003", "seed-002", "seed-001", "seed-000")
DEFAULT_ABLATE_AT = ("record-1855", "seed-004")
DEFAULT_TOKENS = 65536
DEFAULT_SEGMENTS = 8
# a cheaper grid for large or slow checkpoints: two clips, no pruning, no brotli codecs (rate-aware
# rounding and the method-matched probes still measured)
QUICK_GRID = Grid(clips=("sdclip:8", "sdclip:12.85"), prunes=(0.0,), hull_codecs=())




def restrict(m: Measurement, hide: Callable[[str], bool]) -> Measurement:
    """The measurement with the candidates `hide` marks removed (every tensor keeps at least one)."""
    tensors = {}
    for name, t in m.tensors.items():
        kept = {l: f for l, f in t.candidates.items() if not hide(l)} or t.candidates
        tensors[name] = dataclasses.replace(t, candidates=kept)
    return dataclasses.replace(m, tensors=tensors)


class SegmentScorer:
    """Flat val loss and bpb of a model on `segments` equal parts of a val prefix."""

    def __init__(self, data, vocab_size: int, seq_len: int, max_tokens: int, segments: int):
        stream = val_stream(data, vocab_size, max_tokens)
        n = len(stream.tokens)
        cuts = np.linspace(0, n, segments + 1).astype(int)
        self.parts = [(stream.tokens[a:b], None if stream.sidecar is None else stream.sidecar[a:b])
                      for a, b in zip(cuts[:-1], cuts[1:])]
        self.counter, self.seq_len, self.tokens = stream.counter, seq_len, n

    def __call__(self, model) -> dict:
        bits, nbytes, nats, targets = [], [], [], []
        for tokens, side in self.parts:
            r = eval_flat(model, tokens, self.counter, self.seq_len, batch_seqs=16, device="cpu", sidecar=side)
            bits.append(r.val_bpb * r.bytes)
            nbytes.append(r.bytes)
            nats.append(r.val_loss * r.tokens)
            targets.append(r.tokens)
        bpb = np.array(bits) / np.array(nbytes)
        return {"bpb": float(sum(bits) / sum(nbytes)), "loss": float(sum(nats) / sum(targets)), "parts": bpb}


def _load(model, weights: dict, original: dict) -> None:
    model.load_state_dict({k: weights[k].to(v.dtype) for k, v in original.items()})


def recipe_points(p: dict, data, recipes, scorer: SegmentScorer, log=None) -> list[dict]:
    """Each recipe packed as `golf pack` packs it: total bytes (blob + compact code) and score."""
    model, cfg, state = p["model"], p["cfg"], p["state"]
    hessian_cache: dict[str, dict] = {}
    out = []
    for name in recipes:
        recipe = load_recipe(name)
        hessians = None
        if recipe_needs_hessians(recipe):
            key = repr(recipe.calibration)
            if key not in hessian_cache:
                _load(model, state, state)
                hessian_cache[key] = recipe_hessians(model, cfg, recipe, data)[0]
            hessians = hessian_cache[key]
        packed = pack_state_dict(state, recipe, hessians, predict_sizes=False)
        files = plan_files(packed.entries, cfg.to_dict(), {"seq_len": p["seq_len"]}, compact=True)
        _load(model, packed.dequantized, state)
        out.append({"recipe": recipe.name, "bytes": sum(len(b) for b in files.values()), **scorer(model)})
        if log is not None:
            log(f"frontier: {recipe.name}: {out[-1]['bytes']:,} B, bpb {out[-1]['bpb']:.5f}")
    _load(model, state, state)
    return out


def calibration_loss(p: dict) -> Callable[[dict], float]:
    """The measurement's own probe loss (the same calibration sequences as `prepare`'s probes)."""
    n = probe_seqs(sum(t.numel() for t in p["state"].values()), p["seq_len"])
    tokens = load_tokens(p["data"].require_train(), p["cfg"].vocab_size)
    batches = batches_from_tokens(tokens, n, p["seq_len"] + 1, n, p["calibration"]["offset"])
    return probe_loss_fn(p["model"], batches)


def fit_point(p: dict, m: Measurement, total_bytes: int, scorer: SegmentScorer, cal_loss=None,
              fit_kwargs: dict | None = None) -> dict:
    """The budget fit at `total_bytes` (compact code counted), packed and scored; with
    `cal_loss`, also the chosen set's real Δloss on the calibration probes (the interaction
    check: the additive model's prediction against the joint effect, on the tokens it was
    measured on)."""
    budget = resolve_budget(total_bytes)
    code = counted_code_bytes(p["cfg"].to_dict(), {"seq_len": p["seq_len"]}, budget, compact=True)
    res = fit(p["state"], m, budget, code, p["hessians"], calibration=p["calibration"], **(fit_kwargs or {}))
    cal = cal_loss({k: v for k, v in res.packed.dequantized.items() if k in m.tensors}) - cal_loss({}) if cal_loss else None
    _load(p["model"], res.packed.dequantized, p["state"])
    try:
        score = scorer(p["model"])
    finally:
        _load(p["model"], p["state"], p["state"])
    tensor_bytes = sum(m.tensors[n].candidates[l]["bytes"] for n, l in res.choices.items())
    return {"bytes": res.real_total, "tensor_bytes": tensor_bytes, "predicted_dloss": res.predicted_loss,
            "cal_dloss": cal, **score,
            "labels": sorted(set(res.choices.values()))}


@dataclass(frozen=True)
class Lever:
    """What switching a lever off does: to the measurement (hide its candidates, or undo its
    change to the loss model) and to the fit's keyword arguments."""

    off: Callable[[Measurement], Measurement] = lambda m: m
    fit_off: tuple = ()  # (key, value) pairs passed to `fit` when the lever is off


def hiding(pred: Callable[[str], bool]) -> Lever:
    """A lever made of candidates: switching it off hides the labels `pred` marks."""
    return Lever(lambda m: restrict(m, pred))


def linear_loss(m: Measurement) -> Measurement:
    """The loss model without per-tensor curves: Δloss proportional to distortion."""
    return dataclasses.replace(m, tensors={n: dataclasses.replace(t, exponent=1.0) for n, t in m.tensors.items()})


LEVERS: dict[str, Lever] = {
    "rd": hiding(lambda label: Choice.parse(label).rd > 0),  # rate-aware rounding lambdas
    "transpose": hiding(lambda label: Choice.parse(label).codec.startswith("transpose+")),  # column-major brotli
    "curve": Lever(linear_loss),  # the second probe's per-tensor curve (a no-op unless the grid has probe2)
    "share": Lever(fit_off=(("share_streams", False),)),  # small ANS tensors sharing a stream
    "method": Lever(lambda m: dataclasses.replace(m, tensors={  # method-matched probe sensitivities
        n: dataclasses.replace(t, method_sensitivity={}) for n, t in m.tensors.items()})),
}


def lever_configs(levers: list[str]) -> dict[str, tuple[Callable[[Measurement], Measurement], dict]]:
    """{config name: (measurement transform, fit kwargs)}: all levers on, each one off, none."""
    configs = {"all": (lambda m: m, {})}
    for name in levers:
        configs[f"-{name}"] = (LEVERS[name].off, dict(LEVERS[name].fit_off))

    def none(m: Measurement) -> Measurement:
        for n in levers:
            m = LEVERS[n].off(m)
        return m
    if levers:
        configs["none"] = (none, {k: v for n in levers for k, v in LEVERS[n].fit_off})
    return configs


def frontier(checkpoint, data, cache, recipes=DEFAULT_RECIPES, max_tokens: int = DEFAULT_TOKENS,
             segments: int = DEFAULT_SEGMENTS, levers: list[str] | None = None, grid=None,
             progress=None, log=None, ablate_at=DEFAULT_ABLATE_AT) -> dict:
    """Rows {checkpoint, recipe, config, bytes, recipe_gap, fit_gap, ratio, win, noise,
    predicted_dloss, real_dloss, pred_over_real, pred_over_cal, labels}: "all" at every recipe's
    bytes, the other lever configs at the bytes of the recipes in `ablate_at`."""
    t0 = time.perf_counter()
    torch.manual_seed(0)
    p = prepare(checkpoint, data, cache, grid, progress, jobs=None)
    scorer = SegmentScorer(p["data"], p["cfg"].vocab_size, p["seq_len"], max_tokens, segments)
    cal_loss = calibration_loss(p)
    ref = scorer(p["model"])
    points = recipe_points(p, data, recipes, scorer, log)
    if levers is None:  # every lever the measurement has (the curve needs a grid with probe2)
        levers = [n for n in LEVERS if n != "curve" or p["measurement"].grid.probe2]
    rows = []
    for cname, (off, fit_kwargs) in lever_configs(levers).items():
        m = off(p["measurement"])
        for pt in points:
            if cname != "all" and pt["recipe"] not in ablate_at:
                continue  # the ablation runs at the named recipes' bytes only
            f = fit_point(p, m, pt["bytes"], scorer, cal_loss, fit_kwargs)
            win = pt["parts"] - f["parts"]
            real = f["loss"] - ref["loss"]
            rows.append({"checkpoint": str(checkpoint), "recipe": pt["recipe"], "config": cname, "bytes": pt["bytes"],
                         "fit_bytes": f["bytes"], "recipe_gap": pt["bpb"] - ref["bpb"], "fit_gap": f["bpb"] - ref["bpb"],
                         "ratio": (f["bpb"] - ref["bpb"]) / (pt["bpb"] - ref["bpb"]),
                         "win": pt["bpb"] - f["bpb"], "noise": float(win.std(ddof=1) / math.sqrt(len(win))),
                         "predicted_dloss": f["predicted_dloss"], "real_dloss": real,
                         "pred_over_real": f["predicted_dloss"] / real if real > 0 else float("nan"),
                         "pred_over_cal": f["predicted_dloss"] / f["cal_dloss"] if f["cal_dloss"] > 0 else float("nan"),
                         "tensor_bytes": f["tensor_bytes"], "labels": f["labels"]})
            if log is not None:
                r = rows[-1]
                log(f"frontier: {cname} at {pt['recipe']}: ratio {r['ratio']:.3f} win {r['win']:.5f} "
                    f"± {r['noise']:.5f}, pred/real {r['pred_over_real']:.3f}")
    return {"rows": rows, "reference_bpb": ref["bpb"], "val_tokens": scorer.tokens, "segments": segments,
            "seconds": time.perf_counter() - t0}

