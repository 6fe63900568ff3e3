"""Pick one configuration per tensor so the artifact fits a byte budget at the lowest loss.

A multiple-choice knapsack: tensor i offers candidates (bytes, predicted loss increase, label);
choose one per tensor minimising Σ loss subject to Σ bytes + fixed ≤ budget. Stages, each keeping
the best feasible solution so far (so the budget is never exceeded):
1. per tensor, drop dominated candidates and take the lower convex hull in (bytes, loss);
2. Lagrangian relaxation: an exact sweep of λ over all hull slopes (hull upgrades taken in order
   of falling Δloss/Δbytes) gives a feasible solution, the multiplier and the LP lower bound;
3. greedy filling of the left-over bytes from any non-dominated candidate;
4. exact stage: a sparse DP over (bytes, loss) Pareto states, tensor by tensor, pruned by
   reduced costs and Lagrangian bounds at several λ. Bytes are never rounded or bucketed, so
   when it finishes the answer is proven optimal. Its work is capped by deterministic counts
   (never a clock), past which it continues as a beam search: same input, same output.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from artifact.runtime.errors import ConfigError


@dataclass(frozen=True)
class Candidate:
    """One configuration of one tensor: its exact bytes, predicted loss increase and label."""
    bytes: int
    loss: float
    label: Any = None


@dataclass(frozen=True)
class Solution:
    """The solver's answer. choice: index of the chosen candidate in each tensor's input list (input order of tensors);
    labels: the chosen candidates' labels; total_bytes: chosen bytes + fixed_bytes (≤ budget);
    total_loss: Σ chosen losses; lam: the Lagrange multiplier (loss per byte) at the budget;
    lower_bound: the LP/Lagrangian bound no solution can beat; optimal: True when proven optimal
    (to ~1e-9 relative); method: which stage produced the choice.
    """

    choice: tuple[int, ...]
    labels: tuple
    names: tuple[str, ...]
    budget: int
    total_bytes: int
    fixed_bytes: int
    total_loss: float
    lam: float
    lower_bound: float
    optimal: bool
    method: str

    @property
    def slack(self) -> int:  # budget bytes left unused
        return self.budget - self.total_bytes


@dataclass
class _Front:
    """A tensor's non-dominated candidates, sorted by bytes (loss strictly falling)."""
    name: str
    b: np.ndarray  # int64 bytes
    l: np.ndarray  # float64 loss
    idx: np.ndarray  # index in the caller's candidate list
    hull: np.ndarray  # positions (into b/l) of the lower convex hull


def _as_triple(c: Any, name: str, j: int) -> tuple[int, float, Any]:
    c = (c.bytes, c.loss, c.label) if isinstance(c, Candidate) else c
    try:
        b, l, *rest = c
    except (TypeError, ValueError):
        raise ConfigError(f"tensor {name}: candidate {j} is not (bytes, loss, label)") from None
    lab = rest[0] if rest else None
    try:
        bi, lf = int(b), float(l)
    except (TypeError, ValueError):
        raise ConfigError(f"tensor {name}: candidate {j} has bytes={b!r}, loss={l!r}") from None
    if bi != b or bi < 0 or isinstance(b, bool):
        raise ConfigError(f"tensor {name}: candidate {j} bytes must be a whole number ≥ 0, got {b!r}")
    if not math.isfinite(lf):
        raise ConfigError(f"tensor {name}: candidate {j} has a non-finite loss ({l!r})")
    return bi, lf, lab


def _pin_filter(pin: Any) -> Callable[[Any], bool]:
    """A pin is a predicate on labels, a collection of allowed labels, or one label."""
    if callable(pin):
        return pin
    if isinstance(pin, Collection) and not isinstance(pin, (str, bytes)):
        allowed = list(pin)
        return lambda lab: lab in allowed
    return lambda lab: lab == pin


def _resolve_pins(pins: Mapping | None, names: Sequence[str]) -> dict[int, Any]:
    out: dict[int, Any] = {}
    lookup = {n: i for i, n in enumerate(names)}
    for key, pin in (pins or {}).items():
        if isinstance(key, str) and key not in lookup:
            raise ConfigError(f"pin names unknown tensor {key!r}")
        if isinstance(key, str):
            out[lookup[key]] = pin
        elif isinstance(key, (int, np.integer)) and not isinstance(key, bool) and 0 <= key < len(names):
            out[int(key)] = pin
        else:
            raise ConfigError(f"pin key {key!r} is neither a tensor name nor an index < {len(names)}")
    return out


def _front(name: str, triples: list, pin: Any) -> _Front:
    """Filter by the pin, then keep the Pareto front and its lower convex hull."""
    keep = range(len(triples))
    if pin is not None:
        ok = _pin_filter(pin)
        keep = [j for j in keep if ok(triples[j][2])]
        if not keep:
            labels = sorted({repr(t[2]) for t in triples})[:8]
            raise ConfigError(f"tensor {name}: the pin allows none of its candidates "
                              f"(labels include {', '.join(labels)})")
    if not (keep := np.asarray(list(keep), dtype=np.int64)).size:
        raise ConfigError(f"tensor {name}: no candidates")
    b = np.array([triples[j][0] for j in keep], dtype=np.int64)
    l = np.array([triples[j][1] for j in keep], dtype=np.float64)
    order = np.lexsort((keep, l, b))  # bytes, then loss, then input order: ties are stable
    b, l, keep = b[order], l[order], keep[order]
    pareto = np.ones(b.size, dtype=bool)
    pareto[1:] = l[1:] < np.minimum.accumulate(l)[:-1]
    b, l, keep = b[pareto], l[pareto], keep[pareto]
    return _Front(name, b, l, keep, _lower_hull(b, l))


def _lower_hull(b: np.ndarray, l: np.ndarray) -> np.ndarray:
    """Monotone-chain lower hull of a Pareto front; collinear middle points are dropped."""
    hull: list[int] = []
    for p in range(b.size):
        while len(hull) >= 2:
            o, a = hull[-2], hull[-1]
            cross = (b[a] - b[o]) * (l[p] - l[o]) - (l[a] - l[o]) * (b[p] - b[o])
            if cross > 0:
                break
            hull.pop()
        hull.append(p)
    return np.asarray(hull, dtype=np.int64)


def _whole_bytes(v: Any, what: str) -> int:
    try:
        if not isinstance(v, bool) and int(v) == v and v >= 0:
            return int(v)
    except (TypeError, ValueError):
        pass
    raise ConfigError(f"{what} must be a whole number of bytes ≥ 0, got {v!r}")


def _fixed_total(fixed: int | Mapping[str, int]) -> int:
    items = fixed.items() if isinstance(fixed, Mapping) else [("fixed", fixed)]
    return sum(_whole_bytes(v, f"fixed cost {what!r}") for what, v in items)


def _lagrangian(fronts: list[_Front], cap: int):
    """Take hull upgrades in order of falling Δloss/Δbytes until the next one does not fit.
    Returns (position per tensor, λ, sorted hull slopes, index of the first that didn't fit)."""
    t_ids, steps, dbs, slopes = [], [], [], []
    for t, f in enumerate(fronts):
        h = f.hull
        if h.size < 2:
            continue
        db, dl = np.diff(f.b[h]), np.diff(f.l[h])
        # enforce falling slopes per tensor so rounding can never reorder a tensor's steps
        slopes.append(np.minimum.accumulate(-dl / db))
        t_ids.append(np.full(db.size, t)); steps.append(np.arange(db.size)); dbs.append(db)
    pos = [0] * len(fronts)
    if not t_ids:
        return pos, 0.0, np.zeros(0), 0
    t_ids, steps = np.concatenate(t_ids), np.concatenate(steps)
    dbs, slopes = np.concatenate(dbs), np.concatenate(slopes)
    order = np.lexsort((steps, t_ids, -slopes))
    slack = cap - sum(int(f.b[0]) for f in fronts)
    k = int(np.searchsorted(np.cumsum(dbs[order]), slack, side="right"))
    for t, n in zip(*np.unique(t_ids[order[:k]], return_counts=True)):
        pos[t] = int(fronts[t].hull[n])
    lam = float(slopes[order[k]]) if k < order.size else 0.0
    return pos, lam, slopes[order], k


def _greedy_fill(fronts: list[_Front], pos: list[int], cap: int, by_ratio: bool) -> list[int]:
    """Spend left-over bytes on the best upgrades (by Δloss/Δbytes, or by Δloss) that fit."""
    pos = list(pos)
    tid = np.concatenate([np.full(f.b.size, t) for t, f in enumerate(fronts)])
    fb = np.concatenate([f.b for f in fronts])
    fl = np.concatenate([f.l for f in fronts])
    start = np.cumsum([0] + [f.b.size for f in fronts])
    while True:
        cur_b = np.array([f.b[p] for f, p in zip(fronts, pos)])
        cur_l = np.array([f.l[p] for f, p in zip(fronts, pos)])
        db, dl = fb - cur_b[tid], cur_l[tid] - fl
        ok = (db > 0) & (db <= cap - int(cur_b.sum())) & (dl > 0)
        if not ok.any():
            return pos
        score = np.where(ok, dl / np.where(ok, db, 1) if by_ratio else dl, -np.inf)
        g = int(np.argmax(score))
        pos[tid[g]] = g - int(start[tid[g]])


def _exact(fronts, lam, lam_grid, cap, best_loss, tol, max_states, max_work, beam):
    """Sparse DP over (bytes, loss) Pareto states looking for a solution beating best_loss.

    Exhaustive until max_work or max_states is passed, then a beam search keeping the `beam`
    states with the lowest bound. Returns (positions of a better solution or None, exhaustive);
    exhaustive=True proves the result (or best_loss, given None) optimal.
    """
    # reduced costs at λ: a candidate whose reduced cost alone closes the gap can't do better
    minval = [float(np.min(f.l + lam * f.b)) for f in fronts]
    gap = best_loss - (math.fsum(minval) - lam * cap)
    surv = [np.flatnonzero(f.l + lam * f.b - mv < gap - tol) for f, mv in zip(fronts, minval)]
    if any(s.size == 0 for s in surv):
        return None, True
    free = sorted((t for t in range(len(fronts)) if surv[t].size > 1), key=lambda t: (surv[t].size, t))
    base_b = sum(int(fronts[t].b[surv[t][0]]) for t in range(len(fronts)) if surv[t].size == 1)
    base_l = math.fsum(float(fronts[t].l[surv[t][0]]) for t in range(len(fronts)) if surv[t].size == 1)
    lams = np.asarray(lam_grid)[:, None]
    at_lam = int(np.argmin(np.abs(lams[:, 0] - lam)))
    # suffix sums over the free tensors still to place: least bytes and min(loss + λ·bytes)
    n = len(free)
    suf_b = np.zeros(n + 1, dtype=np.int64)
    suf_v = np.zeros((n + 1, lams.shape[0]))
    for k in range(n - 1, -1, -1):
        f, s = fronts[free[k]], surv[free[k]]
        suf_b[k] = suf_b[k + 1] + int(f.b[s].min())
        suf_v[k] = suf_v[k + 1] + np.min(f.l[s][None, :] + lams * f.b[s][None, :], axis=1)
    S_b, S_l = np.array([base_b], dtype=np.int64), np.array([base_l])
    trail, work, exhaustive = [], 0, True
    for k, t in enumerate(free):
        f, s = fronts[t], surv[t]
        if exhaustive and (work + S_b.size * s.size > max_work or S_b.size > max_states):
            exhaustive = False  # from here on a beam search: maybe a better answer, no proof
        if not exhaustive and S_b.size > max(1, beam):
            bound = S_l + np.max(lams * (S_b - cap)[None, :] + suf_v[k][:, None], axis=0)
            keep = np.sort(np.argsort(bound, kind="stable")[:max(1, beam)])
            S_b, S_l = S_b[keep], S_l[keep]
            trail[-1] = tuple(a[keep] for a in trail[-1])
        work += S_b.size * s.size
        # feasibility and the cheap single-λ bound on the product, before anything is copied
        nb2 = S_b[:, None] + f.b[s][None, :]
        nl2 = S_l[:, None] + f.l[s][None, :]
        ok = nb2 <= cap - suf_b[k + 1]
        ok &= nl2 + lam * nb2 < best_loss - tol + lam * cap - suf_v[k + 1][at_lam]
        flat = np.flatnonzero(ok)
        work += 4 * flat.size  # sorting the survivors costs more per element
        nb, nl = nb2.ravel()[flat], nl2.ravel()[flat]
        parent, pick = flat // s.size, s[flat % s.size]
        order = np.lexsort((nl, nb))
        nb, nl, parent, pick = nb[order], nl[order], parent[order], pick[order]
        if nb.size:
            front = np.ones(nb.size, dtype=bool)
            front[1:] = nl[1:] < np.minimum.accumulate(nl)[:-1]
            work += nb.size * lams.shape[0]
            bound = nl + np.max(lams * (nb - cap)[None, :] + suf_v[k + 1][:, None], axis=0)
            front &= bound < best_loss - tol
            nb, nl, parent, pick = nb[front], nl[front], parent[front], pick[front]
        if nb.size == 0:
            return None, exhaustive
        trail.append((parent, pick))
        S_b, S_l = nb, nl
    best = int(np.argmin(S_l))
    if not S_l[best] < best_loss - tol:
        return None, exhaustive
    pos = [int(s[0]) for s in surv]
    for k in range(n - 1, -1, -1):
        parent, pick = trail[k]
        pos[free[k]] = int(pick[best])
        best = int(parent[best])
    return pos, exhaustive


class Infeasible(ConfigError):
    """No choice of candidates fits the budget; `least` is the smallest total they can make."""

    def __init__(self, message: str, least: int):
        super().__init__(message)
        self.least = least


def smallest_total_bytes(tensors, fixed: int | Mapping[str, int] = 0, pins: Mapping | None = None,
                         names: Sequence[str] | None = None) -> int:
    """The least total size any choice can reach (Σ cheapest allowed candidate + fixed)."""
    fronts, _ = _prepare(tensors, pins, names)
    return sum(int(f.b[0]) for f in fronts) + _fixed_total(fixed)


def _prepare(tensors, pins, names):
    if isinstance(tensors, Mapping):
        names = list(tensors) if names is None else names
        tensors = list(tensors.values())
    names = [str(i) for i in range(len(tensors))] if names is None else [str(n) for n in names]
    if not tensors:
        raise ConfigError("no tensors to fit")
    if len(names) != len(tensors):
        raise ConfigError(f"{len(names)} names given for {len(tensors)} tensors")
    pin_of = _resolve_pins(pins, names)
    fronts, labels = [], []
    for i, (name, cands) in enumerate(zip(names, tensors)):
        try:
            triples = [_as_triple(c, name, j) for j, c in enumerate(cands)]
        except TypeError:
            raise ConfigError(f"tensor {name}: candidates must be a list, got {cands!r}") from None
        fronts.append(_front(name, triples, pin_of.get(i)))
        labels.append([t[2] for t in triples])
    return fronts, labels


def solve(tensors: Sequence[Sequence] | Mapping[str, Sequence], budget: int,
          fixed: int | Mapping[str, int] = 0, pins: Mapping | None = None,
          names: Sequence[str] | None = None, exact: bool = True,
          max_states: int = 200_000, max_work: int = 3_000_000, beam: int = 64) -> Solution:
    """Choose one candidate per tensor minimising Σ loss with Σ bytes + fixed ≤ budget.

    tensors: per tensor a list of candidates, each a `Candidate` or a (bytes, loss[, label])
      tuple; or a mapping name → candidates (names then come from its keys).
    budget: total byte cap; fixed: bytes always spent (an int or a name → bytes mapping).
    pins: {tensor index or name: predicate(label) -> bool, or a collection of allowed labels,
      or a single allowed label}; only those candidates are considered for that tensor.
    exact: run the exact stage. max_states / max_work cap its exhaustive part (deterministic work
      counts, no clocks); past them it goes on as a beam search of width `beam`, unproven.
    Raises ConfigError for malformed input or a pin allowing nothing, and `Infeasible` (a
    ConfigError) for a budget below the smallest total of the candidates (which it states).
    """
    fronts, labels = _prepare(tensors, pins, names)
    budget = _whole_bytes(budget, "budget")
    fixed_b = _fixed_total(fixed)
    cap = budget - fixed_b  # bytes available to the tensors
    least = sum(int(f.b[0]) for f in fronts)
    if least > cap:
        raise Infeasible(
            f"budget of {budget:,} bytes is infeasible: the smallest total of these candidates is "
            f"{least + fixed_b:,} bytes ({least:,} for {len(fronts)} tensors at their smallest"
            f"{' allowed' if pins else ''} configuration + {fixed_b:,} fixed)", least + fixed_b)
    pos, lam, slopes, split = _lagrangian(fronts, cap)
    lower = math.fsum(float(np.min(f.l + lam * f.b)) for f in fronts) - lam * cap
    loss_of = lambda p: math.fsum(float(f.l[i]) for f, i in zip(fronts, p))
    best, method = pos, "lagrangian"
    for by_ratio in (True, False):
        cand = _greedy_fill(fronts, pos, cap, by_ratio)
        if loss_of(cand) < loss_of(best):
            best, method = cand, "greedy"
    scale = 1.0 + math.fsum(float(np.max(np.abs(f.l))) for f in fronts)
    tol = 1e-9 * scale
    optimal = loss_of(best) - lower <= tol
    if exact and not optimal:
        # λ values at and around the multiplier tighten the bound as states use up bytes
        near = slopes[max(0, split - 6): split + 6] if slopes.size else slopes
        grid = np.unique(np.concatenate([[0.0, lam], near]))
        better, optimal = _exact(fronts, lam, grid, cap, loss_of(best), tol, max_states, max_work, beam)
        if better is not None:
            best, method = better, "exact" if optimal else "beam"
        optimal = optimal or loss_of(best) - lower <= tol
    chosen_b = sum(int(f.b[i]) for f, i in zip(fronts, best))
    if chosen_b > cap:  # cannot happen: every stage only keeps choices that fit
        raise AssertionError(f"solver bug: {chosen_b} bytes chosen for a cap of {cap}")
    choice = tuple(int(f.idx[i]) for f, i in zip(fronts, best))
    return Solution(
        choice=choice, labels=tuple(labels[t][j] for t, j in enumerate(choice)),
        names=tuple(f.name for f in fronts), budget=budget, total_bytes=chosen_b + fixed_b,
        fixed_bytes=fixed_b, total_loss=loss_of(best), lam=lam, lower_bound=lower,
        optimal=bool(optimal), method=method)


def random_instance(n_tensors: int, n_candidates: int, seed: int = 0) -> list[list[Candidate]]:
    """Quantization-like candidates: bytes ≈ params·bits/8 × codec gain, loss ≈ s·4^-bits × noise."""
    rng = np.random.default_rng(seed)
    out = []
    for t in range(n_tensors):
        params, sens = int(rng.integers(20_000, 3_000_000)), float(rng.lognormal(0, 1))
        bits = rng.integers(2, 9, n_candidates)
        size = params * bits / 8 * rng.uniform(0.55, 1.0, n_candidates) + rng.integers(0, 4096, n_candidates)
        loss = sens * 4.0 ** -bits * rng.lognormal(0, 0.5, n_candidates)
        out.append([Candidate(int(b), float(l), (t, j)) for j, (b, l) in enumerate(zip(size, loss))])
    return out


def bench_solve(n_tensors: int = 100, n_candidates: int = 500, seed: int = 0,
                fractions: Sequence[float] = (0.05, 0.2, 0.5), log: Callable[[str], None] = print) -> float:
    """Time `solve` on a random instance at budgets a fraction of the way from the smallest to the
    largest size; `log`s one line per budget and returns the slowest seconds."""
    inst = random_instance(n_tensors, n_candidates, seed)
    lo = sum(min(c.bytes for c in cs) for cs in inst)
    hi = sum(max(c.bytes for c in cs) for cs in inst)
    worst = 0.0
    for frac in fractions:
        t0 = time.perf_counter()
        sol = solve(inst, int(lo + frac * (hi - lo)) + 50_000, fixed=50_000)
        worst = max(worst, time.perf_counter() - t0)
        log(f"solve {n_tensors} tensors x {n_candidates} candidates, budget at {frac:.0%}: "
              f"{time.perf_counter() - t0:.3f} s (optimal={sol.optimal}, method={sol.method}, "
              f"gap={sol.total_loss - sol.lower_bound:.3g}, slack={sol.slack} bytes)")
    return worst
