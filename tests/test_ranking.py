"""The rank check: the Spearman helper on hand-checked inputs (ties included), the random
configurations (deterministic, one LQER rank each), and a real end-to-end check on the bundled
checkpoint with a reduced grid and a short val prefix."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from analysis.ranking import average_ranks, local_configs, random_configs, ranking_check, spearman
from artifact.runtime.errors import DataError
from artifact.measure import Choice, Grid
from artifact.pipeline import prepare
from train.bundled import BUNDLED_CHECKPOINT, BUNDLED_DATA

ROOT = Path(__file__).resolve().parent.parent
SMALL = Grid(bits=(2, 4, 8), clips=("sdclip:8",), gptq=(False,), lqer_ranks=(0, 4), codecs=("ans",))


def test_average_ranks_share_ties():
    assert average_ranks([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]
    assert average_ranks([7, 7, 7]).tolist() == [2.0, 2.0, 2.0]


def test_spearman_hand_checked():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [9, 4, 1, 0]) == pytest.approx(-1.0)
    # monotone but not linear: rank correlation is still exactly 1
    assert spearman([1, 2, 3, 4, 5], [1, 8, 27, 64, 1e6]) == pytest.approx(1.0)
    # no ties: 1 - 6 Σd² / (n(n²-1)); ranks y = 1,3,2,5,4 → Σd² = 4 → 1 - 24/120 = 0.8
    assert spearman([1, 2, 3, 4, 5], [1, 3, 2, 5, 4]) == pytest.approx(0.8)
    # ties: x ranks 1.5,1.5,3,4; y ranks 1,2,3,4 → Pearson of those = 0.948683 (= 3/sqrt(10))
    assert spearman([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(3 / math.sqrt(10))
    with pytest.raises(DataError, match="constant"):
        spearman([1, 2, 3], [5, 5, 5])
    with pytest.raises(DataError, match="equal length"):
        spearman([1, 2, 3], [1, 2])


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("rank-cache")


@pytest.fixture(scope="module")
def check(cache):
    torch.set_num_threads(2)
    return ranking_check(BUNDLED_CHECKPOINT, BUNDLED_DATA, cache, n_configs=4, seed=3, max_tokens=4096, grid=SMALL)


def test_ranking_check_on_the_bundled_checkpoint(check):
    assert len(check["pairs"]) == 4 and check["n_configs"] == 4
    assert math.isfinite(check["spearman"]) and -1.0 <= check["spearman"] <= 1.0
    for q in check["pairs"]:
        assert math.isfinite(q["predicted_dloss"]) and math.isfinite(q["real_dloss"])
        assert q["predicted_dloss"] > 0
    assert check["val_tokens"] == 4096 and math.isfinite(check["base_loss"])


def test_random_configs_are_deterministic_and_valid(check, cache):
    m = prepare(BUNDLED_CHECKPOINT, BUNDLED_DATA, cache, SMALL)["measurement"]  # from the check's cache
    a, b = random_configs(m, 6, seed=1), random_configs(m, 6, seed=1)
    assert a == b and a != random_configs(m, 6, seed=2)
    for config in a:
        assert list(config) == list(m.tensors)
        assert all(label in m.tensors[n].candidates for n, label in config.items())
        assert len({Choice.parse(l).lqer_rank for l in config.values()} - {0}) <= 1
    # uniform over candidates: across many draws every bit width turns up
    bits = {Choice.parse(l).bits for c in random_configs(m, 20, seed=0) for l in c.values()}
    assert bits == set(SMALL.bits)


def test_local_configs_stay_near_the_solvers_choice(check, cache):
    from artifact.solve import solve

    m = prepare(BUNDLED_CHECKPOINT, BUNDLED_DATA, cache, SMALL)["measurement"]
    names, cands = m.solver_input()
    budget = sum(sorted(b for b, _, _ in c)[len(c) // 2] for c in cands)  # a mid-range size
    center = dict(zip(names, solve(dict(zip(names, cands)), budget).labels))
    configs = local_configs(m, budget, 8, seed=4)
    assert configs == local_configs(m, budget, 8, seed=4) and configs != local_configs(m, budget, 8, seed=5)
    moved = 0
    for config in configs:
        for name, label in config.items():
            options = sorted(m.tensors[name].candidates.items(), key=lambda kv: kv[1]["bytes"])
            at = m.tensors[name].candidates[center[name]]["bytes"]
            nearest = sorted(options, key=lambda kv: (abs(kv[1]["bytes"] - at), kv[0]))[:6]
            assert label in {k for k, _ in nearest}
            moved += label != center[name]
    assert 0 < moved < 8 * len(names)  # some tensors move, not all


def test_cli_rejects_too_few_configs():
    proc = subprocess.run([sys.executable, "-m", "analysis.cli", "rank-check", "-n", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "at least 2 configurations" in proc.stderr
