"""Measure every candidate configuration of every quantizable tensor: exact bytes and distortion.

For each quantizable tensor (2-D float, at least `Grid.min_numel` elements; smaller tensors keep
the recipe default's passthrough and are a fixed cost) and each `Choice` of the grid (bits x clip
rule x GPTQ on/off x magnitude-pruning fraction x LQER rank x codec) this module records:
- bytes: the tensor's codes under its codec (`codec.predict_size`, exact for ans, exact for the
  general compressors below 512 KB, sampled above), plus its scales and LQER factors each
  predicted alone (in the blob they share streams with other tensors, so these parts are close,
  not exact; the fit measures the difference on the real blob);
- distortion: the Hessian-weighted error trace((W - W_hat) H (W - W_hat)^T) of the weights the
  decoder will produce, against the unpruned weights (pruning, clipping, GPTQ and LQER all run
  through `artifact.pack`'s own code path).
A per-tensor sensitivity turns distortion into a predicted loss increase: quantize only that
tensor at one coarse probe configuration, measure the real loss increase on calibration tokens
(`probe_loss`), divide by the probe's distortion. Method-matched probes (`Grid.probe_gptq`,
`Grid.probe_rd`): GPTQ and rate-aware candidates take the sensitivity of a probe rounded the
same way, because the distortion metric sees only a layer's output — the tied embedding's
input role is hurt far more by GPTQ's error pattern than the metric says (5x on the bundled
checkpoint). An optional second probe (`Grid.probe2`) fits a Δloss curve per tensor; it is off
by default because it did not pay.

Coarse to fine. LQER ranks > 0, rate-aware rounding lambdas > 0 (artifact.rdround) and the
slower codecs (brotli-11, transpose+brotli-11) are measured only where they can pay off
(`Grid.lqer_on_hull`): first every base (bits, clip, GPTQ, prune) at rank 0, lambda 0 under ANS,
then the rest only on the bases whose first-stage point lies on the tensor's lower convex hull
in (bytes, distortion) — the only bases a budget can ever pick at rank 0; a rank, a lambda or a
codec is then kept by the solver only if it buys more loss per byte than the next hull point.
One SVD serves every rank of a base.

Grid profiles, picked by size (`default_grid`): checkpoints up to `LARGE_PARAMS` quantizable
parameters get `Grid()` (everything: 7 bits x 4 clips x GPTQ on/off x 2 prunes under ANS, then
on the hull ranks 2/4/8, lambdas 0.05/0.15/0.4 and the brotli codecs). Record-scale checkpoints (36 M parameters: one GPTQ pass of
the whole model ~10 s of one core, brotli-11 ~1-5 MB/s) get `LARGE_GRID`: sizes by the exact
ANS model only (for near-i.i.d. per-row codes order-0 ANS is within ~2% of brotli-11 and 40x
cheaper; small tensors are few bytes either way), two sdclip clips (`search:row` costs ~5x an
sdclip quantization), GPTQ only at 4-7 bits (the bits a 16 MB budget lands on for ~30 M
weights) with the records' GPTQ clip, and the same hull-only LQER ranks and lambdas.

Parallel and resumable: tensors are measured independently (`jobs` worker processes, each with
one torch thread; `jobs=1` measures in-process, also with one thread, so the figures are
bit-identical whatever `jobs` is). Results are cached as one JSON file per tensor, keyed by a
content hash of the whole state dict, the calibration settings and the probe, each written
atomically as soon as its tensor is done: an interrupted run (Ctrl-C) leaves only whole files
and a rerun measures only what is missing. Inside a file candidates are keyed by label, so a
second fit (another budget, or a wider grid) only measures what is missing. `progress` hears
each tensor as it finishes (in completion order with worker processes).
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import signal
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from artifact import codec as codecs
from artifact.lqer import RECORD_FACTORS, lqer_ranks
from artifact.pack import quantize_planned
from artifact.recipe import parse_recipe
from artifact.runtime.errors import ConfigError
from artifact.runtime.files import atomic_write_json, read_json_or_none
from artifact.runtime.progress import Progress

MEASURE_VERSION = 4  # 4: GPTQ in float32 (codes differ from 3 in ~1e-4 of weights); rate-aware rounding
DEFAULT_SCALES_CODEC = "deinterleave2+brotli-11"
DEFAULT_LQER_CODEC = "ans"
# A sensitivity below this fraction of the median is floored: a probe whose loss change is lost
# in noise must not make a tensor look free to crush.
SENSITIVITY_FLOOR = 0.05
# Above this many quantizable parameters `default_grid` switches to LARGE_GRID.
LARGE_PARAMS = 4_000_000


def _prune_field(fraction: float) -> str:
    return f"p{fraction:g}"


@dataclass(frozen=True)
class Choice:
    """One candidate configuration of one tensor; `label` is its stable text form,
    e.g. `int5/sdclip:8/gptq/r0/p0.03/ans` (bits/clip/method/LQER rank/prune fraction/codec),
    with a rate-aware rounding lambda as a field before the codec when it is not 0
    (`int5/sdclip:8/gptq/r0/p0/rd0.15/ans`)."""

    bits: int
    clip: str
    gptq: bool
    lqer_rank: int
    codec: str
    prune: float = 0.0
    rd: float = 0.0

    @property
    def label(self) -> str:
        rd = f"rd{self.rd:g}/" if self.rd else ""
        return (f"int{self.bits}/{self.clip}/{'gptq' if self.gptq else 'rtn'}/r{self.lqer_rank}/"
                f"{_prune_field(self.prune)}/{rd}{self.codec}")

    @property
    def base(self) -> tuple:
        """What the quantized codes depend on (LQER and the codec come after)."""
        return (self.bits, self.clip, self.gptq, self.prune, self.rd)

    @classmethod
    def parse(cls, label: str) -> "Choice":
        try:
            fields = label.split("/")
            rd = float(fields.pop(5)[2:]) if len(fields) == 7 and fields[5].startswith("rd") else 0.0
            bits, clip, method, rank, prune, codec = fields
            c = cls(int(bits[3:]), clip, method == "gptq", int(rank[1:]), codec, float(prune[1:]), rd)
            if (c.label != label or not 2 <= c.bits <= 8 or c.lqer_rank < 0 or not 0 <= c.prune < 1
                    or not clip or not codec or not 0 <= rd < 100):
                raise ValueError
            return c
        except (ValueError, AttributeError):
            raise ConfigError(f"bad candidate label {label!r} (expected intB/CLIP/gptq|rtn/rR/pF[/rdL]/CODEC, "
                              "e.g. int5/sdclip:8/gptq/r0/p0.03/ans)") from None


def pin_matches(pin: str, label: str) -> bool:
    """A pin is a full label or any '/'-separated subset of its fields ("int8", "int6/gptq", "p0")."""
    fields = label.split("/")
    return all(part in fields for part in pin.split("/") if part)


@dataclass(frozen=True)
class Grid:
    """The candidate grid and the fixed settings every candidate shares.

    The candidates are the product bits x clips x gptq x prunes x lqer_ranks x codecs, less
    GPTQ outside `gptq_bits` / `gptq_clips` (None: everywhere) and LQER ranks that do not fit a
    shape, plus each rank-0 base at every rate-aware rounding lambda of `rds` (ANS only: its
    rate model is ANS's code length) and under every codec of `hull_codecs`. With
    `lqer_on_hull` only the first stage (rank 0, lambda 0, `codecs`) is measured everywhere;
    ranks > 0, lambdas > 0 and `hull_codecs` only on the bases of the first stage's hull."""

    bits: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8)
    clips: tuple[str, ...] = ("sdclip:4", "sdclip:8", "sdclip:12.85", "search:row")
    gptq: tuple[bool, ...] = (False, True)
    prunes: tuple[float, ...] = (0.0, 0.03)
    lqer_ranks: tuple[int, ...] = (0, 2, 4, 8)
    codecs: tuple[str, ...] = ("ans",)
    gptq_bits: tuple[int, ...] | None = None
    gptq_clips: tuple[str, ...] | None = None
    lqer_on_hull: bool = True
    scales_codec: str = DEFAULT_SCALES_CODEC
    lqer_codec: str = DEFAULT_LQER_CODEC
    min_numel: int = 4096
    probe: str = "int4/sdclip:8/rtn/r0/p0/ans"  # the coarse config whose real loss change sets sens
    # a second, finer probe gives each tensor a Δloss curve (TensorMeasure.exponent); off by
    # default: on the bundled checkpoint the curve raised the fit's gap (bench-frontier, lever
    # "curve") and pushed predicted/real Δloss from ~0.85 to ~0.55
    probe2: str | None = None
    # method-matched probes: GPTQ and rate-aware candidates take their sensitivity from a probe
    # rounded the same way (distortion measures only the layer's output; a tied embedding's
    # input role sees GPTQ's and rate-aware rounding's error differently: 5x under-predicted)
    probe_gptq: str | None = "int4/sdclip:8/gptq/r0/p0/ans"
    probe_rd: str | None = "int4/sdclip:8/gptq/r0/p0/rd0.15/ans"
    rds: tuple[float, ...] = (0.05, 0.15, 0.4)
    rtn_with_hessian: bool = False  # round-to-nearest candidates also for tensors GPTQ can take
    hull_codecs: tuple[str, ...] = ("brotli-11", "transpose+brotli-11")

    def __post_init__(self):
        if 0 not in self.lqer_ranks:
            raise ConfigError(f"grid: lqer_ranks {self.lqer_ranks} must include 0 (no correction)")
        if any(not 0 < r < 100 for r in self.rds):
            raise ConfigError(f"grid: rds {self.rds} must be rate-aware rounding lambdas in (0, 100)")
        for c in self.choices()[:1] + [Choice.parse(p) for p in self.probes]:
            Choice.parse(c.label)  # every field in its canonical form

    def _gptq_ok(self, b: int, c: str, g: bool) -> bool:
        return not g or ((self.gptq_bits is None or b in self.gptq_bits)
                         and (self.gptq_clips is None or c in self.gptq_clips))

    def choices(self) -> list[Choice]:
        plain = [Choice(b, c, g, r, k, p) for b in self.bits for c in self.clips for g in self.gptq
                 for p in self.prunes for r in self.lqer_ranks for k in self.codecs if self._gptq_ok(b, c, g)]
        rated = [Choice(b, c, g, 0, "ans", p, rd) for b in self.bits for c in self.clips for g in self.gptq
                 for p in self.prunes for rd in self.rds if self._gptq_ok(b, c, g)]
        coded = [Choice(b, c, g, 0, k, p) for b in self.bits for c in self.clips for g in self.gptq
                 for p in self.prunes for k in self.hull_codecs if k not in self.codecs and self._gptq_ok(b, c, g)]
        return plain + rated + coded

    @property
    def probes(self) -> tuple[str, ...]:
        extra = [p for p in (self.probe2, self.probe_gptq, self.probe_rd) if p and p != self.probe]
        return (self.probe, *dict.fromkeys(extra))

    def method_probe(self, c: Choice) -> str:
        """The probe whose sensitivity a candidate takes: rate-aware, GPTQ, else the plain one."""
        if c.rd and self.probe_rd:
            return self.probe_rd
        if c.gptq and self.probe_gptq:
            return self.probe_gptq
        return self.probe

    def has_gptq(self, c: Choice) -> bool:
        """A round-to-nearest candidate whose GPTQ twin the grid measures (and so drops it
        for tensors with a Hessian unless `rtn_with_hessian`)."""
        return not self.rtn_with_hessian and True in self.gptq and self._gptq_ok(c.bits, c.clip, True)

    def first_stage(self, c: Choice) -> bool:
        """Measured on every base (the rest only on the hull of these when `lqer_on_hull`)."""
        return c.lqer_rank == 0 and not c.rd and c.codec in self.codecs

    def to_dict(self) -> dict:
        return asdict(self)


LARGE_GRID = Grid(clips=("sdclip:8", "sdclip:12.85"), codecs=("ans",), gptq_bits=(4, 5, 6, 7),
                  gptq_clips=("sdclip:12.85",), hull_codecs=())


def default_grid(state_dict: dict[str, Tensor], min_numel: int = Grid.min_numel) -> Grid:
    """`Grid()` for small checkpoints, `LARGE_GRID` above LARGE_PARAMS quantizable parameters."""
    params = sum(t.numel() for n, t in state_dict.items() if quantizable(n, t, min_numel))
    return LARGE_GRID if params > LARGE_PARAMS else Grid()


@dataclass
class TensorMeasure:
    """One tensor's figures: candidates {label: {bytes, code_bytes, scale_bytes, lqer_bytes,
    distortion}}, its sensitivity (Δloss per unit distortion at the probe) and the probe behind
    it, and the curve's exponent: predicted Δloss = sensitivity * D0 * (D / D0)^exponent with D0
    the probe's distortion (exponent 1: Δloss proportional to distortion)."""

    name: str
    shape: tuple[int, ...]
    sensitivity: float
    probe: dict
    candidates: dict[str, dict]
    exponent: float = 1.0
    # {probe label: sensitivity} of the method-matched probes (Grid.method_probe picks one per
    # candidate); a candidate whose probe is missing uses `sensitivity`
    method_sensitivity: dict[str, float] = field(default_factory=dict)
    method_of: dict[str, str] = field(default_factory=dict)  # candidate label -> its probe label
    probes: dict[str, dict] = field(default_factory=dict)  # every probe's figures, by label

    @property
    def params(self) -> int:
        return int(np.prod(self.shape))

    def predicted_dloss(self, label: str) -> float:
        d = self.candidates[label]["distortion"]
        sens = self.method_sensitivity.get(self.method_of.get(label, ""), self.sensitivity)
        d0 = self.probe.get("distortion") or 0.0
        if self.exponent == 1.0 or d0 <= 0 or d <= 0:
            return sens * d
        return sens * d0 * (d / d0) ** self.exponent


@dataclass
class Measurement:
    """Every quantizable tensor's measured candidates (state-dict order) and how it was got."""

    tensors: dict[str, TensorMeasure]
    grid: Grid
    checkpoint_hash: str
    stats: dict = field(default_factory=dict)
    cache_dir: Path | None = None  # where it was cached (the fit keeps its reference residual there)

    def solver_input(self, labels: list[str] | None = None) -> tuple[list[str], list[list[tuple]]]:
        """(names, per tensor [(bytes, predicted Δloss, label)]) for `solve.solve`."""
        names = list(self.tensors)
        wanted = labels or [c.label for c in self.grid.choices()]
        cands = [[(t.candidates[l]["bytes"], t.predicted_dloss(l), l) for l in wanted if l in t.candidates]
                 for t in self.tensors.values()]
        return names, cands

    def to_frame(self):
        """Every measured candidate as a pandas DataFrame, one row per (tensor, label): the
        label's fields, bytes (and its parts), distortion, the tensor's sensitivity and the
        predicted Δloss in nats (sensitivity x distortion)."""
        import pandas as pd  # only a notebook user pays for pandas here (workers never import it)

        rows = []
        for name, t in self.tensors.items():
            for label, fig in t.candidates.items():
                c = Choice.parse(label)
                rows.append({"name": name, "params": t.params, "label": label, "bits": c.bits, "clip": c.clip,
                             "gptq": c.gptq, "lqer_rank": c.lqer_rank, "prune": c.prune, "codec": c.codec,
                             "bytes": fig["bytes"], "code_bytes": fig.get("code_bytes"),
                             "scale_bytes": fig.get("scale_bytes"), "lqer_bytes": fig.get("lqer_bytes"),
                             "distortion": fig["distortion"], "sensitivity": t.sensitivity,
                             "predicted_dloss": t.predicted_dloss(label)})
        return pd.DataFrame(rows)


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


# ----------------------------------------------------------------------------- one candidate

def quantizable(name: str, t: Tensor, min_numel: int) -> bool:
    """2-D float tensors of at least `min_numel` elements get candidates; the rest are fixed."""
    return t.ndim == 2 and t.is_floating_point() and t.numel() >= min_numel


@contextmanager
def _one_thread():
    """Measure with one torch thread: figures then never depend on the thread count (or `jobs`)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _quantize(name: str, w: Tensor, bits: int, clip: str, gptq: bool, hessian: Tensor | None, prune: float = 0.0,
              rd: float = 0.0):
    """Codes as `pack_state_dict` makes them for this choice (its own code path)."""
    rule = {"match": [name], "bits": bits, "clip": clip, "gptq": gptq, "prune": prune, "rd": rd}
    plan = parse_recipe({"name": "measure", "rules": [rule]}).plan({name: w})[name]
    return quantize_planned(name, w, plan, {name: hessian} if hessian is not None else None, "measure")


def distortion(w: Tensor, w_hat: Tensor, h32: Tensor | None) -> float:
    """trace((W - W_hat) H (W - W_hat)^T) (`quant.weighted_error`) with the product E H in
    float32 and the sum in float64: ~4x faster on record-scale matrices, within ~1e-6 relative."""
    e = w.float() - w_hat.float()
    if h32 is None:
        return float(e.double().square().sum())
    return float(((e @ h32).double() * e.double()).sum())


def lqer_fits(shape: tuple[int, ...], rank: int) -> bool:
    """The record factors (B in groups of 64 columns) fit this shape at this rank."""
    gb = RECORD_FACTORS[1].group_size
    return rank <= min(shape) and (gb is None or shape[1] % gb == 0)


def _lqer_figures(w: Tensor, w_hat: Tensor, ranks: list[int], h32, grid: Grid) -> dict[int, tuple[float, int]]:
    """{rank: (distortion, factor bytes)} of the LQER-corrected weights, as `pack._apply_lqer`
    builds them (record factors, no scaling), all ranks from one SVD."""
    out = {}
    for rank, low in lqer_ranks(w, w_hat, ranks, RECORD_FACTORS[0], RECORD_FACTORS[1], scaling="none").items():
        nbytes = 0
        for f in (low.a, low.b):
            nbytes += codecs.predict_size(grid.lqer_codec, f.codes.numpy())
            nbytes += codecs.predict_size(grid.scales_codec, np.asarray(f.scales.numpy()).reshape(-1))
        out[rank] = (distortion(w, w_hat + low.dequantize(), h32), nbytes)
    return out


def measure_tensor(name: str, w: Tensor, hessian: Tensor | None, grid: Grid,
                   labels: list[str]) -> dict[str, dict]:
    """{label: figures} for the given candidate labels of one tensor (labels whose LQER rank the
    shape cannot take, GPTQ labels of a tensor without a Hessian, and round-to-nearest labels
    with a GPTQ twin of a tensor with one (`Grid.has_gptq`), are left out)."""
    w = w.detach().float()
    h32 = hessian.float() if hessian is not None else None
    out: dict[str, dict] = {}
    # no Hessian (a table no linear layer reads): GPTQ candidates would only repeat rounding;
    # with one, round-to-nearest is left out where the grid has GPTQ at the same bits and clip,
    # unless it asks (GPTQ dominates it: 37 of 684 hull bases of the small checkpoint were RTN)
    wanted = [c for c in map(Choice.parse, labels)
              if (hessian is not None or not c.gptq) and (c.gptq or hessian is None or not grid.has_gptq(c))]
    for base in sorted({c.base for c in wanted}):
        mine = [c for c in wanted if c.base == base]
        q = _quantize(name, w, *base[:3], hessian, base[3], base[4])
        w_hat = q.dequantize().float()
        scale_bytes = codecs.predict_size(grid.scales_codec, np.asarray(q.scales.numpy()).reshape(-1))
        code_bytes = {k: codecs.predict_size(k, q.codes.numpy()) for k in sorted({c.codec for c in mine})}
        ranks = sorted({c.lqer_rank for c in mine if c.lqer_rank and lqer_fits(tuple(w.shape), c.lqer_rank)})
        fixes = _lqer_figures(w, w_hat, ranks, h32, grid) if ranks else {}
        if any(c.lqer_rank == 0 for c in mine):
            fixes[0] = (distortion(w, w_hat, h32), 0)
        for c in mine:
            if c.lqer_rank not in fixes:
                continue
            dist, lqer_bytes = fixes[c.lqer_rank]
            out[c.label] = {"bytes": int(code_bytes[c.codec] + scale_bytes + lqer_bytes),
                            "code_bytes": int(code_bytes[c.codec]), "scale_bytes": int(scale_bytes),
                            "lqer_bytes": int(lqer_bytes), "distortion": dist}
    return out


# ----------------------------------------------------------------------------- coarse to fine

def hull_bases(cands: dict[str, dict]) -> list[tuple]:
    """Bases whose rank-0, lambda-0 candidate (cheapest codec) is on the lower convex hull of
    (bytes, distortion) over the tensor's rank-0, lambda-0 candidates, smallest first."""
    best: dict[tuple, tuple[int, float]] = {}
    for label, fig in cands.items():
        c = Choice.parse(label)
        if c.lqer_rank == 0 and not c.rd and (c.base not in best or fig["bytes"] < best[c.base][0]):
            best[c.base] = (fig["bytes"], fig["distortion"])
    pts = sorted((b, d, base) for base, (b, d) in best.items())
    front, low = [], math.inf
    for b, d, base in pts:
        if d < low:
            front.append((b, d, base))
            low = d
    hull: list[tuple] = []
    for p in front:
        while len(hull) >= 2:
            (b0, d0, _), (b1, d1, _) = hull[-2], hull[-1]
            if (b1 - b0) * (p[1] - d0) - (d1 - d0) * (p[0] - b0) > 0:
                break
            hull.pop()
        hull.append(p)
    return [base for _, _, base in hull]


def wanted_labels(grid: Grid, cands: dict[str, dict], skipped=frozenset()) -> tuple[list[str], bool]:
    """(labels this tensor should have given what is measured so far, final). Not final while
    rank-0, lambda-0 candidates are missing (and not `skipped`: a shape or a missing Hessian
    rules them out): their hull then decides which LQER ranks and rate-aware lambdas come next."""
    every = grid.choices()
    if not grid.lqer_on_hull:
        return [c.label for c in every], True
    first = [c.label for c in every if grid.first_stage(c)]
    if any(l not in cands and l not in skipped for l in first):
        return first, False
    on_hull = set(hull_bases({l: cands[l] for l in first if l in cands}))
    return [c.label for c in every if grid.first_stage(c) or c.base[:4] + (0.0,) in on_hull], True


def _missing(grid: Grid, cands: dict, skipped: set) -> tuple[list[str], bool]:
    labels, final = wanted_labels(grid, cands, skipped)
    return [l for l in labels if l not in cands and l not in skipped], final


# ----------------------------------------------------------------------------- one tensor's job

def _probe_figures(name: str, w: Tensor, hessian, labels: list[str]) -> dict[str, dict]:
    """{probe label: {w_hat, distortion}} for the probes a tensor still lacks."""
    out = {}
    h32 = hessian.float() if hessian is not None else None
    for label in labels:
        c = Choice.parse(label)
        w_hat = _quantize(name, w.detach().float(), c.bits, c.clip, c.gptq, hessian, c.prune, c.rd).dequantize()
        out[label] = {"w_hat": w_hat.to(w.dtype), "distortion": distortion(w, w_hat, h32)}
    return out


def _tensor_job(job: tuple) -> tuple:
    """Measure what one tensor is missing (both coarse-to-fine stages) and, if asked, its probe
    configuration. Runs in a worker process or in-process, always on one torch thread."""
    name, w, h, grid, cands, skipped, need_probe = job
    cands, skipped, count = dict(cands), set(skipped), 0
    with _one_thread():
        while True:
            missing, final = _missing(grid, cands, skipped)
            if missing:
                cands.update(measure_tensor(name, w, h, grid, missing))
                skipped |= {l for l in missing if l not in cands}  # e.g. ranks the shape cannot take
                count += len(missing)
            if final:
                break
        probe = _probe_figures(name, w, h, need_probe) if need_probe else None
    return name, cands, sorted(skipped), count, probe


def _worker_init() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    torch.set_num_threads(1)


def default_jobs() -> int:
    """Worker processes for `measure`: the CPU count, capped at 8 (memory: each holds a tensor
    and its Hessian at a time, plus a torch runtime)."""
    return max(1, min(8, os.cpu_count() or 1))


# ----------------------------------------------------------------------------- the whole model

def measure(state_dict: dict[str, Tensor], hessians: dict[str, Tensor], grid: Grid | None = None,
            probe_loss: Callable[[dict[str, Tensor]], float] | None = None, calibration: dict | None = None,
            cache_dir: str | Path | None = None, progress: Progress | None = None, jobs: int = 1) -> Measurement:
    """Measure every quantizable tensor of `state_dict` over `grid` (None: `default_grid`).

    hessians: {weight name: X^T X} (the tied embedding under its own name); probe_loss(replaced)
    → the model's mean loss on calibration tokens with the `replaced` tensors swapped in ({} =
    the original); None skips the probes (sensitivity 1: distortion alone ranks). calibration:
    the calibration settings (they are part of the cache key). jobs: worker processes (1: in
    this process); the figures and cache files are identical for any value. `progress(done,
    total, note)` hears each tensor as it is stored."""
    t0 = time.perf_counter()
    grid = grid or default_grid(state_dict)
    if not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"measure: jobs must be a whole number >= 1, got {jobs!r}")
    ckpt = state_hash(state_dict)
    names = [n for n, t in state_dict.items() if quantizable(n, t, grid.min_numel)]
    if not names:
        raise ConfigError(f"no quantizable tensors (2-D, >= {grid.min_numel} elements) in the checkpoint")
    cache = Path(cache_dir) if cache_dir else None
    stored, jobs_todo = {}, []
    for name in names:
        key = cache_key(ckpt, calibration, name, grid.scales_codec, grid.lqer_codec)
        path = cache / f"{key}.json" if cache else None
        data = (read_json_or_none(path) if path else None) or {}
        cands, skipped = dict(data.get("candidates", {})), set(data.get("skipped", []))
        probes = dict(data.get("probes", {}))
        stored[name] = (path, cands, skipped, probes)
        usable = [l for l in grid.probes if hessians.get(name) is not None or not Choice.parse(l).gptq]
        need_probe = [l for l in usable if l not in probes] if probe_loss is not None else []
        if _missing(grid, cands, skipped)[0] or need_probe:
            jobs_todo.append((name, state_dict[name].detach().cpu(), hessians.get(name), grid, cands,
                              sorted(skipped), need_probe))
    state = {"base_loss": None, "measured": 0, "done": 0, "t0": t0}
    for name in names:
        if name not in {j[0] for j in jobs_todo}:
            state["done"] += 1
    if progress is not None:
        progress(state["done"], len(names), f"{state['done']} tensor(s) from the cache, {len(jobs_todo)} to measure "
                                            f"({min(jobs, max(1, len(jobs_todo)))} worker(s))")
    for result in _run_jobs(jobs_todo, jobs):
        _store(result, stored, grid, probe_loss, state)
        if progress is not None:
            progress(state["done"], len(names), f"{result[0]}: {result[3]} candidate(s) measured")
    tensors: dict[str, TensorMeasure] = {}
    total = 0
    for name in names:
        _, cands, skipped, probes = stored[name]
        labels = wanted_labels(grid, cands, skipped)[0]
        probe = probes[grid.probe] if probe_loss is not None else {"label": None, "raw_sensitivity": 1.0}
        second = probes.get(grid.probe2) if probe_loss is not None and grid.probe2 else None
        kept = {l: cands[l] for l in labels if l in cands}
        tensors[name] = TensorMeasure(name, tuple(int(d) for d in state_dict[name].shape), 0.0, probe, kept,
                                      curve_exponent(probe, second),
                                      method_of={l: grid.method_probe(Choice.parse(l)) for l in kept},
                                      probes=dict(probes) if probe_loss is not None else {})
        total += len(labels)
    _set_sensitivities(tensors, grid)
    return Measurement(tensors, grid, ckpt, {"measured": state["measured"], "cached": total - state["measured"],
                                             "tensors": len(names), "jobs": jobs,
                                             "seconds": time.perf_counter() - t0}, cache)


def _run_jobs(todo: list[tuple], jobs: int):
    """Results of `_tensor_job` as each finishes: in-process (input order), or from a pool of
    worker processes (spawned, so no torch state is forked) in completion order, so a small
    tensor's result is not held back behind a large one. Every result depends on its own job
    alone (a probe swaps one tensor in and restores it), so the figures and cache files are the
    same in any order. Ctrl-C terminates the workers and propagates."""
    if jobs == 1 or len(todo) <= 1:
        for job in todo:
            yield _tensor_job(job)
        return
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(min(jobs, len(todo)), initializer=_worker_init) as pool:  # exit: terminate
        yield from pool.imap_unordered(_tensor_job, todo, chunksize=1)


def _store(result: tuple, stored: dict, grid: Grid, probe_loss, state: dict) -> None:
    """Fold one tensor's result in: probe its loss change (in this process, which holds the
    model) and write its cache file at once."""
    name, cands, skipped, count, probe = result
    path, _, _, probes = stored[name]
    for label, fig in (probe or {}).items():
        if state["base_loss"] is None:
            state["base_loss"] = probe_loss({})
        base = state["base_loss"]
        loss = probe_loss({name: fig["w_hat"]})
        d = fig["distortion"]
        probes[label] = {"label": label, "loss": loss, "base_loss": base, "dloss": loss - base,
                         "distortion": d, "raw_sensitivity": (loss - base) / d if d > 0 else 0.0}
    stored[name] = (path, cands, set(skipped), probes)
    state["measured"] += count
    state["done"] += 1
    if path is not None:
        atomic_write_json(path, {"name": name, "candidates": cands, "probes": probes, "skipped": list(skipped)})


# the curve's exponent is kept within these: two probes cannot pin more than a gentle bend
EXPONENT_RANGE = (0.5, 1.5)


def curve_exponent(probe: dict, second: dict | None) -> float:
    """The exponent b of Δloss = c D^b through the two probes (1 when the second is missing, or
    either Δloss is lost in noise, or the distortions coincide), clamped to EXPONENT_RANGE."""
    if not second or probe.get("dloss", 0) <= 0 or second.get("dloss", 0) <= 0:
        return 1.0
    d0, d1 = probe["distortion"], second["distortion"]
    if d0 <= 0 or d1 <= 0 or abs(math.log(d0 / d1)) < 1e-3:
        return 1.0
    b = math.log(probe["dloss"] / second["dloss"]) / math.log(d0 / d1)
    return float(min(max(b, EXPONENT_RANGE[0]), EXPONENT_RANGE[1]))


def _set_sensitivities(tensors: dict[str, TensorMeasure], grid: Grid | None = None) -> None:
    """Sensitivity = the probe's Δloss / distortion, floored at a fraction of the median so a
    probe lost in noise (Δloss <= 0) cannot make a tensor look free; the same per method-matched
    probe, floored at the plain sensitivity's floor (a tensor without a Hessian has no GPTQ
    probe: its candidates use the plain one)."""
    raw = [t.probe.get("raw_sensitivity", 1.0) for t in tensors.values()]
    positive = [r for r in raw if r > 0]
    floor = SENSITIVITY_FLOOR * float(np.median(positive)) if positive else 1.0
    for t, r in zip(tensors.values(), raw):
        t.sensitivity = max(float(r), floor)
        for label in (grid.probes[1:] if grid is not None else ()):
            if label in t.probes and label != grid.probe2:
                t.method_sensitivity[label] = max(float(t.probes[label]["raw_sensitivity"]), floor)
