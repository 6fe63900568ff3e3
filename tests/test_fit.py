"""The budget fit on the bundled checkpoint with a reduced grid: the real counted bytes never
exceed the budget, the dry run predicts the real blob closely, pins hold, an infeasible budget
says the smallest size, and the measurement cache is reused and invalidated."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from analysis.fit_tables import CANDIDATE_COLUMNS, CSV_COLUMNS, candidate_rows, tensor_rows, write_csv
from artifact.budget import count_submission, resolve_budget
from artifact.container import build_blob
from artifact.runtime.errors import ArtifactError, ConfigError
from artifact.fit import counted_code_bytes, fit, reference_residual
from artifact.measure import Grid, pin_matches
from artifact.pipeline import prepare, probe_loss_fn
from artifact.runtime.checkpoint import load_checkpoint, save_checkpoint
from artifact.submission import write_submission
from train.bundled import BUNDLED_CHECKPOINT, BUNDLED_DATA

ROOT = Path(__file__).resolve().parent.parent
SMALL = Grid(bits=(2, 4, 6, 8), clips=("sdclip:8",), gptq=(False,), lqer_ranks=(0, 4), codecs=("ans",))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    torch.set_num_threads(2)
    cache = tmp_path_factory.mktemp("fit-cache")
    p = prepare(BUNDLED_CHECKPOINT, BUNDLED_DATA, cache, SMALL)
    p["cache"] = cache
    return p


def _code(p, budget):
    return counted_code_bytes(p["cfg"].to_dict(), {"seq_len": p["seq_len"]}, budget)


def _fit(p, limit, **kw):
    budget = resolve_budget(limit)
    return fit(p["state"], p["measurement"], budget, _code(p, budget), p["hessians"],
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
        if i == 2:  # packed tensor by tensor, the blob is the whole recipe's pack
            from artifact.pack import pack_state_dict
            whole = pack_state_dict(p["state"], res.recipe, p["hessians"], predict_sizes=False)
            assert build_blob(whole.entries) == blob
            # the written folder, counted as verify counts it
            write_submission(tmp_path / "sub", res.packed.entries, prepared["cfg"].to_dict(),
                             {"seq_len": prepared["seq_len"]})
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


def test_infeasible_budget_states_a_size_the_fit_then_reaches(prepared):
    # The figure is a real pack, not a prediction: a fit at that budget succeeds within it.
    with pytest.raises(ArtifactError, match=r"infeasible: every tensor at its smallest candidate packs to "
                                            r"[\d,]+ bytes as written") as info:
        _fit(prepared, 50_000, dry_run=True)
    least = int(re.search(r"packs to ([\d,]+) bytes", str(info.value))[1].replace(",", ""))
    res, _ = _fit(prepared, least)
    assert res.real_total <= least


def test_cache_reused_and_invalidated_by_the_checkpoint(prepared, tmp_path):
    m = prepared["measurement"]
    assert m.stats["measured"] > 0
    again = prepare(BUNDLED_CHECKPOINT, BUNDLED_DATA, prepared["cache"], SMALL)["measurement"]
    assert again.stats["measured"] == 0 and again.stats["cached"] == m.stats["measured"] + m.stats["cached"]
    assert {n: t.candidates for n, t in again.tensors.items()} == {n: t.candidates for n, t in m.tensors.items()}
    # a changed tensor changes the checkpoint hash: everything is measured again
    model, cfg, meta = load_checkpoint(BUNDLED_CHECKPOINT)
    with torch.no_grad():
        model.blocks[0].mlp.fc.weight.mul_(1.01)
    ckpt = save_checkpoint(tmp_path / "ckpt", model, cfg, meta)
    changed = prepare(ckpt, BUNDLED_DATA, prepared["cache"], SMALL)["measurement"]
    assert changed.stats["cached"] == 0 and changed.stats["measured"] == again.stats["cached"]


def test_cli_rejects_a_malformed_pin():
    proc = subprocess.run([sys.executable, "-m", "analysis.cli", "fit", "--pin", "tok_emb.weight", "--dry-run"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "expected NAME=LABEL" in proc.stderr


def test_candidates_csv_holds_every_candidate_and_marks_the_choice(prepared, tmp_path):
    from analysis.plots import png_bytes, rate_distortion_figure
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
    assert png_bytes(rate_distortion_figure(load_fit_tables(tmp_path)["tensors"], table))[:4] == b"\x89PNG"


def test_a_real_fit_report_says_what_verify_says(prepared, tmp_path):
    """`golf fit`'s own path on a val prefix: pack, write, verify in a fresh process, fit.json, a
    recipe beside the fit at its bytes, the report. The report's total and headroom are the very
    figures verify counted, to the byte; the per-tensor bytes and the container are the blob."""
    from analysis.cmd_fit import fit_record, write_fit_folder
    from analysis.compare import compare_at_recipe_bytes
    from analysis.report import load_fit_tables
    from artifact.container import inspect
    from artifact.pipeline import fit_checkpoint

    budget, out, tokens = resolve_budget(330_000), tmp_path / "fit", 2048
    fr = fit_checkpoint(prepared, budget, out, BUNDLED_DATA, max_tokens=tokens)
    result = fit_record(prepared, fr, budget, BUNDLED_DATA, None, tokens)
    result["compare"] = compare_at_recipe_bytes(prepared, ["baseline-int8-zlib"], BUNDLED_DATA, budget, tokens)
    write_fit_folder(out, result, candidate_rows(prepared["measurement"], fr.result.choices))
    tables = load_fit_tables(out)
    head = dict(zip(tables["headline"]["figure"], tables["headline"]["value"]))
    v = fr.verify
    assert head["headroom_bytes"] == v.count.headroom == result["verify"]["bytes"]["headroom"] == 330_000 - fr.real_total
    assert head["total_bytes"] == v.count.total == fr.real_total and head["verdict"] == v.verdict == "FITS"
    assert head["val_bpb"] == v.val_bpb and head["val_tokens"] == v.run["tokens"]
    blob = (out / "submission" / "model.blob").stat().st_size
    parts = dict(zip(tables["breakdown"]["part"], tables["breakdown"]["bytes"]))
    assert int(tables["tensors"]["bytes"].sum()) + parts["container"] == blob == v.count.model_bytes
    assert len(tables["tensors"]) == len(inspect(out / "submission" / "model.blob")["tensors"])
    # the unquantized reference and the comparison are scored on the tokens verify scored
    assert result["unquantized_source"] == "scored here on the same tokens" and head["gap"] > 0
    row = result["compare"]["rows"][0]
    assert result["compare"]["tokens"] == v.run["tokens"]
    assert row["fit_bytes"] <= row["recipe_bytes"]
    assert row["fit_gap"] == row["fit_val_bpb"] - result["compare"]["reference_val_bpb"]


# ----------------------------------------------------------------------------- labels, prune, ranks

def test_choice_labels_are_strict_and_carry_the_prune_fraction():
    from artifact.measure import Choice

    c = Choice.parse("int5/sdclip:8/gptq/r0/p0.03/ans")
    assert (c.bits, c.clip, c.gptq, c.lqer_rank, c.prune, c.codec) == (5, "sdclip:8", True, 0, 0.03, "ans")
    assert c.label == "int5/sdclip:8/gptq/r0/p0.03/ans" and Choice.parse(Choice(8, "sdclip:8", False, 2, "ans").label).prune == 0
    for bad in ("int5/sdclip:8/gptq/r0/ans", "int5/sdclip:8/gptq/r0/p0.030/ans", "int5/sdclip:8/gptq/r0/p1.5/ans",
                "int9/sdclip:8/rtn/r0/p0/ans", "int5/sdclip:8/xyz/r0/p0/ans", "int5/sdclip:8/rtn/r0/q0/ans"):
        with pytest.raises(ConfigError, match="bad candidate label"):
            Choice.parse(bad)
    assert pin_matches("int8", "int8/sdclip:8/rtn/r0/p0/ans") and pin_matches("p0.03/gptq", c.label)
    assert not pin_matches("p0", c.label)


def _pack_choices(p, choices):
    from artifact.fit import build_recipe
    from artifact.pack import pack_state_dict

    full = {n: "int8/sdclip:8/rtn/r0/p0/ans" for n in p["measurement"].tensors}  # the rest: plain int8
    recipe = build_recipe({**full, **choices}, p["calibration"])
    return recipe, pack_state_dict(p["state"], recipe, p["hessians"])


def test_pruned_and_lqer_candidates_are_what_pack_ships(prepared):
    """A measured p0.03 candidate (and one with an LQER rank) packs to exactly the measured code
    bytes and distortion, through pack's own prune → quantize → LQER path."""
    from artifact import codec
    from artifact.quant import weighted_error

    m = prepared["measurement"]
    name = "blocks.1.mlp.fc.weight"
    t = m.tensors[name]
    pruned = [l for l in t.candidates if "/p0.03/" in l and "/r0/" in l and l.startswith("int8/")]
    ranked = [l for l in t.candidates if "/r4/" in l]
    assert pruned and ranked and {l.replace("/p0.03/", "/p0/") for l in pruned} <= set(t.candidates)
    for label in (pruned[0], ranked[0]):
        _, packed = _pack_choices(prepared, {name: label})
        entry = next(e for e in packed.entries if e.name == name)
        fig = t.candidates[label]
        assert codec.predict_size(entry.codec, entry.codes) == fig["code_bytes"]
        assert (entry.lqer is not None) == ("/r4/" in label)
        got = weighted_error(prepared["state"][name].float(), packed.dequantized[name], prepared["hessians"][name])
        assert got == pytest.approx(fig["distortion"], rel=1e-5)
    assert next(r for r in _pack_choices(prepared, {name: pruned[0]})[1].rows if r["name"] == name)["prune"] == 0.03
    # pruning trades distortion for bytes: at the same base, fewer code bytes
    base = pruned[0].replace("/p0.03/", "/p0/")
    assert t.candidates[pruned[0]]["code_bytes"] < t.candidates[base]["code_bytes"]


def test_per_tensor_lqer_ranks_pack_and_round_trip_through_recipe_toml(prepared, tmp_path):
    import tomllib

    from artifact.fit import recipe_data, recipe_toml
    from artifact.recipe import load_recipe

    choices = {"blocks.0.attn.c_q.weight": "int3/sdclip:8/rtn/r2/p0/ans",
               "blocks.1.mlp.fc.weight": "int3/sdclip:8/rtn/r8/p0.03/ans",
               "blocks.2.mlp.proj.weight": "int4/sdclip:8/rtn/r0/p0/ans"}
    recipe, packed = _pack_choices(prepared, choices)
    assert dict(recipe.lqer.ranks) == {"blocks.0.attn.c_q.weight": 2, "blocks.1.mlp.fc.weight": 8}
    ranks = {e.name: e.lqer[0].codes.shape[1] for e in packed.entries if e.lqer is not None}
    assert ranks == {"blocks.0.attn.c_q.weight": 2, "blocks.1.mlp.fc.weight": 8}
    choices = {**{n: "int8/sdclip:8/rtn/r0/p0/ans" for n in prepared["measurement"].tensors}, **choices}
    text = recipe_toml(recipe_data(choices, prepared["calibration"]))
    assert '[lqer.ranks]\n"blocks.0.attn.c_q.weight" = 2' in text
    path = tmp_path / "recipe.toml"
    path.write_text(text)
    again = load_recipe(path)
    rules = {r["match"][0]: r for r in tomllib.loads(text)["rules"]}
    assert again.lqer == recipe.lqer and rules["blocks.1.mlp.fc.weight"]["prune"] == 0.03
    repacked = pack_state_dict_blob(prepared, again)
    assert repacked == build_blob(packed.entries)


def pack_state_dict_blob(p, recipe) -> bytes:
    from artifact.pack import pack_state_dict

    return build_blob(pack_state_dict(p["state"], recipe, p["hessians"]).entries)


def test_lqer_ranks_are_measured_only_on_the_rank0_hull(prepared):
    from artifact.measure import Choice, hull_bases

    for t in prepared["measurement"].tensors.values():
        hull = set(hull_bases(t.candidates))
        ranked = {Choice.parse(l).base for l in t.candidates if Choice.parse(l).lqer_rank}
        assert ranked <= hull and len(hull) >= 2


# ----------------------------------------------------------------------------- parallel and resumable

TINY = Grid(bits=(3, 6), clips=("sdclip:8",), gptq=(False, True), prunes=(0.0, 0.03), lqer_ranks=(0, 4),
            codecs=("ans",))


def _tiny_measure(p, cache, jobs):
    from artifact.calibrate import batches_from_tokens
    from artifact.measure import measure
    from helpers import bundled_model_and_tokens

    model, tokens = bundled_model_and_tokens()
    probe = probe_loss_fn(model, batches_from_tokens(tokens, 4, 129, 4, 0))
    return measure(p["state"], p["hessians"], TINY, probe, {"test": "tiny"}, cache, jobs=jobs)


def _files(folder: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(folder.iterdir())}


@pytest.mark.slow
def test_parallel_measurement_is_identical_and_resumes_after_ctrl_c(prepared, tmp_path):
    one = _tiny_measure(prepared, tmp_path / "one", jobs=1)
    two = _tiny_measure(prepared, tmp_path / "two", jobs=2)
    assert {n: (t.candidates, t.probe, t.sensitivity) for n, t in one.tensors.items()} == \
           {n: (t.candidates, t.probe, t.sensitivity) for n, t in two.tensors.items()}
    assert _files(tmp_path / "one") == _files(tmp_path / "two") and len(_files(tmp_path / "one")) == len(one.tensors)
    # Ctrl-C a 2-worker measurement part-way: only whole cache files stay; a rerun finishes the rest.
    # The interrupt is raised right after the 3rd cache file is written (a real SIGINT raced the
    # tiny measurement, which can finish first on a fast machine); the workers are live then.
    part = tmp_path / "part"
    torch.save({"state": prepared["state"], "hessians": prepared["hessians"]}, tmp_path / "inputs.pt")
    script = (f"import sys, torch; sys.path.insert(0, 'tests'); torch.set_num_threads({torch.get_num_threads()})\n"
              "import artifact.measure as M\n"
              "real_store, calls = M._store, []\n"
              "def store(*a):\n"
              "    real_store(*a); calls.append(1)\n"
              "    if len(calls) == 3: raise KeyboardInterrupt\n"
              "M._store = store\n"
              "from test_fit import _tiny_measure\n"
              f"p = torch.load({str(tmp_path / 'inputs.pt')!r}, weights_only=True)\n"
              f"_tiny_measure(p, {str(part)!r}, 2)\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "KeyboardInterrupt" in proc.stderr
    done = _files(part)
    assert 3 <= len(done) < len(one.tensors) and not [n for n in done if not n.endswith(".json")]
    assert all(done[n] == _files(tmp_path / "one")[n] for n in done)  # whole, and the same bytes
    resumed = _tiny_measure(prepared, part, jobs=2)
    assert 0 < resumed.stats["measured"] < one.stats["measured"]
    assert _files(part) == _files(tmp_path / "one")
    assert {n: t.candidates for n, t in resumed.tensors.items()} == {n: t.candidates for n, t in one.tensors.items()}
