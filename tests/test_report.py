"""Reports: a fit-like folder built from a real pack of the bundled checkpoint → report.csv,
report.md and a self-contained report.html with deterministic plots; `golf report` on the
command line; clear errors for folders that are not a fit or a submission."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from analysis.cli import main
from analysis.plots import all_plots
from analysis.report import (
    TENSOR_COLUMNS,
    layer_and_kind,
    load_fit_tables,
    write_report,
)
from artifact.runtime.errors import ArtifactError, DataError
from train.bundled import BUNDLED_CHECKPOINT

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not (BUNDLED_CHECKPOINT / "model.pt").is_file(), reason="bundled checkpoint absent")]

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "artifact" / "recipes" / "seed-003.toml"


def golf(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "analysis.cli", *map(str, args)], cwd=cwd, check=False,
                          capture_output=True, text=True, timeout=120)


def _bits_variant(tmp: Path, bits: int) -> Path:
    """seed-003 with its int6 matrices at `bits` instead (a real alternative configuration)."""
    text = RECIPE.read_text().replace('name = "seed-003"', f'name = "seed-003-int{bits}"').replace("bits = 6", f"bits = {bits}")
    path = tmp / f"int{bits}.toml"
    path.write_text(text)
    return path


def _candidates(tmp: Path, chosen_rows: list[dict]) -> pd.DataFrame:
    """Candidates per quantized matrix: the same tensor packed at 4, 5, 6 (chosen) and 8 bits."""
    from artifact.pack import pack_state_dict
    from artifact.recipe import load_recipe
    from artifact.runtime.checkpoint import load_checkpoint

    model, _, _ = load_checkpoint(BUNDLED_CHECKPOINT)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    rows = [dict(r, label="int6 absmax", chosen=True) for r in chosen_rows if r["bits"] == 6]
    for bits in (4, 5, 8):
        packed = pack_state_dict(state, load_recipe(_bits_variant(tmp, bits)))
        rows += [dict(r, label=f"int{bits} absmax", chosen=False) for r in packed.rows if r["bits"] == bits
                 and r["name"].startswith("blocks.")]
    frame = pd.DataFrame(rows)
    frame["kind"] = [layer_and_kind(n)[1] for n in frame["name"]]
    frame["distortion"] = frame["error"]
    frame["predicted_dloss"] = frame["error"] * 1e-3
    return frame[["name", "kind", "label", "bytes", "distortion", "predicted_dloss", "chosen"]]


@pytest.fixture(scope="module")
def fit_folder(tmp_path_factory):
    """A folder shaped like `golf fit`'s: a real `golf pack` submission inside it, tensors.csv
    from its per-tensor rows, candidates.csv, compare.csv (two rows) and fit.json."""
    tmp = tmp_path_factory.mktemp("fit")
    folder = tmp / "fit"
    done = golf("pack", "--recipe", "seed-003", "--out", folder / "submission", "--budget", "track_10min_16mb", "--json")
    assert done.returncode == 0, done.stderr
    packed = json.loads(done.stdout)
    record = json.loads((folder / "submission" / "submission.json").read_text())
    rows = record["tensors"]
    tensors = pd.DataFrame(rows).rename(columns={"error": "distortion"})
    tensors["layer"], tensors["kind"] = zip(*(layer_and_kind(n) for n in tensors["name"]))
    tensors["share_of_budget"] = tensors["bytes"] / 360_000
    tensors["predicted_dloss"] = tensors["distortion"] * 1e-3
    tensors[[c for c in TENSOR_COLUMNS if c != "measured_dloss"] + ["code_bytes", "scale_bytes", "lqer_bytes"]] \
        .to_csv(folder / "tensors.csv", index=False)
    _candidates(tmp, rows).to_csv(folder / "candidates.csv", index=False)
    total = packed["bytes"]["total_bytes"]
    pd.DataFrame([
        {"recipe": "unquantized", "model_bytes": None, "code_bytes": None, "total_bytes": None, "val_bpb": 1.7972, "gap": 0.0},
        {"recipe": "seed-003", "model_bytes": packed["bytes"]["model_bytes"], "code_bytes": packed["bytes"]["code_bytes"],
         "total_bytes": total, "val_bpb": 1.8031, "gap": 0.0059},
    ]).to_csv(folder / "compare.csv", index=False)
    fit = {"budget": {"name": "demo", "bytes": 360_000}, "total_bytes": total, "predicted_bytes": total + 340,
           "val_bpb": 1.8020, "unquantized_val_bpb": 1.7972, "verdict": "OVER"}
    (folder / "fit.json").write_text(json.dumps(fit))
    return folder, rows


def test_tables_and_report_files_cover_every_tensor(fit_folder, tmp_path):
    folder, rows = fit_folder
    tables = load_fit_tables(folder)
    names = [r["name"] for r in rows]
    assert list(tables["tensors"]["name"]) == names
    assert set(TENSOR_COLUMNS) <= set(tables["tensors"].columns)
    assert {"candidates", "compare", "breakdown", "summary"} <= set(tables)
    # The breakdown is exact from the shipped blob: its parts add up to the counted bytes.
    parts = dict(zip(tables["breakdown"]["part"], tables["breakdown"]["bytes"]))
    assert set(parts) == {"weights codes", "scales", "LQER factors", "container", "code"}
    blob = (folder / "submission" / "model.blob").stat().st_size
    assert parts["weights codes"] + parts["scales"] + parts["LQER factors"] + parts["container"] == blob
    # compare.csv had no fit row: the fit's own figures are added as one.
    assert list(tables["compare"]["recipe"]) == ["unquantized", "seed-003", "fit"]
    fit_row = tables["compare"].iloc[-1]
    assert fit_row["gap"] == pytest.approx(1.8020 - 1.7972) and fit_row["model_bytes"] == blob

    paths = write_report(tmp_path / "out", tables)
    csv = pd.read_csv(paths["csv"])
    md = paths["md"].read_text()
    page = paths["html"].read_text()
    assert list(csv["name"]) == names
    for name in names:
        assert f"| {name} |" in md and f"<td>{name}</td>" in page
    for heading in ("Totals", "Byte breakdown", "Comparison", "Per-tensor table"):
        assert heading in md and heading in page
    assert "| fit |" in md and "| seed-003 |" in md and "360,000" in md


def test_html_is_self_contained(fit_folder, tmp_path):
    folder, _ = fit_folder
    page = write_report(tmp_path, load_fit_tables(folder))["html"].read_text()
    sources = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page)
    assert len(sources) == 4 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r"https?://", page) and "<script" not in page and "<link" not in page


def test_plots_are_deterministic_png(fit_folder):
    folder, _ = fit_folder
    first = all_plots(load_fit_tables(folder), 360_000)
    second = all_plots(load_fit_tables(folder), 360_000)
    assert set(first) == {"rate_distortion", "layers", "error_heatmap", "byte_breakdown"}
    for stem, png in first.items():
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000, stem
        assert png == second[stem], f"{stem}: PNG bytes differ between two runs"
        assert b"tEXt" not in png and b"tIME" not in png  # no software/timestamp metadata


def test_golf_report_json_on_fit_and_on_submission(fit_folder, capsys):
    folder, rows = fit_folder
    done = golf("report", folder, "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["tensors"] == len(rows) and Path(result["out"]) == folder
    for key in ("csv", "md", "html", "rate_distortion", "layers", "error_heatmap", "byte_breakdown"):
        assert Path(result["files"][key]).is_file(), key
    assert result["summary"]["budget_bytes"] == 360_000
    assert sum(b["bytes"] for b in result["breakdown"]) == result["summary"]["artifact_bytes (breakdown total)"]

    # A bare submission: the report goes beside it; the submission's files are left as they were.
    sub = folder / "submission"
    before = sorted(p.name for p in sub.iterdir())
    assert main(["report", str(sub)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert sorted(p.name for p in sub.iterdir()) == before
    md = (folder / "submission-report" / "report.md").read_text()
    assert all(f"| {r['name']} |" in md for r in rows) and "seed-003" in md


def test_bad_folders_give_clear_errors(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ArtifactError, match="not a fit folder .*tensors.csv.*submission.json"):
        load_fit_tables(empty)
    with pytest.raises(ArtifactError, match="no such folder"):
        load_fit_tables(tmp_path / "missing")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "tensors.csv").write_text("tensor,bytes\na,1\n")
    with pytest.raises(DataError, match=r"tensors\.csv: no 'name' column"):
        load_fit_tables(bad)
    (bad / "tensors.csv").write_text("name,bytes\na,1\n")
    (bad / "fit.json").write_text("{not json")
    with pytest.raises(DataError, match=r"fit\.json: cannot read JSON"):
        load_fit_tables(bad)
    assert main(["report", str(empty)]) == 2
    assert "golf report: error:" in capsys.readouterr().err


def test_fit_json_as_golf_fit_writes_it(fit_folder, tmp_path):
    """`golf fit`'s own fit.json shape: budget name + limit, real_total, comparison rows inside."""
    import shutil

    folder, rows = fit_folder
    copy = tmp_path / "fit"
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("compare.csv", "candidates.csv", "report*"))
    compare = [{"recipe": "seed-003", "total_bytes": 530_900, "val_bpb": 1.8031, "gap": 0.0059},
               {"recipe": "fit", "total_bytes": 359_000, "val_bpb": 1.8010, "gap": 0.0038}]
    (copy / "fit.json").write_text(json.dumps({"budget": "demo", "limit": 360_000, "real_total": 359_000,
                                               "val_bpb": 1.8010, "tensors": rows, "compare": compare}))
    tables = load_fit_tables(copy)
    assert "candidates" not in tables and list(tables["compare"]["recipe"]) == ["seed-003", "fit"]
    summary = dict(zip(tables["summary"]["figure"], tables["summary"]["value"]))
    assert summary["budget_bytes"] == 360_000 and summary["real_total"] == 359_000
    assert tables["tensors"]["share_of_budget"].iloc[1] == pytest.approx(rows[1]["bytes"] / 360_000)
    paths = write_report(copy, tables)
    assert all(paths[k].is_file() for k in ("csv", "md", "html", "rate_distortion"))
