"""Codes and scales: every quantization scheme the records use, and the clip rules that set them.

A tensor goes in with a `QuantSpec` (scheme, bits, clip rule, group size); a `Quantized` comes
out: int8 codes, their scales exactly as they will be stored (fp16 per row or per group, or a
0-d fp32 per tensor), and a little metadata. Dequantization is `artifact.runtime.decoder.dequantize`,
the function the shipped decoder and the trainer's QAT also use, so the weights measured here
are the weights a submission decodes. Quantization always divides by the scale *as stored*
(fp16-rounded), so `w_hat = q * s` is exactly what the decoder reproduces.

Schemes:
- `per_row`: symmetric int2..int8, codes in [-R, R], R = 2^(b-1) - 1, one fp16 scale per row
  (`group_size` None; a 1-D tensor is one row) or per group of `group_size` columns;
  `asymmetric=True` is the records' LQER-factor grid: the full two's-complement range
  [-(R+1), R] with scale = clip / (R + 1/2);
- `per_tensor`: the same codes with one 0-d scale (fp32 unless `scale_dtype` says fp16);
- `ternary`: codes {-1, 0, 1}, fp16 absmean scale per group (or row);
- `binary`: codes {-1, 1}, fp16 mean-|w| scale per group (or row);
- `fp16`, `fp32`: float passthrough; `raw`: exact passthrough of any dtype;
- `baseline_int8`: the challenge baseline's packaging rule, tensor by tensor (`baseline_int8`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from artifact.rdround import code_lengths, rate_weight, rd_round
from artifact.runtime.decoder import dequantize
from artifact.runtime.errors import CheckpointError, ConfigError

INT_SCHEMES = ("per_row", "per_tensor")
SCHEMES = ("per_row", "per_tensor", "ternary", "binary", "fp16", "fp32", "raw", "baseline_int8")
CLIP_KINDS = ("absmax", "percentile", "search", "sdclip", "hsdclip")
SEARCH_QUANTILES = (0.999, 0.9995, 0.9999, 0.99999, 1.0)
FP16_MAX = 65504.0

# The challenge baseline's constants (train_gpt.py): tensors up to this size stay float, rows
# clip at the 99.99984th percentile, and these name fragments mark fp32 control tensors.
BASELINE_KEEP_FLOAT_MAX_NUMEL = 65_536
BASELINE_CLIP_Q = 99.99984 / 100.0
BASELINE_CONTROL_PATTERNS = ("attn_scale", "mlp_scale", "resid_mix", "q_gain", "skip_weight")


def code_range(bits: int) -> int:
    """R = 2^(b-1) - 1: the largest code magnitude of a symmetric b-bit integer."""
    return (1 << (bits - 1)) - 1


@dataclass(frozen=True)
class ClipRule:
    """How a row's (or group's, or tensor's) clip value is chosen; the scale is clip / R
    (clip / (R + 1/2) on an asymmetric grid).

    kind: `absmax` (max |w|, nothing clipped), `percentile` (quantile `q` of |w|), `search`
    (try each quantile in `candidates`, keep the lowest error; `per` = "row" picks per row,
    "matrix" one quantile for the whole tensor; the error is Hessian-weighted when a Hessian is
    given), `sdclip` (k * std of the row; never capped at absmax: a wide clip is how the records
    trade error for entropy), `hsdclip` (SDClip scaled per row by 1 + lam * (r_i - 1), where
    r_i = mean_j |w_ij| * H_jj / mean(diag H), normalised to mean 1; needs a Hessian).
    """

    kind: str = "absmax"
    q: float = 1.0
    k: float = math.inf
    lam: float = 0.175
    per: str = "row"
    candidates: tuple[float, ...] = SEARCH_QUANTILES

    def __post_init__(self) -> None:
        object.__setattr__(self, "candidates", tuple(float(c) for c in self.candidates))
        if self.kind not in CLIP_KINDS:
            raise ConfigError(f"clip rule: unknown kind {self.kind!r} (one of {', '.join(CLIP_KINDS)})")
        if not 0.0 < self.q <= 1.0:
            raise ConfigError(f"clip rule: quantile q={self.q} must be in (0, 1]")
        if self.kind in ("sdclip", "hsdclip") and not (self.k > 0 and not math.isnan(self.k)):
            raise ConfigError(f"clip rule {self.kind}: k={self.k} must be positive")
        if self.per not in ("row", "matrix"):
            raise ConfigError(f"clip rule: per={self.per!r} must be 'row' or 'matrix'")
        if not self.candidates or any(not 0.0 < c <= 1.0 for c in self.candidates):
            raise ConfigError(f"clip rule: search candidates {self.candidates} must be quantiles in (0, 1]")

    def to_dict(self) -> dict[str, Any]:
        """Only the fields that matter for this kind (what a TOML recipe would write)."""
        keep = {"absmax": (), "percentile": ("q",), "search": ("per", "candidates"),
                "sdclip": ("k",), "hsdclip": ("k", "lam")}[self.kind]
        d = {"kind": self.kind}
        d.update({key: (list(v) if isinstance(v, tuple) else v) for key, v in asdict(self).items() if key in keep})
        return d

    @classmethod
    def from_config(cls, value: Any, where: str = "clip rule") -> "ClipRule":
        """From a dict (`{kind="sdclip", k=12.85}`) or a short string: "absmax",
        "percentile:0.9999", "search:row", "search:matrix", "sdclip:12.85", "hsdclip:13,0.175"."""
        if isinstance(value, ClipRule):
            return value
        if isinstance(value, dict):
            unknown = sorted(set(value) - {"kind", "q", "k", "lam", "per", "candidates"})
            if unknown:
                raise ConfigError(f"{where}: unknown keys {unknown}")
            return cls(**value)
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a table or a string, got {type(value).__name__}")
        kind, _, arg = value.partition(":")
        try:
            if kind == "absmax" and not arg:
                return cls()
            if kind == "percentile":
                return cls(kind, q=float(arg))
            if kind == "search":
                return cls(kind, per=arg or "row")
            if kind == "sdclip":
                return cls(kind, k=float(arg))
            if kind == "hsdclip":
                k, _, lam = arg.partition(",")
                return cls(kind, k=float(k), lam=float(lam) if lam else 0.175)
        except ValueError as exc:
            raise ConfigError(f"{where}: cannot read {value!r}: {exc}") from None
        raise ConfigError(f"{where}: cannot read {value!r} (e.g. 'sdclip:12.85', 'percentile:0.9999')")


@dataclass(frozen=True)
class QuantSpec:
    """What to do with one tensor: scheme, bit width, clip rule, group size (columns), the
    code range (symmetric [-R, R] or the full [-(R+1), R]) and the scale dtype (None: fp16,
    except per_tensor's fp32)."""

    scheme: str = "per_row"
    bits: int = 8
    clip: ClipRule = field(default_factory=ClipRule)
    group_size: int | None = None
    asymmetric: bool = False
    scale_dtype: str | None = None
    rd: float = 0.0  # rate-aware rounding's lambda (artifact.rdround); 0 = round to nearest

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ConfigError(f"quant spec: unknown scheme {self.scheme!r} (one of {', '.join(SCHEMES)})")
        if self.scheme in INT_SCHEMES and not 2 <= self.bits <= 8:
            raise ConfigError(f"quant spec: {self.scheme} needs bits in 2..8, got {self.bits}")
        if self.group_size is not None and (self.group_size < 1 or self.scheme not in ("per_row", "ternary", "binary")):
            raise ConfigError(f"quant spec: group_size {self.group_size} is only valid (>= 1) for per_row, ternary, binary")
        if self.asymmetric and self.scheme not in INT_SCHEMES:
            raise ConfigError(f"quant spec: asymmetric code ranges only exist for {', '.join(INT_SCHEMES)}")
        if not (self.rd >= 0.0 and self.rd < float("inf")) or (self.rd and self.scheme != "per_row"):
            raise ConfigError(f"quant spec: rd = {self.rd} must be a finite lambda >= 0, and only per_row takes one")
        if self.scale_dtype not in (None, "fp16", "fp32"):
            raise ConfigError(f"quant spec: scale_dtype {self.scale_dtype!r} must be 'fp16' or 'fp32'")

    @property
    def code_grid(self) -> "CodeGrid":
        """The code range and the number of steps a clip value spans."""
        dtype = torch.float32 if (self.scale_dtype or ("fp32" if self.scheme == "per_tensor" else "fp16")) == "fp32" else torch.float16
        r = 1 if self.scheme in ("ternary", "binary") else code_range(self.bits)
        if self.asymmetric:
            return CodeGrid(-(r + 1), r, r + 0.5, dtype)
        return CodeGrid(-r, r, float(r), dtype)


@dataclass(frozen=True)
class CodeGrid:
    """Codes lie in [lo, hi]; scale = clip / steps, stored as `dtype`."""

    lo: int
    hi: int
    steps: float
    dtype: torch.dtype

    def scales(self, clip: Tensor) -> Tensor:
        """Scales as stored for clip values; a zero clip (all-zero row) gets scale 0."""
        scale = clip.float() / self.steps
        if self.dtype == torch.float16:
            return _fp16_scales(scale)
        return scale

    def codes(self, x: Tensor, stored_scale: Tensor) -> Tensor:
        """round(x / s) clamped to the range, s broadcast against x (float codes)."""
        s = stored_scale.float()
        safe = torch.where(s > 0, s, torch.ones_like(s))  # a zero scale only ever meets zero codes
        return torch.clamp(torch.round(x / safe), self.lo, self.hi)


# Later records quantize small gate tensors too: int8, one fp16 scale per row, absmax clip.
GATE_INT8 = QuantSpec("per_row", bits=8)


@dataclass
class Quantized:
    """A tensor as it will be stored. Integer schemes: `codes` int8 (tensor's shape) and
    `scales` (fp16 (rows,) or (rows, cols // group_size), or 0-d fp32). Passthrough schemes
    (`fp16`, `fp32`, `raw`): `codes` holds the stored tensor itself and `scales` is None."""

    codes: Tensor
    scales: Tensor | None
    group_size: int | None
    bits: int
    scheme: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.codes.shape)

    @property
    def is_passthrough(self) -> bool:
        return self.scales is None

    def dequantize(self) -> Tensor:
        """fp32 weights (`fp16`/`fp32` passthrough: the stored tensor as fp32; `raw`: as stored)."""
        if self.scales is None:
            return self.codes if self.scheme == "raw" else self.codes.float()
        return dequantize(self.codes, self.scales, self.group_size)


# --------------------------------------------------------------------------- errors

def weighted_error(w: Tensor, w_hat: Tensor, hessian: Tensor | None = None) -> float:
    """trace((W - W_hat) H (W - W_hat)^T) in float64: the layer's output distortion summed over
    the calibration inputs (H = X^T X). Without H: the plain sum of squared errors (MSE * n)."""
    if w.numel() == 0:  # e.g. skip_weights of a 1-layer GPT, shape (0, D)
        return 0.0
    e = (w.double() - w_hat.double()).reshape(w.shape[0] if w.ndim > 1 else 1, -1)
    if hessian is None:
        return float((e * e).sum())
    return float(((e @ hessian.double()) * e).sum())


def _row_errors(e: Tensor, hessian: Tensor | None, col_weight: Tensor | None) -> Tensor:
    """Error of each row of e (summed in float64): e H e^T, sum d_j e_j^2, or sum e_j^2. The
    product e H runs in float32: these errors only rank candidates."""
    if hessian is not None:
        e = e.float()
        return ((e @ hessian.float()).double() * e.double()).sum(1)
    e = e.double()
    if col_weight is not None:
        return (e * e * col_weight.double()).sum(1)
    return (e * e).sum(1)


# --------------------------------------------------------------------------- clip values

def row_quantile(a: Tensor, q: float) -> Tensor:
    """torch.quantile(a, q, dim=1) (linear interpolation), in row chunks so huge tensors work."""
    rows_per_chunk = max(1, (1 << 24) // max(a.shape[1], 1))
    return torch.cat([torch.quantile(c, q, dim=1) for c in a.split(rows_per_chunk)]) if a.shape[0] else a.new_zeros(0)


def _sdclip(w2: Tensor, rule: ClipRule) -> Tensor:
    std = w2.std(dim=1) if w2.shape[1] > 1 else w2.abs()[:, 0]
    return rule.k * std.clamp_min(1e-12)


def _hessian_row_factor(w2: Tensor, hessian: Tensor, lam: float) -> Tensor:
    """1 + lam * (r_i - 1), r_i = mean_j |w_ij| H_jj / mean(diag H), normalised to mean 1."""
    diag = hessian.diagonal().float()
    r = (w2.abs() * (diag / diag.mean().clamp_min(1e-30))).mean(dim=1)
    r = r / r.mean().clamp_min(1e-30)
    return (1.0 + lam * (r - 1.0)).clamp_min(1e-3)


def _quantize_with_clip(w2: Tensor, clip: Tensor, grid: CodeGrid) -> tuple[Tensor, Tensor]:
    """Codes and stored scales for rows of w2 given each row's clip; divides by the stored scale."""
    scale = grid.scales(clip)
    return grid.codes(w2, scale[:, None]).to(torch.int8), scale


def _fp16_scales(scale: Tensor) -> Tensor:
    if bool((scale > FP16_MAX).any()):
        raise CheckpointError(f"scale {float(scale.max()):.4g} overflows fp16 (weights too large for fp16 scales)")
    return scale.to(torch.float16)


def _search_clip(w2: Tensor, rule: ClipRule, grid: CodeGrid, hessian: Tensor | None,
                 col_weight: Tensor | None) -> tuple[Tensor, dict[str, Any]]:
    """Try each candidate quantile; keep the lowest (weighted) error per row or per matrix."""
    a = w2.abs()
    clips, errs = [], []
    for cand in rule.candidates:
        clip = a.amax(dim=1) if cand >= 1.0 else row_quantile(a, cand)
        q, s = _quantize_with_clip(w2, clip, grid)
        e = w2 - dequantize(q, s)
        clips.append(clip)
        errs.append(_row_errors(e, hessian, col_weight))
    clips_t, errs_t = torch.stack(clips), torch.stack(errs)  # (candidates, rows)
    if rule.per == "matrix":
        best = int(torch.argmin(errs_t.sum(1)))
        return clips_t[best], {"chosen_q": rule.candidates[best]}
    best_rows = torch.argmin(errs_t, dim=0)
    counts = torch.bincount(best_rows, minlength=len(rule.candidates)).tolist()
    return clips_t.gather(0, best_rows[None])[0], {"chosen_q_counts": dict(zip(map(str, rule.candidates), counts))}


def clip_values(w2: Tensor, rule: ClipRule, grid: CodeGrid, hessian: Tensor | None = None,
                col_weight: Tensor | None = None) -> tuple[Tensor, dict[str, Any]]:
    """One clip per row of the 2-D float32 `w2` under `rule` (searches quantize on `grid`),
    plus metadata about the choice."""
    if rule.kind == "absmax":
        return w2.abs().amax(dim=1), {}
    if rule.kind == "percentile":
        return row_quantile(w2.abs(), rule.q), {}
    if rule.kind == "sdclip":
        return _sdclip(w2, rule), {}
    if rule.kind == "hsdclip":
        if hessian is None:
            raise ConfigError("clip rule hsdclip needs a Hessian (calibrate first)")
        return _sdclip(w2, rule) * _hessian_row_factor(w2, hessian, rule.lam), {}
    return _search_clip(w2, rule, grid, hessian, col_weight)


# --------------------------------------------------------------------------- schemes

def _as_rows(w: Tensor) -> Tensor:
    return w.reshape(1, -1) if w.ndim <= 1 else w.reshape(w.shape[0], -1)


def _check_groups(cols: int, group_size: int, name: str) -> int:
    if cols % group_size:
        raise ConfigError(f"{name or 'tensor'}: {cols} columns are not a multiple of group_size {group_size}")
    return cols // group_size


def _check_hessian(hessian: Tensor | None, cols: int, name: str) -> None:
    if hessian is not None and tuple(hessian.shape) != (cols, cols):
        raise ConfigError(f"{name or 'tensor'}: Hessian shape {tuple(hessian.shape)} does not match {cols} columns")
    if hessian is not None and not bool(torch.isfinite(hessian).all()):
        raise ConfigError(f"{name or 'tensor'}: Hessian has NaN or Inf")


def _quantize_int(w: Tensor, spec: QuantSpec, hessian: Tensor | None, name: str) -> Quantized:
    w2 = _as_rows(w.float())
    rows, cols = w2.shape
    grid = spec.code_grid
    meta: dict[str, Any] = {"clip": spec.clip.to_dict()}
    if spec.asymmetric:
        meta["asymmetric"] = True
    if spec.scheme == "per_tensor":
        clip, info = _tensor_clip(w2, spec.clip, grid, hessian)
        scale = grid.scales(clip.reshape(()))
        return Quantized(grid.codes(w.float(), scale).to(torch.int8), scale, None, spec.bits, "per_tensor", {**meta, **info})
    if spec.group_size is None:
        clip, info = clip_values(w2, spec.clip, grid, hessian)
        q, s = _quantize_with_clip(w2, clip, grid)
        if spec.rd:
            q, meta["rd"] = _rd_codes(w2, q, s[:, None].expand(rows, cols), grid, spec.rd, hessian), spec.rd
        return Quantized(q.reshape(w.shape), s, None, spec.bits, "per_row", {**meta, **info})
    if w.ndim != 2:
        raise ConfigError(f"{name or 'tensor'}: grouped scales need a 2-D tensor, got shape {tuple(w.shape)}")
    groups = _check_groups(cols, spec.group_size, name)
    if spec.clip.kind == "hsdclip":
        raise ConfigError(f"{name or 'tensor'}: hsdclip is defined per row, not per group")
    g2 = w2.reshape(rows * groups, spec.group_size)
    col_weight = None if hessian is None else hessian.diagonal().float().reshape(groups, spec.group_size).repeat(rows, 1)
    clip, info = _grouped_clip(g2, spec.clip, grid, col_weight)
    q, s = _quantize_with_clip(g2, clip, grid)
    if spec.rd:
        s_el = s[:, None].expand(-1, spec.group_size).reshape(rows, cols)
        q, meta["rd"] = _rd_codes(w2, q.reshape(rows, cols), s_el, grid, spec.rd, hessian), spec.rd
    return Quantized(q.reshape(rows, cols), s.reshape(rows, groups), spec.group_size, spec.bits, "per_row", {**meta, **info})


def _grouped_clip(g2: Tensor, rule: ClipRule, grid: CodeGrid, col_weight: Tensor | None) -> tuple[Tensor, dict]:
    # Groups are rows of g2; a search weighs each column by diag(H) (the diagonal
    # approximation: a full e H e^T does not split across groups).
    if rule.kind != "search":
        return clip_values(g2, rule, grid)
    a = g2.abs()
    best_clip, best_err, errs = None, None, []
    for cand in rule.candidates:
        clip = a.amax(dim=1) if cand >= 1.0 else row_quantile(a, cand)
        q, s = _quantize_with_clip(g2, clip, grid)
        err = _row_errors(g2 - dequantize(q, s), None, col_weight)
        errs.append(float(err.sum()))
        if rule.per == "matrix":
            err = err.sum().expand_as(err)
        if best_err is None:
            best_clip, best_err = clip, err
        else:
            better = err < best_err
            best_clip, best_err = torch.where(better, clip, best_clip), torch.where(better, err, best_err)
    info = {"chosen_q": rule.candidates[errs.index(min(errs))]} if rule.per == "matrix" else {}
    return best_clip, info


def _rd_codes(w2: Tensor, q: Tensor, s_el: Tensor, grid: CodeGrid, lam: float, hessian: Tensor | None) -> Tensor:
    """Rate-aware codes (artifact.rdround) on the fixed scales `s_el` (one per element): the
    importance of a weight is s^2 H_jj (s^2 without a Hessian)."""
    s = s_el.float()
    h = hessian.diagonal().float() if hessian is not None else torch.ones(w2.shape[1])
    a = s.square() * h[None, :]
    x = w2 / torch.where(s > 0, s, torch.ones_like(s))
    lengths = code_lengths(q, grid.lo, grid.hi)
    return rd_round(x, rate_weight(lam * float(a.mean()), a), lengths, grid.lo, grid.hi).to(torch.int8)


def _tensor_clip(w2: Tensor, rule: ClipRule, grid: CodeGrid, hessian: Tensor | None) -> tuple[Tensor, dict]:
    """One clip for the whole tensor (0-d): the rules of `clip_values` over all its elements."""
    a = w2.abs().reshape(-1)
    if rule.kind == "hsdclip":
        raise ConfigError("clip rule hsdclip is defined per row, not per tensor")
    if rule.kind != "search":
        return clip_values(w2.reshape(1, -1), rule, grid)[0][0], {}
    best, best_err = None, math.inf
    h = hessian if (hessian is not None and hessian.shape[0] == w2.shape[1]) else None
    for cand in rule.candidates:
        clip = a.max() if cand >= 1.0 else _tensor_quantile(a, cand)
        scale = grid.scales(clip)
        err = float(_row_errors(w2 - grid.codes(w2, scale) * scale.float(), h, None).sum())
        if err < best_err:
            best, best_err = (clip, cand), err
    return best[0], {"chosen_q": best[1]}


def _quantize_ternary_binary(w: Tensor, spec: QuantSpec, name: str) -> Quantized:
    """Absmean scale per group (or row); ternary codes round(w/s) in {-1,0,1}, binary sign(w)."""
    if spec.group_size is not None and w.ndim != 2:
        raise ConfigError(f"{name or 'tensor'}: grouped scales need a 2-D tensor, got shape {tuple(w.shape)}")
    w2 = _as_rows(w.float())
    rows, cols = w2.shape
    g = spec.group_size or cols
    groups = _check_groups(cols, g, name)
    g2 = w2.reshape(rows * groups, g)
    s16 = spec.code_grid.scales(g2.abs().mean(dim=1))  # grid steps = 1: the scale is the absmean
    if spec.scheme == "ternary":
        q = spec.code_grid.codes(g2, s16[:, None])
    else:
        q = torch.where(g2 < 0, -1.0, 1.0)
    codes = q.to(torch.int8).reshape(w.shape)
    scales = s16.reshape(rows) if spec.group_size is None else s16.reshape(rows, groups)
    bits = 2 if spec.scheme == "ternary" else 1
    return Quantized(codes, scales, spec.group_size, bits, spec.scheme, {})


def _passthrough(w: Tensor, scheme: str, name: str) -> Quantized:
    if scheme == "raw":
        return Quantized(w.detach().clone(), None, None, w.element_size() * 8, "raw", {"dtype": str(w.dtype).removeprefix("torch.")})
    dtype = torch.float16 if scheme == "fp16" else torch.float32
    if scheme == "fp16" and bool((w.float().abs() > FP16_MAX).any()):
        raise CheckpointError(f"{name or 'tensor'}: values beyond fp16 range ({FP16_MAX}); use fp32")
    return Quantized(w.detach().to(dtype).clone(), None, None, 16 if scheme == "fp16" else 32, scheme,
                     {"orig_dtype": str(w.dtype).removeprefix("torch.")})


def check_finite(w: Tensor, name: str = "") -> None:
    """Bad checkpoints fail loudly: NaN or Inf in a float tensor is a CheckpointError."""
    if w.is_floating_point() and not bool(torch.isfinite(w).all()):
        bad = int((~torch.isfinite(w)).sum())
        raise CheckpointError(f"{name or 'tensor'}: {bad} NaN/Inf values of {w.numel()}")


def quantize_tensor(w: Tensor, spec: QuantSpec, hessian: Tensor | None = None, name: str = "") -> Quantized:
    """Quantize one tensor under `spec`. `hessian` (cols x cols, the layer's X^T X) steers the
    Hessian-aware clip rules; `name` only labels error messages (and `baseline_int8`'s choice)."""
    if spec.scheme == "baseline_int8":
        return baseline_int8(name, w)
    if spec.scheme in ("fp16", "fp32", "raw"):
        if spec.scheme != "raw":
            check_finite(w, name)
        return _passthrough(w, spec.scheme, name)
    if not w.is_floating_point():
        raise CheckpointError(f"{name or 'tensor'}: cannot quantize dtype {w.dtype} (only float tensors)")
    check_finite(w, name)
    if w.numel() == 0:
        raise CheckpointError(f"{name or 'tensor'}: empty tensor cannot be quantized")
    if spec.scheme in ("ternary", "binary"):
        return _quantize_ternary_binary(w, spec, name)
    _check_hessian(hessian, _as_rows(w).shape[1], name)
    try:
        return _quantize_int(w, spec, hessian, name)
    except (ConfigError, CheckpointError) as exc:  # name the tensor in errors raised deep down
        if name and not str(exc).startswith(name):
            raise type(exc)(f"{name}: {exc}") from None
        raise


# --------------------------------------------------------------------------- the baseline's rule

def baseline_int8(name: str, w: Tensor) -> Quantized:
    """The challenge baseline's packaging of one state-dict entry, reproduced exactly.

    Non-float: kept as is. Float with <= 65,536 elements: kept float (fp32 for control tensors,
    fp16 for fp32/bf16 others, other float dtypes unchanged). Larger 2-D: int8 per row, clip at
    torch.quantile(|w|, 0.9999984, dim=1), scale = (clip/127).clamp_min(1/127); the codes divide
    by that fp32 scale and only then is it stored as fp16 (so here, unlike our own schemes, the
    dequantized weights use a scale rounded after quantization: that is the baseline). Other
    larger tensors: int8 per tensor with a 0-d fp32 scale clip/127 (1.0 when clip is 0).
    """
    t = w.detach()
    if not t.is_floating_point():
        return _passthrough(t, "raw", name)
    check_finite(t, name)
    if t.numel() <= BASELINE_KEEP_FLOAT_MAX_NUMEL:
        if any(p in name for p in BASELINE_CONTROL_PATTERNS):
            return _passthrough(t, "fp32", name)
        if t.dtype in (torch.float32, torch.bfloat16, torch.float16):
            return _passthrough(t, "fp16", name)
        return _passthrough(t, "raw", name)  # e.g. float64: the baseline keeps it as is
    t32 = t.float()
    meta = {"clip": {"kind": "percentile", "q": BASELINE_CLIP_Q}, "rule": "baseline_int8"}
    if t32.ndim == 2:
        clip = row_quantile(t32.abs(), BASELINE_CLIP_Q)
        clipped = torch.maximum(torch.minimum(t32, clip[:, None]), -clip[:, None])
        scale = (clip / 127.0).clamp_min(1.0 / 127.0)
        q = torch.clamp(torch.round(clipped / scale[:, None]), -127, 127).to(torch.int8)
        return Quantized(q, _fp16_scales(scale), None, 8, "per_row", meta)
    flat = t32.abs().flatten()
    clip_abs = float(_tensor_quantile(flat, BASELINE_CLIP_Q))
    scale = torch.tensor(clip_abs / 127.0 if clip_abs > 0 else 1.0, dtype=torch.float32)
    q = torch.clamp(torch.round(torch.clamp(t32, -clip_abs, clip_abs) / scale), -127, 127).to(torch.int8)
    return Quantized(q, scale, None, 8, "per_tensor", meta)


def _tensor_quantile(flat: Tensor, q: float) -> Tensor:
    if flat.numel() <= (1 << 24):
        return torch.quantile(flat, q)
    # torch.quantile refuses > 2^24 elements; same linear interpolation on the sorted values.
    v = flat.sort().values
    pos = q * (v.numel() - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, v.numel() - 1)
    return torch.lerp(v[lo], v[hi], torch.tensor(pos - lo, dtype=v.dtype))


def baseline_int8_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Quantized]:
    """`baseline_int8` over a whole state dict (the `baseline-int8-zlib` recipe's tensors)."""
    return {name: baseline_int8(name, t) for name, t in state_dict.items()}
