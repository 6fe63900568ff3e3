"""`golf report DIR`: a fit's (or a packed submission's) figures as CSV, Markdown and one
self-contained HTML page with plots.

    golf report DIR [--out OUT] [--json]

Sources, read by `load_fit_tables(DIR)`:
- a fit folder (`golf fit --out DIR`): `tensors.csv` (required), `fit.json` (the fit's figures,
  the verify verdict, the comparison), `candidates.csv` (rate–distortion curves) and
  `compare.csv` (`golf compare --csv`), each optional;
- a submission folder (`golf pack --out DIR`): the per-tensor rows its `submission.json` keeps.
When a submission is found (DIR itself, DIR/submission or a subfolder holding `submission.json`)
every byte figure comes from one count: the submission's files counted by the budget's rules
(`artifact.budget.count_submission`, the very count `golf verify` makes) and the blob's streams
attributed to its tensors exactly (`artifact.container.inspect`: per-tensor bytes sum to the
blob, less its header and manifest). So the report's total and headroom are verify's.

Tables (pandas DataFrames): `headline` (figure, value: verdict, budget, total, headroom,
val_bpb, unquantized, gap), `tensors` (one row per tensor of the blob: config, bytes as
shipped, bits per weight, share of the budget, predicted Δloss in nats, distortion, measured
Δloss only where measured), `breakdown` (part, bytes, shares), `details` (figure, value), and
when present `candidates` and `compare` (its `attrs` say which comparison it is, on how many
tokens, against which reference). `write_report(out, tables)` writes report.csv (the tensors),
report.md, report.html and the plots as PNG files; the HTML embeds the plots (base64) and
references nothing outside itself. A submission's own folder is never written into (every file
there counts against the budget): its report goes to DIR-report unless --out says otherwise.
"""

from __future__ import annotations

import base64
import html
import json
import math
import numbers
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.compare import AT_BYTES_COLUMNS, RECIPE_COLUMNS
from analysis.fit_tables import layer_and_kind
from analysis.plots import PLOT_TITLES, all_plots, png_bytes
from artifact.budget import Budget, ByteCount, count_submission, resolve_budget
from artifact.container import inspect as inspect_blob
from artifact.runtime.errors import ArtifactError, ConfigError, DataError
from artifact.runtime.files import atomic_write
from artifact.submission import BLOB, MARKER, is_submission

TENSOR_COLUMNS = ("name", "layer", "kind", "params", "scheme", "bits", "clip", "gptq", "lqer_rank", "prune", "codec",
                  "bytes", "bits_per_weight", "share_of_budget", "predicted_dloss", "distortion", "measured_dloss",
                  "predicted_bytes")
_KEPT_EMPTY = ("name", "layer", "kind", "params", "bytes")  # every other all-empty column is dropped
_INT_COLUMNS = ("layer", "params", "bits", "lqer_rank", "bytes", "predicted_bytes", "code_bytes", "scale_bytes",
                "lqer_bytes", "group_size", "pm1_pruned")
REPORT_FILES = ("report.csv", "report.md", "report.html")
# What each column is, with its unit, as the report's tables head it.
COLUMN_TITLES = {
    "params": "params", "scheme": "scheme", "lqer_rank": "LQER rank", "bytes": "bytes (shipped)",
    "bits_per_weight": "bits/weight", "share_of_budget": "share of budget",
    "predicted_dloss": "predicted Δloss (nats)", "measured_dloss": "measured Δloss (nats)",
    "distortion": "distortion (tr ΔW·H·ΔWᵀ)", "predicted_bytes": "predicted bytes",
    "recipe_bytes": "recipe bytes", "recipe_val_bpb": "recipe val_bpb", "recipe_gap": "recipe gap",
    "fit_bytes": "fit bytes", "fit_val_bpb": "fit val_bpb", "fit_gap": "fit gap",
    "fit_minus_recipe": "fit − recipe (val_bpb)", "total_bytes": "total bytes", "model_bytes": "model bytes",
    "code_bytes": "code bytes", "share_of_total": "share of total",
}
HEADLINE_TITLES = {
    "verdict": "verdict", "budget": "budget", "budget_bytes": "budget (bytes)",
    "total_bytes": "total counted (bytes)", "code_bytes": "of which code", "model_bytes": "of which model",
    "headroom_bytes": "headroom (bytes)", "val_bpb": "val_bpb (fresh-process verify)",
    "unquantized_val_bpb": "val_bpb unquantized (same tokens)", "gap": "gap (val_bpb − unquantized)",
    "val_tokens": "val tokens scored",
}


# ------------------------------------------------------------------------------ loading

def load_fit_tables(folder) -> dict[str, pd.DataFrame]:
    """The report's tables from a fit folder or a submission folder (see the module doc).
    Raises ArtifactError for a folder that holds neither tensors.csv nor submission.json."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactError(f"{folder}: no such folder (expected a fit folder or a submission folder)")
    if (folder / "tensors.csv").is_file():
        rows = _read_csv(folder / "tensors.csv")
        record = _read_json(folder / "fit.json") if (folder / "fit.json").is_file() else {}
        source = "fit"
    elif (folder / MARKER).is_file():
        record = _read_json(folder / MARKER)
        if not isinstance(record.get("tensors"), list) or not record["tensors"]:
            raise ArtifactError(f"{folder / MARKER}: holds no per-tensor rows ('tensors'); repack with `golf pack`")
        rows, source = pd.DataFrame(record["tensors"]), "submission"
    else:
        raise ArtifactError(f"{folder}: not a fit folder (no tensors.csv) nor a submission folder "
                            f"(no {MARKER}); point `golf report` at the folder `golf fit` or `golf pack` wrote")
    if "name" not in rows:
        raise DataError(f"{folder / 'tensors.csv'}: no 'name' column (columns: {', '.join(map(str, rows.columns))})")
    budget = _budget(record)
    submission = _find_submission(folder)
    count = blob = None
    if submission is not None:
        count = count_submission(submission, budget or resolve_budget(None))
        blob = inspect_blob(submission / BLOB)
    tensors = tensor_table(rows, blob, budget)
    tables = {"headline": headline(record, count, budget, source), "tensors": tensors,
              "breakdown": byte_breakdown(blob, count, tensors, record, budget)}
    if (folder / "candidates.csv").is_file():
        tables["candidates"] = _with_layer_kind(_read_csv(folder / "candidates.csv"))
    compare = _comparison(folder, record)
    if compare is not None:
        tables["compare"] = compare
    tables["details"] = details(record, blob, count, source,
                                submission.relative_to(folder).as_posix() if submission is not None else None)
    return tables


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path}: cannot read the table ({exc})") from None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read JSON ({exc})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object")
    return data


def _budget(record: dict) -> Budget | None:
    """The budget the figures were made against: its name when it resolves to the recorded
    limit (a named budget brings its own counting rules), else the recorded limit in bytes."""
    name, limit = record.get("budget"), record.get("limit")
    for value in (name, limit):
        if value is None or isinstance(value, bool):
            continue
        try:
            budget = resolve_budget(value)
        except ConfigError:
            continue
        if limit is None or budget.bytes == limit:
            return budget
    return None


def _find_submission(folder: Path) -> Path | None:
    """The submission a report describes: the folder itself, DIR/submission, or the first
    subfolder (sorted) holding a submission.json of this tool's format."""
    for candidate in [folder, folder / "submission"] + sorted(p for p in folder.iterdir() if p.is_dir()):
        if is_submission(candidate) and (candidate / BLOB).is_file():
            return candidate
    return None


def _with_layer_kind(table: pd.DataFrame) -> pd.DataFrame:
    table = table.copy()
    table["name"] = table["name"].astype(str)
    derived = [layer_and_kind(n) for n in table["name"]]
    table["layer"] = pd.array([d[0] for d in derived], dtype="Int64")
    table["kind"] = [d[1] for d in derived]
    return table


def tensor_table(rows: pd.DataFrame, blob: dict | None = None, budget: Budget | None = None) -> pd.DataFrame:
    """One row per tensor in report shape (TENSOR_COLUMNS that hold anything, then any extra
    columns the source had). With the blob's inspection every tensor of the blob is a row, in
    blob order, and `bytes` is its exact share of the blob; the source's own size figure (a
    prediction) becomes `predicted_bytes`. Pack rows' 'error' is the distortion."""
    t = _with_layer_kind(rows.rename(columns={"error": "distortion"}))
    if blob:
        if "bytes" in t:
            t["predicted_bytes"] = t["predicted_bytes"] if "predicted_bytes" in t else t["bytes"]
        shipped = pd.DataFrame(blob["tensors"])[["name", "params", "scheme", "codec", "bytes"]]
        t = shipped.merge(t.drop(columns=[c for c in ("params", "scheme", "codec", "bytes") if c in t]),
                          on="name", how="left")
        t = _with_layer_kind(t)
    for column in ("params", "bytes"):
        if column not in t:
            t[column] = pd.NA
    for column in _INT_COLUMNS:
        if column in t:
            t[column] = pd.to_numeric(t[column], errors="coerce").round().astype("Int64")
    nbytes, params = t["bytes"].astype("Float64"), t["params"].astype("Float64")
    t["bits_per_weight"] = (nbytes * 8 / params.where(params > 0)).astype(float)
    t["share_of_budget"] = (nbytes / budget.bytes).astype(float) if budget else float("nan")
    keep = [c for c in TENSOR_COLUMNS if c in t and (c in _KEPT_EMPTY or t[c].notna().any())]
    extras = [c for c in t.columns if c not in TENSOR_COLUMNS and t[c].notna().any()]
    return t[keep + extras].reset_index(drop=True)


def headline(record: dict, count: ByteCount | None, budget: Budget | None, source: str) -> pd.DataFrame:
    """The verdict and the figures a reader wants first: budget, total, headroom (from the
    count of the submission's files, the one verify makes), val_bpb, unquantized, gap."""
    verify = record.get("verify") if isinstance(record.get("verify"), dict) else {}
    run = verify.get("run") if isinstance(verify.get("run"), dict) else {}
    figures: dict = {}
    if count is not None:
        figures["verdict"] = "FITS" if count.fits else "OVER"
    elif verify.get("verdict"):
        figures["verdict"] = verify["verdict"]
    if budget is not None:
        figures.update(budget=budget.name, budget_bytes=budget.bytes)
    if count is not None:
        figures.update(total_bytes=count.total, code_bytes=count.code_bytes, model_bytes=count.model_bytes,
                       headroom_bytes=count.headroom)
    bpb, reference = record.get("val_bpb"), record.get("unquantized_val_bpb")
    if isinstance(bpb, (int, float)):
        figures["val_bpb"] = float(bpb)
        if isinstance(reference, (int, float)):
            figures.update(unquantized_val_bpb=float(reference), gap=float(bpb) - float(reference))
        if isinstance(run.get("tokens"), int):
            figures["val_tokens"] = run["tokens"]
    elif source == "submission":
        figures["val_bpb"] = "not scored here (golf verify DIR scores it)"
    return pd.DataFrame({"figure": list(figures), "value": list(figures.values())})


def byte_breakdown(blob: dict | None, count: ByteCount | None, tensors: pd.DataFrame, record: dict,
                   budget: Budget | None) -> pd.DataFrame:
    """Bytes per part of the submission: weights codes (passthrough values included), scales,
    LQER factors, container (header, manifest, checksum), other model files, code. From the
    blob and the count when a submission was found (then the parts sum to the counted total);
    else the tensors' bytes and the recorded code bytes."""
    if blob and count is not None:
        rows = blob["tensors"]
        parts = [("weights codes", sum(r["codes_bytes"] for r in rows)), ("scales", sum(r["scales_bytes"] for r in rows)),
                 ("LQER factors", sum(r["lqer_bytes"] for r in rows)), ("container", blob["totals"]["overhead_bytes"])]
        other = count.model_bytes - blob["totals"]["blob_bytes"]
        if other:
            parts.append(("other model files", other))
        parts.append(("code", count.code_bytes))
    else:
        parts = [("tensors (as recorded)", int(pd.to_numeric(tensors["bytes"], errors="coerce").fillna(0).sum()))]
        if isinstance(record.get("code_bytes"), int):
            parts.append(("code", record["code_bytes"]))
    total = sum(v for _, v in parts)
    return pd.DataFrame({"part": [p for p, _ in parts], "bytes": pd.array([v for _, v in parts], dtype="Int64"),
                         "share_of_total": [v / total if total else float("nan") for _, v in parts],
                         "share_of_budget": [v / budget.bytes if budget else float("nan") for _, v in parts]})


def details(record: dict, blob: dict | None, count: ByteCount | None, source: str,
            submission: str | None = None) -> pd.DataFrame:
    """The rest worth knowing, chosen (never a flattened dump, never a temporary path);
    `submission` is the submission folder relative to the report's source folder."""
    f: dict = {}
    if source == "fit":
        f["checkpoint"] = record.get("checkpoint")
        f["submission"] = f"{submission}/ (in the fit folder)" if submission not in (None, ".") else None
        solver = record.get("solver") or {}
        if solver:
            f["solver"] = f"{solver.get('method')} ({'proven optimal' if solver.get('optimal') else 'not proven optimal'})"
        f["predicted total (bytes)"] = record.get("predicted_total")
        f["predicted Δloss, Σ over tensors (nats)"] = record.get("predicted_dloss")
        if record.get("rounds"):
            f["pack rounds"] = len(record["rounds"])
        ms = record.get("measure") or {}
        if ms:
            f["measure"] = (f"{ms.get('tensors')} tensors, {ms.get('measured', 0):,} candidates measured, "
                            f"{ms.get('cached', 0):,} from cache, {ms.get('seconds', 0):.1f} s")
        verify = record.get("verify") or {}
        run = verify.get("run") or {}
        if run:
            f["scoring"] = (f"{run.get('mode')} seq_len {run.get('seq_len')}"
                            f"{' stride ' + str(run['stride']) if run.get('stride') else ''}, "
                            f"{run.get('tokens', 0):,} tokens / {run.get('bytes', 0):,} bytes on {run.get('device')}")
        f["unquantized reference"] = record.get("unquantized_source")
        if isinstance(record.get("seconds"), (int, float)):
            f["fit time (s)"] = round(float(record["seconds"]), 1)
    else:
        for key in ("recipe", "budget", "calibration_data"):
            f[key] = record.get(key)
        ckpt = record.get("checkpoint")
        if isinstance(ckpt, dict):
            f["checkpoint"] = f"{ckpt.get('file')} (sha256 {str(ckpt.get('sha256'))[:12]}…)"
        f["predicted tensor bytes (size models, each part alone)"] = record.get("predicted_tensor_bytes")
    if blob:
        t = blob["totals"]
        f["blob (bytes)"] = t["blob_bytes"]
        f["tensors in the blob"] = t["tensors"]
        f["parameters"] = t["params"]
        f["bits per weight (whole blob)"] = round(t["bits_per_weight"], 4)
    if count is not None:
        f["files counted"] = ", ".join(f"{p} {b:,}" for p, b, role in count.files if role != "not counted")
    f = {k: v for k, v in f.items() if v is not None}
    return pd.DataFrame({"figure": list(f), "value": [str(v) if not isinstance(v, numbers.Number) else v
                                                      for v in f.values()]})


def _comparison(folder: Path, record: dict) -> pd.DataFrame | None:
    """The fit's comparison (fit.json "compare": each recipe beside the fit at its bytes), else
    `golf compare --csv`'s table (compare.csv), columns in their fixed order; `attrs` say which."""
    block = record.get("compare")
    if isinstance(block, dict) and isinstance(block.get("rows"), list) and block["rows"]:
        frame = pd.DataFrame(block["rows"])
        columns = [c for c in AT_BYTES_COLUMNS if c in frame] + [c for c in frame if c not in AT_BYTES_COLUMNS]
        frame = frame[columns]
        frame.attrs = {"kind": "at_recipe_bytes", "tokens": block.get("tokens"),
                       "reference_val_bpb": block.get("reference_val_bpb")}
        return frame
    if (folder / "compare.csv").is_file():
        frame = _read_csv(folder / "compare.csv")
        columns = [c for c in RECIPE_COLUMNS if c in frame] + [c for c in frame if c not in RECIPE_COLUMNS]
        frame = frame[columns]
        frame.attrs = {"kind": "recipes"}
        return frame
    return None


# ------------------------------------------------------------------------------ formatting

def _missing(value) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _fmt(value, column: str = "") -> str:
    """One table cell for display: integers with separators, shares as %, val_bpb to 6
    decimals, gaps signed, bits per weight to 3 decimals, other reals to 4 significant digits."""
    if _missing(value):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if not isinstance(value, numbers.Real):
        return str(value)
    v = float(value)
    if column.startswith("share"):
        return f"{100 * v:.2f}%"
    if column.endswith("val_bpb"):
        return f"{v:.6f}"
    if column.endswith("gap") or column == "fit_minus_recipe":
        return f"{v:+.6f}"
    if column == "bits_per_weight":
        return f"{v:.3f}"
    if isinstance(value, numbers.Integral) or (v.is_integer() and (column in _INT_COLUMNS or "bytes" in column
                                                                   or column == "headroom")):
        return f"{int(v):,}"
    return f"{v:.4g}"


def _fmt_figure(name: str, value) -> str:
    """A headline figure: byte counts with separators, val_bpb and the gap to 8 decimals."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        if name == "gap":
            return f"{value:+.8f}"
        if name.endswith("val_bpb"):
            return f"{value:.8f}"
        if isinstance(value, numbers.Integral):
            return f"{int(value):,}"
    return _fmt(value, name)


def formatted(frame: pd.DataFrame) -> pd.DataFrame:
    """A table as display strings with titled columns (units included); empty columns dropped."""
    out = pd.DataFrame({COLUMN_TITLES.get(str(c), str(c)): [_fmt(v, str(c)) for v in frame[c].tolist()]
                        for c in frame.columns})
    return out[[c for c in out.columns if (out[c] != "").any() or c == "name"]]


def _figures_table(frame: pd.DataFrame, titles: dict | None = None) -> pd.DataFrame:
    titles = titles or {}
    return pd.DataFrame({"figure": [titles.get(f, f) for f in frame["figure"]],
                         "value": [_fmt_figure(str(f), v) for f, v in zip(frame["figure"], frame["value"])]})


def verdict_line(tables: dict[str, pd.DataFrame]) -> str:
    """One sentence: the verdict, bytes against the budget, headroom, val_bpb and the gap."""
    h = dict(zip(tables["headline"]["figure"], tables["headline"]["value"]))
    parts = [str(h.get("verdict", "not packed"))]
    if "total_bytes" in h and "budget_bytes" in h:
        parts.append(f"{h['total_bytes']:,} of {h['budget_bytes']:,} bytes ({h['budget']}), "
                     f"headroom {h['headroom_bytes']:,}")
    if isinstance(h.get("val_bpb"), float):
        bpb = f"val_bpb {h['val_bpb']:.8f}"
        if "gap" in h:
            bpb += f" (unquantized {h['unquantized_val_bpb']:.8f}, gap {h['gap']:+.8f})"
        parts.append(bpb)
    return " — ".join(parts)


def _tensor_display(tensors: pd.DataFrame) -> pd.DataFrame:
    """The per-tensor table as shown (bits and LQER rank are in the scheme), with a total row."""
    shown = tensors.drop(columns=[c for c in ("bits", "lqer_rank") if c in tensors and "scheme" in tensors])
    total = {"name": "all tensors", "params": int(shown["params"].fillna(0).sum()),
             "bytes": int(shown["bytes"].fillna(0).sum())}
    # Σ Δloss is the loss model's total; distortions of different tensors do not add up to anything
    for column in ("predicted_dloss", "measured_dloss", "share_of_budget", "predicted_bytes"):
        if column in shown and shown[column].notna().any():
            total[column] = shown[column].astype(float).fillna(0).sum()
    body = formatted(shown)
    foot = formatted(pd.DataFrame([{c: total.get(c) for c in shown.columns}]).astype(object))
    return pd.concat([body, foot[[c for c in body.columns if c in foot]]], ignore_index=True).fillna("")


def _compare_heading(compare: pd.DataFrame) -> tuple[str, str]:
    """(heading, caption) of the comparison section: what was compared, on which tokens."""
    a = compare.attrs
    if a.get("kind") == "at_recipe_bytes":
        tokens = f"{a['tokens']:,} val tokens" if a.get("tokens") else "the val tokens"
        ref = f", where the unquantized model scores val_bpb {a['reference_val_bpb']:.6f}" \
            if a.get("reference_val_bpb") else ""
        return ("Each recipe beside the fit at that recipe's bytes",
                f"The fit re-solved from the measurement cache at exactly each recipe's counted total; both "
                f"scored on the same {tokens}{ref}; gaps are against that.")
    return ("Recipes compared", "golf compare: bytes as counted, val_bpb, gap to the unquantized model on the "
                                "same tokens.")


def _sections(tables: dict[str, pd.DataFrame]) -> list[tuple[str, str, pd.DataFrame | None, str | None]]:
    """(heading, caption, table of strings, plot stem shown after it) in the order both documents
    show them."""
    sections = [("Verdict", "", _figures_table(tables["headline"], HEADLINE_TITLES), None),
                ("Byte breakdown", "", formatted(tables["breakdown"]), "byte_breakdown"),
                ("Per-tensor table", "Bytes are each tensor's exact share of the shipped blob; predicted Δloss "
                                     "is the fit's loss model, distortion its input.",
                 _tensor_display(tables["tensors"]), None),
                ("Predicted Δloss per layer and matrix", "", None, "dloss_heatmap"),
                ("Rate–distortion per tensor kind", "", None, "rate_distortion"),
                ("Bytes and bits per layer", "", None, "layers")]
    if "compare" in tables and len(tables["compare"]):
        sections.append((*_compare_heading(tables["compare"]), formatted(tables["compare"]), None))
    sections.append(("Details", "", _figures_table(tables["details"]), None))
    return sections


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of a DataFrame of strings."""
    def row(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
    lines = [row(frame.columns), "|" + "|".join("---" for _ in frame.columns) + "|"]
    lines += [row(r) for r in frame.itertuples(index=False)]
    return "\n".join(lines)


def html_table(frame: pd.DataFrame, totals: bool = False) -> str:
    """An HTML table of a DataFrame of strings (`totals`: its last row is a total, set in bold)."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>"
                   for r in frame.itertuples(index=False))
    cls = ' class="totals"' if totals else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# ------------------------------------------------------------------------------ writing

_CSS = """body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:12px}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#f0f0f0;position:sticky;top:0}
td:first-child,th:first-child{text-align:left}
tr:nth-child(even){background:#fafafa}
table.totals tbody tr:last-child{font-weight:600}
img{max-width:100%;border:1px solid #ddd;margin:0.5em 0 1.5em}
h2{border-bottom:1px solid #ddd;padding-bottom:0.2em;margin-top:1.6em}
.verdict{font-size:18px;font-weight:600;padding:0.6em 0.9em;border-radius:4px;display:inline-block}
.FITS{background:#e3f4e1;color:#1b5e20}.OVER{background:#fde2e1;color:#b71c1c}"""


def write_report(folder, tables: dict[str, pd.DataFrame], title: str | None = None) -> dict[str, Path]:
    """Write report.csv (per-tensor), report.md, report.html (self-contained, plots inline)
    and report_<plot>.png into `folder`; return {'csv'|'md'|'html'|<plot stem>: path}."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ArtifactError(f"{folder}: cannot create the report folder: {exc.strerror or exc}") from None
    title = title or f"Fit report: {folder.name}"
    head = dict(zip(tables["headline"]["figure"], tables["headline"]["value"]))
    pngs = {stem: png_bytes(fig) for stem, fig in all_plots(tables, head.get("budget_bytes")).items()}
    paths = {"csv": folder / "report.csv", "md": folder / "report.md", "html": folder / "report.html"}
    atomic_write(paths["csv"], tables["tensors"].to_csv(index=False, lineterminator="\n"))
    sections, verdict = _sections(tables), verdict_line(tables)
    md = [f"# {title}", "", f"**{verdict}**", ""]
    body = [f"<h1>{html.escape(title)}</h1>",
            f'<p class="verdict {html.escape(str(head.get("verdict", "")))}">{html.escape(verdict)}</p>']
    for heading, caption, table, stem in sections:
        md += [f"## {heading}", ""] + ([caption, ""] if caption else [])
        body.append(f"<h2>{html.escape(heading)}</h2>")
        if caption:
            body.append(f"<p>{html.escape(caption)}</p>")
        if table is not None:
            md += [markdown_table(table), ""]
            body.append(html_table(table, totals=heading == "Per-tensor table"))
        if stem is not None:
            alt = html.escape(PLOT_TITLES[stem])
            md += [f"![{PLOT_TITLES[stem]}](report_{stem}.png)", ""]
            body.append(f'<img alt="{alt}" src="data:image/png;base64,{base64.b64encode(pngs[stem]).decode("ascii")}">')
    atomic_write(paths["md"], "\n".join(md))
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    atomic_write(paths["html"], page)
    for stem, png in pngs.items():
        paths[stem] = folder / f"report_{stem}.png"
        atomic_write(paths[stem], png)
    return paths


def default_out(folder) -> Path:
    """Where `golf report DIR` writes: DIR itself, unless DIR is a submission (whose every
    file is counted), then the sibling DIR-report."""
    folder = Path(folder)
    return folder.with_name(folder.name + "-report") if is_submission(folder) else folder
