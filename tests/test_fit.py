"""The budget fit on the bundled checkpoint with a reduced grid: the real counted bytes never
exceed the budget, the dry run predicts the real blob closely, pins hold, an infeasible budget
says the smallest size, and the measurement cache is reused and invalidated."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from analysis.commands import ship_modules
from analysis.fit_command import CANDIDATE_COLUMNS, CSV_COLUMNS, candidate_rows, prepare, tensor_rows, write_csv
from artifact.budget import count_submission, resolve_budget
from artifact.container import build_blob
from artifact.errors import ConfigError
from artifact.fit import counted_code_bytes, fit, reference_residual
from artifact.measure import Grid, pin_matches
from artifact.submission import write_submission

ROOT = Path(__file__).resolve().parent.parent
SMALL = Grid(bits=(2, 4, 6, 8), clips=("sdclip:8",), gptq=(False,), lqer_ranks=(0, 4), codecs=("ans",))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    torch.set_num_threads(2)
    cache = tmp_path_factory.mktemp("fit-cache")
    p = prepare(cache=cache, grid=SMALL, progress=False)
    p["cache"] = cache
    return p


def _code(p, budget):
    return counted_code_bytes(p["cfg"].to_dict(), {"seq_len": p["seq_len"]}, ship_modules(), budget)


def _fit(p, limit, **kw):
    budget = resolve_budget(limit)
    return fit(p["state"], p["measurement"], budget, _code(p, budget), p["hessians"], progress=False,
               calibration=p["calibration"], **kw), budget


def _smallest(p):
    m = p["measurement"]
    return sum(min(c["bytes"] for c in t.candidates.values()) for t in m.tensors.values())


def test_real_bytes_never_exceed_the_budget(prepared, tmp_path):
    p = prepared
    low = (_smallest(p) + _code(p, resolve_budget(10**9)) + 3000
           + reference_residual(p["state"], p["measurement"], p["hessians"], p["calibration"]))
    for i, limit in enumerate([low, low + 30_000, 360_000]):
        res, budget = _fit(prepared, limit)
        blob = build_blob(res.packed.entries)
        assert len(blob) + res.code_bytes == res.real_total <= limit
        if i == 2:  # the written folder, counted as verify counts it
            write_submission(tmp_path / "sub", res.packed.entries, prepared["cfg"].to_dict(),
                             {"seq_len": prepared["seq_len"]}, ship_modules())
            assert count_submission(tmp_path / "sub", budget).total == res.real_total <= limit


def test_dry_run_predicts_the_real_blob(prepared):
    dry, _ = _fit(prepared, 300_000, dry_run=True)
    assert dry.packed is None and dry.real_total is None
    res, _ = _fit(prepared, 300_000)
    first = res.rounds[0]
    assert first["predicted_total"] == dry.predicted_total  # the dry run is the first round's solve
    assert abs(first["real_total"] - first["predicted_total"]) <= 0.01 * 300_000


def test_pins_are_honoured(prepared):
    pins = {"tok_emb.weight": "int8", "blocks.0.mlp.fc.weight": "int2/r0"}
    res, _ = _fit(prepared, 330_000, pins=pins)
    assert res.choices["tok_emb.weight"].startswith("int8/")
    assert pin_matches("int2/r0", res.choices["blocks.0.mlp.fc.weight"])
    with pytest.raises(ConfigError, match="not a quantizable tensor"):
        _fit(prepared, 330_000, pins={"nope.weight": "int8"}, dry_run=True)


def test_infeasible_budget_states_the_smallest_size(prepared):
    with pytest.raises(ConfigError, match=r"infeasible: the smallest achievable total size is [\d,]+ bytes"):
        _fit(prepared, 50_000, dry_run=True)


def test_cache_reused_and_invalidated_by_the_checkpoint(prepared, tmp_path):
    m = prepared["measurement"]
    assert m.stats["measured"] > 0
    again = prepare(cache=prepared["cache"], grid=SMALL, progress=False)["measurement"]
    assert again.stats["measured"] == 0 and again.stats["cached"] == m.stats["measured"] + m.stats["cached"]
    assert {n: t.candidates for n, t in again.tensors.items()} == {n: t.candidates for n, t in m.tensors.items()}
    # a changed tensor changes the checkpoint hash: everything is measured again
    from train.bundled import BUNDLED_CHECKPOINT
    from train.checkpoint import load_checkpoint, save_checkpoint
    model, cfg, meta = load_checkpoint(BUNDLED_CHECKPOINT)
    with torch.no_grad():
        model.blocks[0].mlp.fc.weight.mul_(1.01)
    ckpt = save_checkpoint(tmp_path / "ckpt", model, cfg, meta)
    changed = prepare(ckpt, cache=prepared["cache"], grid=SMALL, progress=False)["measurement"]
    assert changed.stats["cached"] == 0 and changed.stats["measured"] == again.stats["cached"]


def test_cli_rejects_a_malformed_pin():
    proc = subprocess.run([sys.executable, "-m", "analysis.cli", "fit", "--pin", "tok_emb.weight", "--dry-run"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "expected NAME=LABEL" in proc.stderr


def test_candidates_csv_holds_every_candidate_and_marks_the_choice(prepared, tmp_path):
    from analysis.plots import rate_distortion_png
    from analysis.report import load_fit_tables

    res, budget = _fit(prepared, 330_000, dry_run=True)
    m = prepared["measurement"]
    rows = candidate_rows(m, res.choices)
    assert len(rows) == sum(len(t.candidates) for t in m.tensors.values())
    chosen = {r["name"]: r["label"] for r in rows if r["chosen"]}
    assert chosen == res.choices  # exactly the fit's choice, one per tensor
    write_csv(tmp_path / "tensors.csv", CSV_COLUMNS, tensor_rows(m, res.choices, budget.bytes))
    write_csv(tmp_path / "candidates.csv", CANDIDATE_COLUMNS, rows)
    table = load_fit_tables(tmp_path)["candidates"]
    assert list(table.columns[:len(CANDIDATE_COLUMNS)]) == list(CANDIDATE_COLUMNS)
    assert len(table) == len(rows) and set(table["name"]) == set(m.tensors)
    assert table["chosen"].astype(str).str.lower().eq("true").sum() == len(m.tensors)
    fc = table[table["name"] == "blocks.0.mlp.fc.weight"].set_index("label")
    t = m.tensors["blocks.0.mlp.fc.weight"]
    for label, fig in t.candidates.items():
        assert fc.loc[label, "bytes"] == fig["bytes"]
        assert fc.loc[label, "predicted_dloss"] == pytest.approx(t.predicted_dloss(label))
    assert fc["kind"].iloc[0] == "mlp.fc" and table["layer"].notna().any()
    assert rate_distortion_png(load_fit_tables(tmp_path)["tensors"], table)[:4] == b"\x89PNG"
