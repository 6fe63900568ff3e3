"""LQER: a low-rank correction of a matrix's quantization error, stored as two small quantized
factors, so the decoder rebuilds w = q*s + A @ B.

E = W - W_hat; its truncated SVD at rank r gives A = U_r S_r (rows x r) and B = V_r^T
(r x cols). "Activation-scaled" LQER takes the SVD of E D with D = diag(sqrt(diag H)) instead
(the directions that matter to the layer's output first) and unscales B after; "hessian"
scaling whitens with the full Cholesky factor of H, the optimum for trace(E H E^T) before the
factors are quantized. Measured on a small trained GPT: each mode lowers the error it targets,
but after GPTQ (whose residual already avoids high-H directions) the factors' own rounding
noise can raise the full Hessian-weighted error — measure before trusting it. Each factor is
quantized with its own `QuantSpec` and dequantized with the shared `dequantize`. The records'
asymmetric packing (`RECORD_FACTORS`): A int2 with one fp16 scale per matrix, codes in
[-2, 1], scale = max|A| / 1.5; B int4 in groups of 64 columns with fp16 group scales, codes in
[-8, 7], scale = group max / 7.5 (the full two's-complement range, hence "asymmetric"). Which tensors get a correction is a parameter: the top k by
error (plain or Hessian-weighted), or an explicit list (`select_targets`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import Tensor

from artifact.runtime.errors import ConfigError
from artifact.quant import Quantized, QuantSpec, quantize_tensor, weighted_error

# The best record's factor packing: A int2, one scale per matrix; B int4 in groups of 64.
RECORD_FACTORS = (QuantSpec("per_tensor", bits=2, asymmetric=True, scale_dtype="fp16"),
                  QuantSpec("per_row", bits=4, group_size=64, asymmetric=True))


SCALINGS = ("none", "diag", "hessian")


@dataclass
class LowRank:
    """A quantized rank-r correction: the decoder adds `a.dequantize() @ b.dequantize()`."""

    a: Quantized  # rows x r
    b: Quantized  # r x cols
    rank: int
    scaling: str

    def dequantize(self) -> Tensor:
        return self.a.dequantize() @ self.b.dequantize()


def lqer(w: Tensor, w_hat: Tensor, rank: int, spec_a: QuantSpec = RECORD_FACTORS[0],
         spec_b: QuantSpec = RECORD_FACTORS[1], hessian: Tensor | None = None,
         scaling: str = "none", refit_b: bool = False, name: str = "") -> LowRank:
    """The rank-`rank` correction of E = W - W_hat with quantized factors.

    scaling: "none" — SVD of E (best for ||E||_F); "diag" — the activation-scaled SVD of
    E diag(sqrt(diag H)) (best for the diagonal-weighted error); "hessian" — SVD of E L with
    H + 1% damping = L L^T (best for the full trace(E H E^T)), B = V_r^T L^-1. `refit_b`
    re-solves B = argmin ||E - A_hat B|| after A is quantized (any metric gives the same
    B = pinv(A_hat) E), which the records do not do. B's group size must divide cols."""
    return lqer_ranks(w, w_hat, [rank], spec_a, spec_b, hessian, scaling, refit_b, name)[rank]


def lqer_ranks(w: Tensor, w_hat: Tensor, ranks, spec_a: QuantSpec = RECORD_FACTORS[0],
               spec_b: QuantSpec = RECORD_FACTORS[1], hessian: Tensor | None = None,
               scaling: str = "none", refit_b: bool = False, name: str = "") -> dict[int, LowRank]:
    """{rank: `lqer(..., rank, ...)`} for several ranks from one SVD (each result is identical
    to its own `lqer` call: the factors of rank r are the SVD's first r directions)."""
    label = name or "tensor"
    if w.ndim != 2 or w.shape != w_hat.shape:
        raise ConfigError(f"{label}: LQER needs matching 2-D weights, got {tuple(w.shape)} and {tuple(w_hat.shape)}")
    for rank in ranks:
        if not 1 <= rank <= min(w.shape):
            raise ConfigError(f"{label}: LQER rank {rank} must be in 1..{min(w.shape)}")
    if scaling not in SCALINGS:
        raise ConfigError(f"{label}: LQER scaling {scaling!r} must be one of {', '.join(SCALINGS)}")
    if scaling != "none" and hessian is None:
        raise ConfigError(f"{label}: LQER scaling {scaling!r} needs a Hessian")
    e = w.double() - w_hat.double()
    if scaling == "none":
        u, s, vh = torch.linalg.svd(e, full_matrices=False)
        unscale = None
    elif scaling == "diag":
        diag = hessian.double().diagonal()
        # dead inputs (H_jj = 0) get a tiny weight instead of a division by zero
        d = diag.clamp_min(1e-8 * float(diag.mean().clamp_min(1e-30))).sqrt()
        u, s, vh = torch.linalg.svd(e * d[None, :], full_matrices=False)
        unscale = lambda v: v / d[None, :]
    else:
        chol = _damped_cholesky(hessian.double(), label)
        u, s, vh = torch.linalg.svd(e @ chol, full_matrices=False)
        unscale = lambda v: torch.linalg.solve_triangular(chol.T, v.T, upper=True).T  # V_r^T L^-1
    out = {}
    for rank in ranks:
        b = vh[:rank] if unscale is None else unscale(vh[:rank])
        a = u[:, :rank] * s[:rank][None, :]
        qa = quantize_tensor(a.float().contiguous(), spec_a, name=f"{label} LQER A")
        if refit_b:
            b = torch.linalg.lstsq(qa.dequantize().double(), e, driver="gelsd").solution
        qb = quantize_tensor(b.float().contiguous(), spec_b, name=f"{label} LQER B")
        out[rank] = LowRank(qa, qb, rank, scaling)
    return out


def _damped_cholesky(h: Tensor, label: str) -> Tensor:
    """Lower Cholesky factor of H + damp * mean(diag H) * I, damp 0.01 growing x10 on failure."""
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    mean_diag = float(h.diagonal().mean().clamp_min(1e-30))
    for damp in (0.01, 0.1, 1.0, 10.0):
        chol, info = torch.linalg.cholesky_ex(h + damp * mean_diag * eye)
        if int(info) == 0:
            return chol
    raise ConfigError(f"{label}: Hessian is not positive definite even with damping; use scaling 'diag' or 'none'")


def quantization_errors(weights: dict[str, Tensor], dequantized: dict[str, Tensor],
                        hessians: dict[str, Tensor] | None = None) -> dict[str, float]:
    """Error of each 2-D tensor: ||W - W_hat||_F^2, or the Hessian-weighted error where
    `hessians` has the tensor."""
    out = {}
    for name, w in weights.items():
        if w.ndim != 2 or name not in dequantized:
            continue
        h = None if hessians is None else hessians.get(name)
        out[name] = weighted_error(w, dequantized[name], h)
    return out


def select_targets(errors: dict[str, float], top_k: int | None = None,
                   names: Iterable[str] | None = None) -> list[str]:
    """Tensors that get a correction: the explicit `names` (each must be known), or the
    `top_k` largest errors (ties by name, so the choice is deterministic)."""
    if names is not None:
        chosen = list(names)
        missing = [n for n in chosen if n not in errors]
        if missing:
            raise ConfigError(f"LQER: tensors {missing} are not quantized 2-D tensors")
        return chosen
    if top_k is None or top_k < 0:
        raise ConfigError(f"LQER: give top_k >= 0 or a list of tensor names (got top_k={top_k})")
    ranked = sorted(errors, key=lambda n: (-errors[n], n))
    return ranked[:top_k]
