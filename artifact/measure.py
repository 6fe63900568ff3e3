"""Measure every candidate configuration of every quantizable tensor: exact bytes and distortion.

For each quantizable tensor (2-D float, at least `Grid.min_numel` elements; smaller tensors keep
the recipe default's passthrough and are a fixed cost) and each `Choice` of the grid (bits x clip
rule x GPTQ on/off x LQER rank x codec) this module records:
- bytes: the tensor's codes under its codec (`codec.predict_size`, exact for ans, exact for the
  general compressors below 512 KB), plus its scales and LQER factors each predicted alone (in the
  blob they share streams with other tensors, so these parts are close, not exact; the fit
  measures the difference on the real blob);
- distortion: the Hessian-weighted error trace((W - W_hat) H (W - W_hat)^T) of the weights the
  decoder will produce (quantization runs through `artifact.pack`'s own code path).
A per-tensor sensitivity turns distortion into a predicted loss increase: quantize only that
tensor at one coarse probe configuration, measure the real loss increase on calibration tokens
(`probe_loss`), divide by the probe's distortion.

Results are cached as one JSON file per tensor, keyed by a content hash of the whole state dict,
the calibration settings and the probe; inside, candidates are keyed by label, so a second fit
(another budget, or a wider grid) only measures what is missing. Progress goes to stderr.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from artifact import codec as codecs
from artifact.errors import ConfigError
from artifact.lqer import RECORD_FACTORS, lqer
from artifact.quant import weighted_error

MEASURE_VERSION = 1
DEFAULT_SCALES_CODEC = "deinterleave2+brotli-11"
DEFAULT_LQER_CODEC = "ans"
# A sensitivity below this fraction of the median is floored: a probe whose loss change is lost
# in noise must not make a tensor look free to crush.
SENSITIVITY_FLOOR = 0.05


@dataclass(frozen=True)
class Choice:
    """One candidate configuration of one tensor; `label` is its stable text form."""

    bits: int
    clip: str
    gptq: bool
    lqer_rank: int
    codec: str

    @property
    def label(self) -> str:
        return f"int{self.bits}/{self.clip}/{'gptq' if self.gptq else 'rtn'}/r{self.lqer_rank}/{self.codec}"

    @classmethod
    def parse(cls, label: str) -> "Choice":
        try:
            bits, clip, method, rank, codec = label.split("/")
            if not bits.startswith("int") or method not in ("gptq", "rtn") or not rank.startswith("r"):
                raise ValueError
            return cls(int(bits[3:]), clip, method == "gptq", int(rank[1:]), codec)
        except ValueError:
            raise ConfigError(f"bad candidate label {label!r} (expected intB/CLIP/gptq|rtn/rR/CODEC)") from None


def pin_matches(pin: str, label: str) -> bool:
    """A pin is a full label or any '/'-separated subset of its fields ("int8", "int6/gptq")."""
    fields = label.split("/")
    return all(part in fields for part in pin.split("/") if part)


@dataclass(frozen=True)
class Grid:
    """The candidate grid and the fixed settings every candidate shares."""

    bits: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8)
    clips: tuple[str, ...] = ("sdclip:4", "sdclip:8", "sdclip:12.85", "search:row")
    gptq: tuple[bool, ...] = (False, True)
    lqer_ranks: tuple[int, ...] = (0, 4)
    codecs: tuple[str, ...] = ("ans", "brotli-11")
    scales_codec: str = DEFAULT_SCALES_CODEC
    lqer_codec: str = DEFAULT_LQER_CODEC
    min_numel: int = 4096
    probe: str = "int4/sdclip:8/rtn/r0/ans"  # the coarse config whose real loss change sets sens

    def choices(self) -> list[Choice]:
        return [Choice(b, c, g, r, k) for b in self.bits for c in self.clips for g in self.gptq
                for r in self.lqer_ranks for k in self.codecs]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TensorMeasure:
    """One tensor's figures: candidates {label: {bytes, code_bytes, scale_bytes, lqer_bytes,
    distortion}}, its sensitivity (Δloss per unit distortion) and the probe behind it."""

    name: str
    shape: tuple[int, ...]
    sensitivity: float
    probe: dict
    candidates: dict[str, dict]

    @property
    def params(self) -> int:
        return int(np.prod(self.shape))

    def predicted_dloss(self, label: str) -> float:
        return self.sensitivity * self.candidates[label]["distortion"]


@dataclass
class Measurement:
    """Every quantizable tensor's measured candidates (state-dict order) and how it was got."""

    tensors: dict[str, TensorMeasure]
    grid: Grid
    checkpoint_hash: str
    stats: dict = field(default_factory=dict)

    def solver_input(self, labels: list[str] | None = None) -> tuple[list[str], list[list[tuple]]]:
        """(names, per tensor [(bytes, predicted Δloss, label)]) for `solve.solve`."""
        names = list(self.tensors)
        wanted = labels or [c.label for c in self.grid.choices()]
        cands = [[(t.candidates[l]["bytes"], t.predicted_dloss(l), l) for l in wanted if l in t.candidates]
                 for t in self.tensors.values()]
        return names, cands


# ----------------------------------------------------------------------------- hashing and cache

def state_hash(state_dict: dict[str, Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes (state-dict order)."""
    h = hashlib.sha256()
    for name, t in state_dict.items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def cache_key(*parts) -> str:
    return hashlib.sha256(json.dumps([MEASURE_VERSION, *parts], sort_keys=True, default=str).encode()).hexdigest()


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # missing or torn: measure again


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, sort_keys=True)
    os.replace(tmp, path)  # atomic: an interrupted fit leaves whole files only


# ----------------------------------------------------------------------------- one candidate

def quantizable(name: str, t: Tensor, min_numel: int) -> bool:
    """2-D float tensors of at least `min_numel` elements get candidates; the rest are fixed."""
    return t.ndim == 2 and t.is_floating_point() and t.numel() >= min_numel


def _quantize(name: str, w: Tensor, bits: int, clip: str, gptq: bool, hessian: Tensor | None):
    """Codes as `pack_state_dict` makes them for this choice (its own code path)."""
    from artifact.pack import _quantize as pack_quantize
    from artifact.recipe import parse_recipe

    rule = {"match": [name], "bits": bits, "clip": clip, "gptq": gptq}
    plan = parse_recipe({"name": "measure", "rules": [rule]}).plan({name: w})[name]
    return pack_quantize(name, w, plan, {name: hessian} if hessian is not None else None, "measure")


def _lqer_parts(w: Tensor, w_hat: Tensor, rank: int, grid: Grid) -> tuple[Tensor, int]:
    """LQER-corrected weights (as `pack._apply_lqer` builds them) and the factors' bytes."""
    low = lqer(w.float(), w_hat, rank, RECORD_FACTORS[0], RECORD_FACTORS[1], scaling="none", refit_b=False)
    nbytes = 0
    for f in (low.a, low.b):
        nbytes += codecs.predict_size(grid.lqer_codec, f.codes.numpy())
        nbytes += codecs.predict_size(grid.scales_codec, np.asarray(f.scales.numpy()).reshape(-1))
    return w_hat + low.dequantize(), nbytes


def lqer_fits(shape: tuple[int, ...], rank: int) -> bool:
    """The record factors (B in groups of 64 columns) fit this shape at this rank."""
    gb = RECORD_FACTORS[1].group_size
    return rank <= min(shape) and (gb is None or shape[1] % gb == 0)


def measure_tensor(name: str, w: Tensor, hessian: Tensor | None, grid: Grid,
                   labels: list[str]) -> dict[str, dict]:
    """{label: figures} for the given candidate labels of one tensor."""
    w = w.detach().float()
    out: dict[str, dict] = {}
    wanted = [Choice.parse(l) for l in labels]
    bases = sorted({(c.bits, c.clip, c.gptq) for c in wanted})
    for bits, clip, gptq in bases:
        q = _quantize(name, w, bits, clip, gptq, hessian)
        w_hat = q.dequantize().float()
        scale_bytes = codecs.predict_size(grid.scales_codec, np.asarray(q.scales.numpy()).reshape(-1))
        code_bytes = {k: codecs.predict_size(k, q.codes.numpy())
                      for k in sorted({c.codec for c in wanted if (c.bits, c.clip, c.gptq) == (bits, clip, gptq)})}
        for c in wanted:
            if (c.bits, c.clip, c.gptq) != (bits, clip, gptq):
                continue
            if c.lqer_rank and not lqer_fits(tuple(w.shape), c.lqer_rank):
                continue
            if c.lqer_rank:
                w_fix, lqer_bytes = _lqer_parts(w, w_hat, c.lqer_rank, grid)
            else:
                w_fix, lqer_bytes = w_hat, 0
            out[c.label] = {"bytes": int(code_bytes[c.codec] + scale_bytes + lqer_bytes),
                            "code_bytes": int(code_bytes[c.codec]), "scale_bytes": int(scale_bytes),
                            "lqer_bytes": int(lqer_bytes), "distortion": weighted_error(w, w_fix, hessian)}
    return out


# ----------------------------------------------------------------------------- the whole model

def _probe_sensitivity(name: str, w: Tensor, hessian, grid: Grid, probe_loss, base_loss: float) -> dict:
    figures = measure_tensor(name, w, hessian, grid, [grid.probe])[grid.probe]
    c = Choice.parse(grid.probe)
    w_hat = _quantize(name, w.detach().float(), c.bits, c.clip, c.gptq, hessian).dequantize()
    loss = probe_loss({name: w_hat.to(w.dtype)})
    dloss = loss - base_loss
    raw = dloss / figures["distortion"] if figures["distortion"] > 0 else 0.0
    return {"label": grid.probe, "loss": loss, "base_loss": base_loss, "dloss": dloss,
            "distortion": figures["distortion"], "raw_sensitivity": raw}


def measure(state_dict: dict[str, Tensor], hessians: dict[str, Tensor], grid: Grid = Grid(),
            probe_loss: Callable[[dict[str, Tensor]], float] | None = None, calibration: dict | None = None,
            cache_dir: str | Path | None = None, progress: bool = True) -> Measurement:
    """Measure every quantizable tensor of `state_dict` over `grid`.

    hessians: {weight name: X^T X} (the tied embedding under its own name); probe_loss(replaced)
    → the model's mean loss on calibration tokens with the `replaced` tensors swapped in ({} =
    the original); None skips the probes (sensitivity 1: distortion alone ranks). calibration:
    the calibration settings (they are part of the cache key)."""
    t0 = time.perf_counter()
    ckpt = state_hash(state_dict)
    names = [n for n, t in state_dict.items() if quantizable(n, t, grid.min_numel)]
    if not names:
        raise ConfigError(f"no quantizable tensors (2-D, >= {grid.min_numel} elements) in the checkpoint")
    labels = [c.label for c in grid.choices()]
    cache = Path(cache_dir) if cache_dir else None
    base_loss = None
    tensors: dict[str, TensorMeasure] = {}
    measured = cached = 0
    for i, name in enumerate(names):
        w, h = state_dict[name], hessians.get(name)
        key = cache_key(ckpt, calibration, name, grid.scales_codec, grid.lqer_codec)
        path = cache / f"{key}.json" if cache else None
        stored = (_read_json(path) if path else None) or {}
        cands = dict(stored.get("candidates", {}))
        skipped = set(stored.get("skipped", []))
        missing = [l for l in labels if l not in cands and l not in skipped]
        if missing:
            cands.update(measure_tensor(name, w, h, grid, missing))
            skipped |= {l for l in missing if l not in cands}  # e.g. LQER ranks the shape cannot take
        probes, dirty = dict(stored.get("probes", {})), False
        if probe_loss is None:
            probe = {"label": None, "raw_sensitivity": 1.0}
        elif grid.probe in probes:
            probe = probes[grid.probe]
        else:
            if base_loss is None:
                base_loss = probe_loss({})
            probe = probes[grid.probe] = _probe_sensitivity(name, w, h, grid, probe_loss, base_loss)
            dirty = True
        measured += len(missing)
        cached += len(labels) - len(missing)
        if path and (missing or dirty):
            _write_json(path, {"name": name, "shape": list(w.shape), "candidates": cands, "probes": probes,
                               "skipped": sorted(skipped)})
        tensors[name] = TensorMeasure(name, tuple(int(d) for d in w.shape), 0.0, probe,
                                      {l: cands[l] for l in labels if l in cands})
        if progress:
            print(f"measure: {i + 1}/{len(names)} {name} ({len(missing)} measured, "
                  f"{len(labels) - len(missing)} cached) {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    _set_sensitivities(tensors)
    return Measurement(tensors, grid, ckpt, {"measured": measured, "cached": cached, "tensors": len(names),
                                             "seconds": time.perf_counter() - t0})


def _set_sensitivities(tensors: dict[str, TensorMeasure]) -> None:
    """Sensitivity = the probe's Δloss / distortion, floored at a fraction of the median so a
    probe lost in noise (Δloss <= 0) cannot make a tensor look free."""
    raw = [t.probe.get("raw_sensitivity", 1.0) for t in tensors.values()]
    positive = [r for r in raw if r > 0]
    floor = SENSITIVITY_FLOOR * float(np.median(positive)) if positive else 1.0
    for t, r in zip(tensors.values(), raw):
        t.sensitivity = max(float(r), floor)
