"""Reports: a fit-like folder built from a real pack of the bundled checkpoint → report.csv,
report.md and a self-contained report.html with deterministic plots; every byte figure from the
one count verify makes; the verdict first, units on every column; `golf report` on the command
line; clear errors for folders that are not a fit or a submission. (A real `golf fit`'s report
against its own verify: tests/test_fit.py.)"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import chromium, screenshot

from analysis.cli import main
from analysis.compare import AT_BYTES_COLUMNS
from analysis.fit_tables import layer_and_kind
from analysis.plots import PLOT_TITLES, all_plots, png_bytes
from analysis.report import load_fit_tables, verdict_line, write_report
from artifact.budget import count_submission, resolve_budget
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


LIMIT = 500_000  # seed-003 on the bundled checkpoint (~475 kB) fits: `golf pack` exits 1 when over


@pytest.fixture(scope="module")
def fit_folder(tmp_path_factory):
    """A folder shaped like `golf fit`'s: a real `golf pack` submission inside it, tensors.csv
    from its per-tensor rows (predicted Δloss a stand-in: distortion x 1e-3), candidates.csv,
    and fit.json with a verdict, val_bpb figures and a comparison block as `golf fit` writes them."""
    tmp = tmp_path_factory.mktemp("fit")
    folder = tmp / "fit"
    done = golf("pack", "--recipe", "seed-003", "--out", folder / "submission", "--budget", LIMIT, "--json")
    assert done.returncode == 0, done.stderr
    packed = json.loads(done.stdout)
    record = json.loads((folder / "submission" / "submission.json").read_text())
    rows = [r for r in record["tensors"] if r["name"].startswith("blocks.") or r["name"] == "tok_emb.weight"]
    tensors = pd.DataFrame(rows).rename(columns={"error": "distortion"})
    tensors["layer"], tensors["kind"] = zip(*(layer_and_kind(n) for n in tensors["name"]))
    tensors["predicted_dloss"] = tensors["distortion"] * 1e-3
    tensors[["name", "layer", "kind", "params", "bits", "clip", "gptq", "lqer_rank", "prune", "codec", "bytes",
             "predicted_dloss", "distortion"]].to_csv(folder / "tensors.csv", index=False)
    _candidates(tmp, record["tensors"]).to_csv(folder / "candidates.csv", index=False)
    compare = {"tokens": 4096, "reference_val_bpb": 1.8301,
               "rows": [{"recipe": "seed-004", "recipe_bytes": 331_000, "recipe_val_bpb": 1.8410, "recipe_gap": 0.0109,
                         "fit_bytes": 330_990, "fit_val_bpb": 1.8390, "fit_gap": 0.0089, "fit_minus_recipe": -0.0020}]}
    fit = {"budget": f"{LIMIT}B", "limit": LIMIT, "code_bytes": packed["bytes"]["code_bytes"],
           "val_bpb": 1.80201234, "unquantized_val_bpb": 1.79717132, "submission": str(folder / "submission"),
           "verify": {"verdict": "FITS", "run": {"tokens": 254_464, "bytes": 648_909, "mode": "flat", "seq_len": 256,
                                                 "device": "cpu", "modules": {"x": "/tmp/golf-verify-abc/x.py"}}},
           "compare": compare}
    (folder / "fit.json").write_text(json.dumps(fit))
    return folder, record["tensors"], packed


def test_every_byte_figure_comes_from_one_count(fit_folder):
    folder, rows, packed = fit_folder
    tables = load_fit_tables(folder)
    sub = folder / "submission"
    count = count_submission(sub, resolve_budget(LIMIT))
    blob = (sub / "model.blob").stat().st_size
    # every tensor of the blob is a row, its bytes its exact share: with the container they are the blob
    t = tables["tensors"]
    assert list(t["name"]) == [r["name"] for r in rows]
    parts = dict(zip(tables["breakdown"]["part"], tables["breakdown"]["bytes"]))
    assert set(parts) == {"weights codes", "scales", "LQER factors", "container", "code"}
    assert int(t["bytes"].sum()) + parts["container"] == blob
    assert parts["weights codes"] + parts["scales"] + parts["LQER factors"] == int(t["bytes"].sum())
    assert sum(parts.values()) == count.total == packed["bytes"]["total_bytes"]
    head = dict(zip(tables["headline"]["figure"], tables["headline"]["value"]))
    assert head["total_bytes"] == count.total and head["headroom_bytes"] == count.headroom == LIMIT - count.total
    assert head["verdict"] == ("FITS" if count.fits else "OVER") and head["budget_bytes"] == LIMIT
    assert head["gap"] == pytest.approx(1.80201234 - 1.79717132, abs=1e-12)
    # the source's own size figures (the packer's predictions) are kept beside, never summed as bytes
    assert t.loc[t["predicted_dloss"].notna(), "predicted_bytes"].notna().all()
    assert t["share_of_budget"].sum() == pytest.approx(t["bytes"].sum() / LIMIT)
    assert t["layer"].dtype == "Int64" and "measured_dloss" not in t  # nothing was measured


def test_report_leads_with_the_verdict_in_units_without_temporary_paths(fit_folder, tmp_path):
    folder, rows, _ = fit_folder
    tables = load_fit_tables(folder)
    paths = write_report(tmp_path / "out", tables)
    md, page = paths["md"].read_text(), paths["html"].read_text()
    csv = paths["csv"].read_text()
    verdict = verdict_line(tables)
    assert verdict.startswith(("FITS", "OVER")) and "val_bpb 1.80201234" in verdict and "gap +0.00484102" in verdict
    assert md.index(verdict) < md.index("## Byte breakdown") < md.index("## Per-tensor table")
    assert page.index("verdict") < page.index("<h2>Byte breakdown") < page.index("<h2>Per-tensor table")
    for text in (md, page):
        assert "predicted Δloss (nats)" in text and "distortion (tr ΔW·H·ΔWᵀ)" in text
        assert "measured Δloss" not in text
        assert "/tmp/" not in text and "golf-verify" not in text
        assert "1.80201234" in text and f"{LIMIT:,}" in text
    for name in (r["name"] for r in rows):
        assert f"| {name} |" in md and f"<td>{name}</td>" in page
    assert "measured_dloss" not in csv.splitlines()[0]
    raw = pd.read_csv(paths["csv"], dtype=str)
    for column in ("layer", "params", "bits", "lqer_rank", "bytes", "predicted_bytes"):  # integers as integers
        assert not raw[column].dropna().str.contains(".", regex=False).any(), column


def test_the_comparison_is_each_recipe_at_its_bytes_in_a_fixed_order(fit_folder, tmp_path):
    folder, _, _ = fit_folder
    tables = load_fit_tables(folder)
    compare = tables["compare"]
    assert tuple(compare.columns) == AT_BYTES_COLUMNS
    assert compare.attrs == {"kind": "at_recipe_bytes", "tokens": 4096, "reference_val_bpb": 1.8301}
    md = write_report(tmp_path, tables)["md"].read_text()
    heading = md.index("## Each recipe beside the fit at that recipe's bytes")
    caption, table = md[heading:].split("\n\n")[1:3]
    assert "same 4,096 val tokens" in caption and "1.830100" in caption
    assert table.splitlines()[0].startswith("| recipe | recipe bytes | recipe val_bpb | recipe gap | fit bytes |")


def test_html_is_self_contained(fit_folder, tmp_path):
    folder, _, _ = fit_folder
    page = write_report(tmp_path, load_fit_tables(folder))["html"].read_text()
    sources = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page)
    assert len(sources) == 4 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r"https?://", page) and "<script" not in page and "<link" not in page


def test_plots_are_figures_and_deterministic_png(fit_folder):
    from matplotlib.figure import Figure

    folder, _, _ = fit_folder
    first = all_plots(load_fit_tables(folder), LIMIT)
    second = all_plots(load_fit_tables(folder), LIMIT)
    assert set(first) == set(PLOT_TITLES) and all(isinstance(f, Figure) for f in first.values())
    for stem, fig in first.items():
        png = png_bytes(fig)
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000, stem
        assert png == png_bytes(second[stem]), f"{stem}: PNG bytes differ between two runs"
        assert b"tEXt" not in png and b"tIME" not in png  # no software/timestamp metadata
    heatmap = first["dloss_heatmap"].axes[0]
    assert "Predicted Δloss" in heatmap.get_title()


def test_the_report_selects_no_matplotlib_backend():
    # importing it, drawing a figure and rendering it as PNG leave the backend to the user (a
    # notebook's inline one)
    code = ("import matplotlib, pandas as pd, analysis.report, analysis.api\n"
            "from analysis.plots import byte_breakdown_figure, png_bytes\n"
            "png_bytes(byte_breakdown_figure(pd.DataFrame({'part': ['code'], 'bytes': [5]}), 10))\n"
            "print(matplotlib.rcParams._get_backend_or_none())")
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0 and done.stdout.strip() == "None", done.stdout + done.stderr


def test_golf_report_json_on_fit_and_on_submission(fit_folder, capsys):
    folder, rows, _ = fit_folder
    done = golf("report", folder, "--json")
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.strip().splitlines()) == 1  # --json: one line on stdout, nothing else
    result = json.loads(done.stdout)
    assert result["tensors"] == len(rows) and Path(result["out"]) == folder
    for key in ("csv", "md", "html", *PLOT_TITLES):
        assert Path(result["files"][key]).is_file(), key
    assert result["headline"]["budget_bytes"] == LIMIT
    assert sum(b["bytes"] for b in result["breakdown"]) == result["headline"]["total_bytes"]

    # A bare submission: the report goes beside it; the submission's files are left as they were.
    sub = folder / "submission"
    before = sorted(p.name for p in sub.iterdir())
    assert main(["report", str(sub)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert sorted(p.name for p in sub.iterdir()) == before
    md = (folder / "submission-report" / "report.md").read_text()
    assert all(f"| {r['name']} |" in md for r in rows) and "seed-003" in md
    assert "not scored here" in md


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


@pytest.mark.skipif(chromium() is None, reason="no headless chromium (apt-get install -y chromium)")
def test_the_report_renders_in_a_real_browser(fit_folder, tmp_path):
    """report.html in headless Chromium: the page renders (not blank), its top is the verdict
    box in the verdict's colour, and the embedded plots load (the page is tall with them).
    The same check on a real fit: `python tests/helpers.py runs/fit/report.html shot.png`."""
    import matplotlib.image

    folder, _, _ = fit_folder
    tables = load_fit_tables(folder)
    html = write_report(tmp_path, tables)["html"]
    png = tmp_path / "shot.png"
    screenshot(html, png, width=1400, height=1200)
    image = matplotlib.image.imread(png)[..., :3]
    assert image.shape[:2] == (1200, 1400) and image.std() > 0.05  # drawn, not a blank page
    verdict = dict(zip(tables["headline"]["figure"], tables["headline"]["value"]))["verdict"]
    box = {"FITS": (0xE3, 0xF4, 0xE1), "OVER": (0xFD, 0xE2, 0xE1)}[verdict]
    top = (image[:200] * 255).round()
    assert (np.abs(top - np.array(box)).sum(axis=-1) < 6).sum() > 2000  # the verdict box, in its colour
