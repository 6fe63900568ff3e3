"""Pruning: zeroing weights (before quantization) or codes (after) to save compressed bytes.

- `magnitude_prune`: zero the given fraction of a tensor's smallest-|w| entries (the records:
  3% per large matrix), before it is quantized.
- "Selective ±1 pruning": among codes with |q| = 1, zero those whose scale is smallest first —
  zeroing one moves its weight by exactly s, costing s² of squared error. `prune_pm1` does it
  for one tensor, `prune_pm1_many` across tensors (one global order), and `prune_to_size`
  binary-searches the count until a caller-supplied size function says the blob fits.
Ties are broken by tensor position, then flat index, so results are deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from artifact.runtime.errors import ConfigError
from artifact.quant import Quantized


def magnitude_prune(w: Tensor, fraction: float) -> Tensor:
    """A copy of `w` with round(fraction * numel) smallest-|w| entries set to zero (ties:
    lower flat index first)."""
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"pruning fraction {fraction} must be in [0, 1]")
    count = int(round(fraction * w.numel()))
    out = w.detach().clone()
    if count == 0:
        return out
    # the count-th smallest |w| by selection (O(n), not a sort): everything below it goes, and
    # of the entries equal to it the lowest flat indices, as a stable sort would order them
    mag = w.detach().abs().reshape(-1)
    threshold = float(np.partition(mag.numpy(), count - 1)[count - 1])
    below = mag < threshold
    ties = torch.nonzero(mag == threshold).reshape(-1)[: count - int(below.sum())]
    flat = out.view(-1)
    flat[below] = 0
    flat[ties] = 0
    return out


def _per_element_scale_sq(q: Quantized) -> Tensor:
    """s² of each code's scale, float64, flat (row-major)."""
    s = q.scales.double()
    rows = q.codes.shape[0] if q.codes.ndim > 1 else 1
    cols = q.codes.numel() // rows
    if s.ndim == 0 or (q.codes.ndim == 1 and s.numel() == 1):
        full = s.reshape(()).expand(rows, cols)
    elif q.group_size is None:
        full = s.reshape(-1)[:, None].expand(rows, cols)
    else:
        full = s.repeat_interleave(q.group_size, dim=1)
    return (full * full).reshape(-1)


def pm1_candidates(quantized: Sequence[Quantized]) -> tuple[Tensor, Tensor, Tensor]:
    """All |q| = 1 codes of integer tensors in pruning order: (tensor index, flat index, s²),
    sorted by s², then tensor index, then flat index. Passthrough and binary tensors are
    skipped (a binary code cannot be zero)."""
    tensors, flats, costs = [], [], []
    for i, q in enumerate(quantized):
        if q.is_passthrough or q.scheme == "binary":
            continue
        flat = torch.nonzero(q.codes.reshape(-1).abs() == 1).reshape(-1)
        tensors.append(torch.full_like(flat, i))
        flats.append(flat)
        costs.append(_per_element_scale_sq(q)[flat])
    if not flats:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty, torch.zeros(0, dtype=torch.float64)
    t, f, c = torch.cat(tensors), torch.cat(flats), torch.cat(costs)
    # lexicographic (cost, tensor, flat): stable sorts from the last key to the first
    order = torch.sort(f, stable=True).indices
    order = order[torch.sort(t[order], stable=True).indices]
    order = order[torch.sort(c[order], stable=True).indices]
    return t[order], f[order], c[order]


def prune_pm1_many(quantized: Sequence[Quantized], count: int,
                   candidates: tuple[Tensor, Tensor, Tensor] | None = None) -> list[Quantized]:
    """Copies of `quantized` with the first `count` ±1 codes (global order) set to zero."""
    t, f, _ = candidates if candidates is not None else pm1_candidates(quantized)
    if not 0 <= count <= t.numel():
        raise ConfigError(f"±1 pruning: count {count} must be in 0..{t.numel()} (codes with |q| = 1)")
    out = list(quantized)
    t, f = t[:count], f[:count]
    for i in torch.unique(t).tolist():
        q = quantized[i]
        codes = q.codes.clone()
        codes.view(-1)[f[t == i]] = 0
        out[i] = replace(q, codes=codes, meta=dict(q.meta, pm1_pruned=int((t == i).sum())))
    return out


def prune_pm1(quantized: Quantized, count: int) -> Quantized:
    """A copy of one tensor with its `count` smallest-s² ±1 codes zeroed."""
    return prune_pm1_many([quantized], count)[0]


@dataclass
class PruneResult:
    """Outcome of `prune_to_size`: the tensors, how many ±1 codes were zeroed, their total s²,
    the size the size function reported, and whether it is within the target."""

    quantized: list[Quantized]
    count: int
    cost: float
    size: int
    fits: bool


def prune_to_size(quantized: Sequence[Quantized], size_fn: Callable[[list[Quantized]], int],
                  target_bytes: int) -> PruneResult:
    """The fewest ±1 codes to zero (in `pm1_candidates` order) so that `size_fn` (compressed
    bytes of the tensors) is <= target_bytes, by binary search (assumes size falls as more are
    zeroed). If even all of them do not fit, returns everything pruned with fits=False."""
    cands = pm1_candidates(quantized)
    size0 = int(size_fn(list(quantized)))
    if size0 <= target_bytes:
        return PruneResult(list(quantized), 0, 0.0, size0, True)
    total = cands[0].numel()
    pruned_all = prune_pm1_many(quantized, total, cands)
    size_all = int(size_fn(pruned_all))
    if size_all > target_bytes:
        return PruneResult(pruned_all, total, float(cands[2].sum()), size_all, False)
    lo, hi, best, best_size = 0, total, pruned_all, size_all  # size(lo) > target >= size(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        trial = prune_pm1_many(quantized, mid, cands)
        size = int(size_fn(trial))
        if size <= target_bytes:
            hi, best, best_size = mid, trial, size
        else:
            lo = mid
    return PruneResult(best, hi, float(cands[2][:hi].sum()), best_size, True)
