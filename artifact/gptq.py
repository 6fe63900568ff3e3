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

from artifact.quant import Quantized, QuantSpec, quantize_tensor
from artifact.rdround import code_lengths, rate_weight, rd_round
from artifact.runtime.errors import ConfigError


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
    H = hessian.float().clone()
    dead = H.diagonal() == 0
    H[dead, dead] = 1.0
    order = torch.argsort(H.diagonal(), descending=True, stable=True) if config.act_order else torch.arange(cols, device=H.device)
    H = H[order][:, order]
    U, damp_used = _inverse_cholesky(H, config)
    if U is None:
        warnings.warn(f"{label}: Cholesky failed even at damping x{10 ** config.damp_retries}; "
                      "falling back to round-to-nearest", RuntimeWarning, stacklevel=2)
        rtn.meta.update(gptq="fallback_rtn")
        return rtn
    # Column-major working copies (row j = column order[j]): each column GPTQ rounds is then
    # contiguous, and the in-block update is one rank-1 update of contiguous rows.
    Wt = w.float().t()[order].contiguous()
    Wt[dead[order]] = 0.0
    St = _scale_per_column(rtn, rows, cols, order)
    rate = None
    if spec.rd:  # rate-aware rounding: importance s^2 / U_jj^2 (artifact.rdround)
        grid = spec.code_grid
        mu = spec.rd * float(St.square().mean()) * float(U.diagonal().square().reciprocal().mean())
        rate = (mu, code_lengths(rtn.codes, grid.lo, grid.hi))
    codes_t = _error_feedback(Wt, St, U, rtn, spec, config.block_size, rate)
    codes = codes_t[torch.argsort(order)].t().contiguous()
    meta = dict(rtn.meta, gptq="ok", damp=damp_used, act_order=config.act_order, dead_columns=int(dead.sum()))
    return Quantized(codes, rtn.scales, rtn.group_size, rtn.bits, rtn.scheme, meta)


def _inverse_cholesky(H: Tensor, config: GPTQConfig) -> tuple[Tensor | None, float]:
    """Upper Cholesky factor of (H + damp I)^-1 in H's dtype (float32, as the reference
    algorithm), growing the damping on failure."""
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


def _scale_per_column(q: Quantized, rows: int, cols: int, order: Tensor) -> Tensor:
    """Each weight's stored scale as float32 in the permuted column-major layout (cols, rows),
    zero scales replaced by 1 (a zero scale only ever meets zero codes): the divisor of rounding."""
    s = q.scales.float()
    if s.ndim == 0:
        st = s.expand(cols, rows)
    elif q.group_size is None:
        st = s[None, :].expand(cols, rows)
    else:
        st = s.t().repeat_interleave(q.group_size, dim=0)[order]
    return torch.where(st > 0, st, torch.ones_like(st)).contiguous()


def _error_feedback(Wt: Tensor, St: Tensor, U: Tensor, q: Quantized, spec: QuantSpec, block: int,
                    rate: tuple[float, Tensor] | None = None) -> Tensor:
    """The GPTQ loop on the permuted, transposed weights Wt (cols x rows, updated in place):
    round a column, spread its scaled error over the rest of its block at once, and over later
    blocks with one matrix product per block. `rate` = (mu, code lengths) rounds rate-aware.
    Returns the codes (cols x rows, int8)."""
    cols, rows = Wt.shape
    grid = spec.code_grid
    lo, hi = (-1, 1) if q.scheme == "binary" else (grid.lo, grid.hi)
    codes = torch.empty(cols, rows, dtype=torch.int8, device=Wt.device)
    threads = torch.get_num_threads()
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        W1, S1, U1 = Wt[i1:i2], St[i1:i2], U[i1:i2, i1:i2]
        C1 = torch.empty(i2 - i1, rows, device=Wt.device)
        err = torch.empty(i2 - i1, rows, device=Wt.device)
        if rate is not None:  # t = mu / a with a = s^2 / U_jj^2, per element of the block
            T1 = rate_weight(rate[0], S1.square() / U1.diagonal().square()[:, None])
        # The per-column ops are small: one thread avoids a barrier per op, which on a shared
        # CPU (another process holding a core) costs a scheduler slice each time.
        torch.set_num_threads(1)
        try:
            for i in range(i2 - i1):
                col, c, e = W1[i], C1[i], err[i]
                if q.scheme == "binary":
                    torch.sign(col, out=c).add_((c == 0).float())  # sign, with 0 -> +1
                elif rate is not None:
                    c.copy_(rd_round(col / S1[i], T1[i], rate[1], lo, hi))
                else:
                    torch.div(col, S1[i], out=c).round_().clamp_(lo, hi)
                torch.mul(c, S1[i], out=e)
                torch.sub(col, e, out=e).div_(U1[i, i])
                if i + 1 < i2 - i1:
                    W1[i + 1:].addr_(U1[i, i + 1:], e, alpha=-1.0)
        finally:
            torch.set_num_threads(threads)
        codes[i1:i2] = C1.to(torch.int8)
        if i2 < cols:
            Wt[i2:].addmm_(U[i1:i2, i2:].t(), err, alpha=-1.0)
    return codes
