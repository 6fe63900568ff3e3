"""Rate-aware rounding: pick each code between the two grid points around w/s by distortion plus
λ times its code length under the tensor's entropy coder, instead of by distortion alone.

Cost of code q for weight x = w/s (in steps of its scale) with importance a (the weight's share of
the layer's output distortion: s^2 H_jj for round-to-nearest, s^2 / U_jj^2 inside GPTQ, where
U is the upper Cholesky factor of H^-1):

    a (x - q)^2 + mu L(q),   mu = lambda * mean(a)

L(q) = -log2 p(q) is the order-0 code length the ANS coder will spend, with p from the tensor's
round-to-nearest codes (half-count smoothing). lambda = 0 is plain rounding; lambda > 0 moves
weights whose rounding matters least (low H_jj, large scale) towards the cheap codes near the
mode — a Hessian-aware dead zone that the fit trades against bits like any other candidate.
Only the two grid points around x are considered, so no code moves by more than one step.
"""

from __future__ import annotations

import torch
from torch import Tensor


def code_lengths(codes: Tensor, lo: int, hi: int) -> Tensor:
    """Bits of each code value lo..hi under an order-0 model of `codes` (float32, hi-lo+1)."""
    counts = torch.bincount((codes.reshape(-1).long() - lo), minlength=hi - lo + 1).double() + 0.5
    return (-torch.log2(counts / counts.sum())).float()


def rd_round(x: Tensor, t: Tensor, lengths: Tensor, lo: int, hi: int) -> Tensor:
    """Codes (float) in [lo, hi] minimising (x - q)^2 + t L(q) over q in {floor x, floor x + 1};
    `t` = mu / a per element (broadcast against x)."""
    fl = torch.floor(x).clamp_(lo, hi - 1)
    idx = (fl - lo).long()
    c0 = (x - fl).square_().add_(t * lengths[idx])
    c1 = (x - fl - 1.0).square_().add_(t * lengths[idx + 1])
    return torch.where(c1 < c0, fl + 1.0, fl)


def rate_weight(mu: float, a: Tensor) -> Tensor:
    """t = mu / a elementwise; weights of zero importance get a huge t (only the rate counts)."""
    return mu / torch.where(a > 0, a, torch.full_like(a, 1e-30))
