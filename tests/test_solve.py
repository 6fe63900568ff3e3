"""The budget solver (multiple-choice knapsack): optimal against brute force and an exact dense DP,
never over budget, monotone in the budget, pins, fixed costs, infeasible budgets, determinism."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from artifact.runtime.errors import ConfigError, GolfError
from artifact.solve import Candidate, random_instance, smallest_total_bytes, solve


def _brute_force(inst, budget, fixed=0):
    """Least total loss over every combination that fits, or None."""
    best = None
    for combo in itertools.product(*inst):
        if sum(c[0] for c in combo) + fixed <= budget:
            loss = math.fsum(c[1] for c in combo)
            best = loss if best is None else min(best, loss)
    return best


def _dense_dp(inst, cap):
    """Exact reference for small integer bytes: dp[c] = least loss using at most c bytes."""
    dp = np.zeros(cap + 1)
    for cands in inst:
        new = np.full(cap + 1, np.inf)
        for b, l, *_ in cands:
            if b <= cap:
                new[b:] = np.minimum(new[b:], dp[: cap + 1 - b] + l)
        dp = new
    return dp[cap]


def _check_consistent(sol, inst, budget, fixed=0):
    chosen = [inst[t][j] for t, j in enumerate(sol.choice)]
    assert sol.total_bytes == sum(c[0] for c in chosen) + fixed
    assert sol.total_bytes <= budget
    assert sol.total_loss == pytest.approx(math.fsum(c[1] for c in chosen), rel=1e-12, abs=1e-12)
    assert sol.labels == tuple(c[2] if len(c) > 2 else None for c in chosen)


def _small_instance(rng):
    n = int(rng.integers(2, 6))
    inst = []
    for t in range(n):
        k = int(rng.integers(2, 7))
        b = rng.integers(0, 25, k)
        loss = rng.random(k)
        if rng.random() < 0.3:  # rounded losses make ties and collinear hull points
            loss = np.round(loss * 4) / 4
        inst.append([(int(b[j]), float(loss[j]), f"t{t}c{j}") for j in range(k)])
    return inst


def test_optimal_against_brute_force_on_small_instances():
    rng = np.random.default_rng(0)
    solved = 0
    for _ in range(150):
        inst = _small_instance(rng)
        fixed = int(rng.integers(0, 5))
        # every achievable total is a budget that is exactly tight for some combination
        totals = sorted({sum(c[0] for c in combo) + fixed for combo in itertools.product(*inst)})
        budgets = totals if len(totals) <= 25 else list(rng.choice(totals, 25, replace=False))
        for budget in budgets + [totals[-1] + 3]:
            budget = int(budget)
            sol = solve(inst, budget, fixed=fixed)
            _check_consistent(sol, inst, budget, fixed)
            assert sol.optimal
            assert sol.total_loss == pytest.approx(_brute_force(inst, budget, fixed), rel=1e-9, abs=1e-9)
            assert sol.lower_bound <= sol.total_loss + 1e-9
            heuristic = solve(inst, budget, fixed=fixed, exact=False)
            _check_consistent(heuristic, inst, budget, fixed)
            assert heuristic.total_loss >= sol.total_loss - 1e-9
            solved += 1
    assert solved > 1000


def test_optimal_against_dense_dp_on_medium_instances():
    rng = np.random.default_rng(1)
    for trial in range(12):
        inst = [[(int(rng.integers(1, 60)), float(rng.random()), j) for j in range(25)]
                for _ in range(15)]
        lo, hi = sum(min(c[0] for c in cs) for cs in inst), sum(max(c[0] for c in cs) for cs in inst)
        for budget in rng.integers(lo, hi + 1, 6):
            sol = solve(inst, int(budget))
            _check_consistent(sol, inst, int(budget))
            if sol.optimal:
                assert sol.total_loss == pytest.approx(_dense_dp(inst, int(budget)), rel=1e-9, abs=1e-9)
            else:  # only allowed when the exact stage hit its work cap
                assert sol.total_loss >= _dense_dp(inst, int(budget)) - 1e-9


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_never_over_budget_and_monotone_in_budget(seed):
    inst = random_instance(40, 120, seed=seed)
    inst = [[(c.bytes, c.loss, c.label) for c in cs] for cs in inst]
    rng = np.random.default_rng(seed)
    fixed = 12_345
    least = smallest_total_bytes(inst, fixed=fixed)
    most = sum(max(c[0] for c in cs) for cs in inst) + fixed
    budgets = sorted(int(b) for b in rng.integers(least, most + 1000, 30)) + [least]
    budgets.sort()
    previous = None
    for budget in budgets:
        sol = solve(inst, budget, fixed=fixed)
        _check_consistent(sol, inst, budget, fixed)
        assert sol.optimal
        if previous is not None:
            assert sol.total_loss <= previous + 1e-12
        previous = sol.total_loss
    # with a cap too small for the exact stage to finish, the answer is still within budget
    for budget in budgets[::5]:
        sol = solve(inst, budget, fixed=fixed, max_work=10)
        _check_consistent(sol, inst, budget, fixed)


def test_pins_are_honoured():
    rng = np.random.default_rng(3)
    names = [f"blocks.{i}.w" for i in range(6)]
    labels = ["int8", "int6", "int4", "int2"]
    inst = {n: [Candidate(int(1000 * (b + 1) + rng.integers(0, 50)), float(4.0 ** -b * rng.random()), lab)
                for b, lab in zip((8, 6, 4, 2)[::-1], labels[::-1])] for n in names}
    budget = smallest_total_bytes(inst) + 14_000
    free = solve(inst, budget)
    pinned = solve(inst, budget, pins={"blocks.0.w": "int8", 1: {"int2", "int4"},
                                       "blocks.2.w": lambda lab: lab.startswith("int6")})
    assert pinned.labels[0] == "int8" and pinned.labels[1] in {"int2", "int4"}
    assert pinned.labels[2] == "int6"
    assert pinned.names == tuple(names) and pinned.total_bytes <= budget
    assert pinned.total_loss >= free.total_loss - 1e-12
    # the pinned optimum is the brute-force optimum over the allowed candidates only
    allowed = [[(c.bytes, c.loss, c.label) for c in inst[n]] for n in names]
    allowed[0] = [c for c in allowed[0] if c[2] == "int8"]
    allowed[1] = [c for c in allowed[1] if c[2] in {"int2", "int4"}]
    allowed[2] = [c for c in allowed[2] if c[2] == "int6"]
    assert pinned.total_loss == pytest.approx(_brute_force(allowed, budget), rel=1e-9)
    # choice indices point into the caller's full lists
    assert inst["blocks.0.w"][pinned.choice[0]].label == "int8"


def test_bad_pins_are_clear_errors():
    inst = {"a": [(10, 1.0, "int8"), (5, 2.0, "int4")], "b": [(3, 0.5, "int8")]}
    with pytest.raises(ConfigError, match="tensor a: the pin allows none"):
        solve(inst, 100, pins={"a": "fp16"})
    with pytest.raises(ConfigError, match="unknown tensor 'c'"):
        solve(inst, 100, pins={"c": "int8"})
    with pytest.raises(ConfigError, match="neither a tensor name nor an index"):
        solve(inst, 100, pins={7: "int8"})


def test_infeasible_budget_names_smallest_size():
    inst = [[(100, 0.0, "a"), (40, 1.0, "b")], [(30, 0.0, "c"), (25, 0.3, "d")]]
    fixed = {"container": 7, "decoder": 1000}
    least = smallest_total_bytes(inst, fixed=fixed)
    assert least == 40 + 25 + 1007
    sol = solve(inst, least, fixed=fixed)  # exactly tight
    assert sol.total_bytes == least and sol.choice == (1, 1) and sol.slack == 0
    with pytest.raises(ConfigError, match="smallest total of these candidates is 1,072 bytes"):
        solve(inst, least - 1, fixed=fixed)
    # pins raise the floor, and the error says so
    with pytest.raises(GolfError, match="smallest total of these candidates is 1,132 bytes"):
        solve(inst, least, fixed=fixed, pins={0: "a", 1: {"d"}})


def test_fixed_costs_are_counted():
    inst = random_instance(10, 40, seed=5)
    budget = smallest_total_bytes(inst) + 200_000
    with_fixed = solve(inst, budget, fixed={"code": 50_000, "container": 123})
    shifted = solve(inst, budget - 50_123)
    assert with_fixed.fixed_bytes == 50_123
    assert with_fixed.total_bytes == shifted.total_bytes + 50_123 <= budget
    assert with_fixed.choice == shifted.choice
    assert with_fixed.total_loss >= solve(inst, budget).total_loss


def test_deterministic_and_ties_resolved_to_first_listed():
    inst = random_instance(30, 80, seed=9)
    budget = smallest_total_bytes(inst) + 3_000_000
    assert solve(inst, budget) == solve(inst, budget)
    # identical candidates: the first listed one wins, every time
    twins = [[(10, 1.0, "x0"), (20, 0.5, "x1"), (20, 0.5, "x2")], [(5, 0.2, "y0"), (5, 0.2, "y1")]]
    for _ in range(3):
        sol = solve(twins, 25)
        assert sol.labels == ("x1", "y0") and sol.optimal


def test_slack_budget_takes_best_everywhere_with_zero_multiplier():
    inst = [[(1, 3.0), (9, 1.0), (4, 2.0)], [(2, 1.0), (3, 0.0)]]
    sol = solve(inst, 1_000)
    assert sol.choice == (1, 1) and sol.lam == 0.0 and sol.optimal
    assert sol.total_loss == sol.lower_bound == 1.0


@pytest.mark.parametrize("bad, message", [
    ([[(10, float("nan"), "a")]], "non-finite loss"),
    ([[(-1, 0.0, "a")]], "whole number"),
    ([[(1.5, 0.0, "a")]], "whole number"),
    ([[]], "no candidates"),
    ([[("ten", 0.0)]], "bytes='ten'"),
    ([[5]], "not \\(bytes, loss, label\\)"),
])
def test_malformed_input_is_a_config_error(bad, message):
    with pytest.raises(ConfigError, match=message):
        solve(bad, 100)


def test_beam_search_past_the_work_cap_improves_on_greedy_without_claiming_a_proof():
    rng = np.random.default_rng(2)
    improved = 0
    for _ in range(6):
        # near-collinear candidates: a tiny Lagrangian gap per candidate, so many states survive
        inst = []
        for _ in range(25):
            b = rng.integers(100, 2000, 40)
            inst.append([(int(x), float(y)) for x, y in zip(b, (2000 - b) * 1e-3 + rng.random(40) * 0.3)])
        lo, hi = sum(min(c[0] for c in cs) for cs in inst), sum(max(c[0] for c in cs) for cs in inst)
        budget = int(lo + 0.4 * (hi - lo))
        full = solve(inst, budget, max_work=10**8, max_states=10**7)
        capped = solve(inst, budget, max_work=20_000)
        greedy = solve(inst, budget, exact=False)
        _check_consistent(capped, inst, budget)
        assert full.optimal and full.total_loss <= capped.total_loss + 1e-12
        assert capped.total_loss <= greedy.total_loss
        if capped.method == "beam":
            assert not capped.optimal
            improved += capped.total_loss < greedy.total_loss
    assert improved >= 3


def test_named_tensors_from_a_mapping():
    inst = {"tok_emb.weight": [(800, 0.0, "int8"), (500, 0.4, "int6")],
            "blocks.0.attn.c_q.weight": [(300, 0.1, "int6"), (200, 0.3, "int4")]}
    sol = solve(inst, 1_000 + 64, fixed=64)
    assert sol.names == tuple(inst) and sol.labels == ("int8", "int4")
    assert sol.total_bytes == 1_064 and sol.total_loss == pytest.approx(0.3) and sol.optimal
    with pytest.raises(ConfigError, match="no tensors"):
        solve({}, 100)
    with pytest.raises(ConfigError, match="3 names given for 2 tensors"):
        solve(list(inst.values()), 2_000, names=["a", "b", "c"])
