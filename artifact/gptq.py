"""GPTQ: round a weight matrix column by column, pushing each column's rounding error onto the
columns not yet rounded, weighted by the inverse Hessian of the layer's inputs.

With H = X^T X over calibration inputs, the layer's output distortion is
trace((W - W_hat) H (W - W_hat)^T) (`quant.weighted_error`); GPTQ greedily lowers it where
round-to-nearest cannot. As the records do: the scales are fixed before GPTQ runs (from the
spec's clip rule, via `quant.quantize_tensor`), H is damped by 0.01 * mean(diag H), dead
columns (H_jj = 0) are zeroed, columns are visited by descending diag H ("act-order"), and the
upper Cholesky factor of H^-1 drives error feedback in blocks of 128 columns. If the Cholesky
factorisation fails, the damping grows x10 a few times; if it still fails, the result is
round-to-nearest with a warning (and `meta["gptq"] = "fallback_rtn"`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from artifact.runtime.errors import ConfigError
from artifact.quant import Quantized, QuantSpec, quantize_tensor


@dataclass(frozen=True)
class GPTQConfig:
    """Knobs of the solve (defaults = the records')."""

    block_size: int = 128
    damp: float = 0.01
    act_order: bool = True
    damp_retries: int = 3  # each multiplies the damping by 10


def gptq_quantize(w: Tensor, hessian: Tensor, spec: QuantSpec, config: GPTQConfig = GPTQConfig(),
                  name: str = "") -> Quantized:
    """GPTQ codes for the 2-D weight `w` (rows x cols) under `spec`, with the scales that
    `quantize_tensor(w, spec, hessian)` chooses; `hessian` is the (cols x cols) X^T X of the
    layer's input. Works for per_row (per-row or grouped scales), per_tensor, ternary and
    binary specs. Returns a `Quantized` (meta: the damping used and the column order rule)."""
    label = name or "tensor"
    if w.ndim != 2:
        raise ConfigError(f"{label}: GPTQ needs a 2-D weight, got shape {tuple(w.shape)}")
    if spec.scheme not in ("per_row", "per_tensor", "ternary", "binary"):
        raise ConfigError(f"{label}: GPTQ cannot produce scheme {spec.scheme!r}")
    if hessian is None:
        raise ConfigError(f"{label}: GPTQ needs a Hessian (calibrate first)")
    rows, cols = w.shape
    rtn = quantize_tensor(w, spec, hessian, name)  # validates w and H; fixes the scales
    H = hessian.double().clone()
    W = w.double().clone()
    dead = H.diagonal() == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    order = torch.argsort(H.diagonal(), descending=True, stable=True) if config.act_order else torch.arange(cols, device=H.device)
    H = H[order][:, order]
    U, damp_used = _inverse_cholesky(H, config)
    if U is None:
        warnings.warn(f"{label}: Cholesky failed even at damping x{10 ** config.damp_retries}; "
                      "falling back to round-to-nearest", RuntimeWarning, stacklevel=2)
        rtn.meta.update(gptq="fallback_rtn")
        return rtn
    S = _scale_per_element(rtn, rows, cols)[:, order].float()
    codes = _error_feedback(W[:, order].float(), S, U.float(), rtn, spec, config.block_size)
    codes = codes[:, torch.argsort(order)].contiguous()
    meta = dict(rtn.meta, gptq="ok", damp=damp_used, act_order=config.act_order, dead_columns=int(dead.sum()))
    return Quantized(codes, rtn.scales, rtn.group_size, rtn.bits, rtn.scheme, meta)


def _inverse_cholesky(H: Tensor, config: GPTQConfig) -> tuple[Tensor | None, float]:
    """Upper Cholesky factor of (H + damp I)^-1, growing the damping on failure."""
    mean_diag = float(H.diagonal().mean())
    damp = config.damp
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    for _ in range(config.damp_retries + 1):
        L, info = torch.linalg.cholesky_ex(H + damp * mean_diag * eye)
        if int(info) == 0:
            U, info2 = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
            if int(info2) == 0 and bool(torch.isfinite(U).all()):
                return U, damp
        damp *= 10.0
    return None, damp


def _scale_per_element(q: Quantized, rows: int, cols: int) -> Tensor:
    """Each weight's scale as stored (float64), shape (rows, cols)."""
    s = q.scales.double()
    if s.ndim == 0:
        return s.expand(rows, cols)
    if q.group_size is None:
        return s[:, None].expand(rows, cols)
    return s.repeat_interleave(q.group_size, dim=1)


def _round(x: Tensor, s: Tensor, q: Quantized, spec: QuantSpec) -> Tensor:
    """The scheme's rounding of x on the fixed grid s (codes as float)."""
    if q.scheme == "binary":
        return torch.where(x < 0, -1.0, 1.0)
    return spec.code_grid.codes(x, s)


def _error_feedback(W: Tensor, S: Tensor, U: Tensor, q: Quantized, spec: QuantSpec, block: int) -> Tensor:
    """The GPTQ loop (columns already permuted): round a column, spread its scaled error over
    the rest of its block at once, and over later blocks with one matrix product per block."""
    rows, cols = W.shape
    codes = torch.empty(rows, cols, dtype=torch.int8, device=W.device)
    threads = torch.get_num_threads()
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        W1 = W[:, i1:i2].clone()
        U1 = U[i1:i2, i1:i2]
        S1 = S[:, i1:i2]
        err = torch.empty(rows, i2 - i1, device=W.device)
        # The per-column ops are small: one thread avoids a barrier per op, which on a shared
        # CPU (another process holding a core) costs a scheduler slice each time.
        torch.set_num_threads(1)
        try:
            for i in range(i2 - i1):
                col = W1[:, i]
                c = _round(col, S1[:, i], q, spec)
                codes[:, i1 + i] = c.to(torch.int8)
                e = (col - c * S1[:, i]) / U1[i, i]
                err[:, i] = e
                W1[:, i + 1:].addr_(e, U1[i, i + 1:], alpha=-1.0)
        finally:
            torch.set_num_threads(threads)
        if i2 < cols:
            W[:, i2:].addmm_(err, U[i1:i2, i2:], alpha=-1.0)
    return codes
