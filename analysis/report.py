"""`golf report DIR`: a fit's (or a packed submission's) figures as CSV, Markdown and one
self-contained HTML page with plots.

    golf report DIR [--out OUT] [--json]

Sources, read by `load_fit_tables(DIR)`:
- a fit folder (`golf fit --out DIR`): `tensors.csv` (required), `fit.json` (figures),
  `candidates.csv` (rate–distortion curves) and `compare.csv` (`golf compare --csv`), each
  optional; a submission inside it (DIR itself, DIR/submission or any subfolder holding
  `submission.json`) gives the exact byte breakdown from its blob's manifest;
- a submission folder (`golf pack --out DIR`): the per-tensor rows its `submission.json` keeps.

Tables (all pandas DataFrames): `tensors` (one row per tensor: name, layer, kind, params,
chosen config, bytes, bits per weight, share of the budget, distortion, predicted and measured
Δloss), `summary` (figure, value), `breakdown` (part, bytes, share), and when present
`candidates` and `compare`. `write_report(out, tables)` writes report.csv, report.md,
report.html and the plots as PNG files; the HTML embeds the plots (base64) and references
nothing outside itself. A submission's own folder is never written into (every file there
counts against the budget): its report goes to DIR-report unless --out says otherwise.
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

from analysis.fit_tables import layer_and_kind
from analysis.plots import all_plots
from artifact.budget import count_submission, resolve_budget
from artifact.container import inspect as inspect_blob
from artifact.runtime.errors import ArtifactError, ConfigError, DataError
from artifact.runtime.files import atomic_write
from artifact.submission import BLOB, MARKER, is_submission

TENSOR_COLUMNS = ("name", "layer", "kind", "params", "bits", "clip", "gptq", "lqer_rank", "prune", "codec",
                  "bytes", "bits_per_weight", "share_of_budget", "distortion", "predicted_dloss", "measured_dloss")
REPORT_FILES = ("report.csv", "report.md", "report.html")
PLOT_TITLES = {
    "rate_distortion": "Rate–distortion per tensor kind",
    "layers": "Bits and bytes per layer",
    "error_heatmap": "Layer × matrix error",
    "byte_breakdown": "Byte breakdown",
}
_COUNT_COLUMNS = ("params", "layer", "bits", "lqer_rank", "tensors", "pm1_pruned", "group_size")


# ------------------------------------------------------------------------------ loading

def load_fit_tables(folder) -> dict[str, pd.DataFrame]:
    """The report's tables from a fit folder or a submission folder (see the module doc).
    Raises ArtifactError for a folder that holds neither tensors.csv nor submission.json."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactError(f"{folder}: no such folder (expected a fit folder or a submission folder)")
    if (folder / "tensors.csv").is_file():
        tensors = _read_csv(folder / "tensors.csv")
        record = _read_json(folder / "fit.json") if (folder / "fit.json").is_file() else {}
        figures = _flatten(record)
        figures.setdefault("source", "fit")
    elif (folder / MARKER).is_file():
        record = _read_json(folder / MARKER)
        if not isinstance(record.get("tensors"), list) or not record["tensors"]:
            raise ArtifactError(f"{folder / MARKER}: holds no per-tensor rows ('tensors'); repack with `golf pack`")
        tensors = pd.DataFrame(record["tensors"])
        figures = {k: v for k, v in _flatten(record).items() if not k.startswith(("files", "tensors"))}
        figures["source"] = "submission"
        record = {}
    else:
        raise ArtifactError(f"{folder}: not a fit folder (no tensors.csv) nor a submission folder "
                            f"(no {MARKER}); point `golf report` at the folder `golf fit` or `golf pack` wrote")
    budget = _budget_bytes(figures)
    submission = _find_submission(folder)
    blob_rows, blob_totals, code_bytes = _blob_figures(submission, figures) if submission else ({}, {}, None)
    tensors = normalize_tensors(tensors, budget, folder / "tensors.csv", blob_rows)
    tables = {"tensors": tensors}
    for stem in ("candidates", "compare"):
        path = folder / f"{stem}.csv"
        if path.is_file():
            table = _read_csv(path)
            if stem == "candidates":
                table = _with_layer_kind(table, path)
            tables[stem] = table
    if "compare" not in tables and isinstance(record.get("compare"), list) and record["compare"]:
        tables["compare"] = pd.DataFrame(record["compare"])  # `golf fit --compare` keeps its rows in fit.json
    tables["breakdown"] = byte_breakdown(tensors, figures, blob_totals, code_bytes, budget)
    figures.update(_derived_figures(tensors, tables["breakdown"], blob_totals, budget))
    if budget is not None:
        figures["budget_bytes"] = budget
    tables["summary"] = pd.DataFrame({"figure": list(figures), "value": [_cell(v) for v in figures.values()]})
    if "compare" in tables:
        tables["compare"] = _with_fit_row(tables["compare"], figures)
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


def _flatten(data: dict, prefix: str = "") -> dict:
    """Nested figures → {'a.b': scalar}; lists of scalars kept as text, lists of objects dropped."""
    out = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        elif isinstance(value, list):
            if all(not isinstance(v, (dict, list)) for v in value):
                out[name] = ", ".join(str(v) for v in value)
        else:
            out[name] = value
    return out


def _pick(figures: dict, *keys: str):
    """The first figure present under any of `keys` (exact dotted key, then a key's last part)."""
    for key in keys:
        if figures.get(key) is not None:
            return figures[key]
    for key in keys:
        for name, value in figures.items():
            if value is not None and name.rsplit(".", 1)[-1] == key:
                return value
    return None


def _budget_bytes(figures: dict) -> int | None:
    """The byte budget: a number under budget/limit keys, or a budget name resolved."""
    value = _pick(figures, "budget.bytes", "budget_bytes", "budget.limit", "bytes.limit", "limit", "budget")
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    try:
        return resolve_budget(str(value)).bytes
    except ConfigError:
        return None


def _find_submission(folder: Path) -> Path | None:
    """The submission a report describes: the folder itself, DIR/submission, or the first
    subfolder (sorted) holding a submission.json of this tool's format."""
    for candidate in [folder, folder / "submission"] + sorted(p for p in folder.iterdir() if p.is_dir()):
        if is_submission(candidate) and (candidate / "model.blob").is_file():
            return candidate
    return None


def _blob_figures(submission: Path, figures: dict):
    """Per-tensor shipped bytes, blob totals and counted code bytes of a submission folder."""
    report = inspect_blob(submission / BLOB)
    rows = {r["name"]: r for r in report["tensors"]}
    totals = dict(report["totals"])
    for part in ("codes_bytes", "scales_bytes", "lqer_bytes"):
        totals[part] = sum(r[part] for r in report["tensors"])
    try:
        budget = resolve_budget(_budget_bytes(figures))
    except ConfigError:
        budget = resolve_budget(None)
    count = count_submission(submission, budget)
    totals["submission"] = str(submission)
    totals["model_bytes"] = count.model_bytes
    return rows, totals, count.code_bytes


def _with_layer_kind(table: pd.DataFrame, path: Path) -> pd.DataFrame:
    if "name" not in table:
        raise DataError(f"{path}: no 'name' column (columns: {', '.join(map(str, table.columns))})")
    table = table.copy()
    table["name"] = table["name"].astype(str)
    derived = [layer_and_kind(n) for n in table["name"]]
    if "layer" not in table:
        table["layer"] = pd.array([d[0] for d in derived], dtype="Int64")
    if "kind" not in table:
        table["kind"] = [d[1] for d in derived]
    return table


def normalize_tensors(table: pd.DataFrame, budget: int | None = None, path: Path | str = "tensors",
                      blob_rows: dict | None = None) -> pd.DataFrame:
    """The per-tensor table in report shape: every TENSOR_COLUMNS column (missing ones derived
    or empty), then any extra columns the source had. Pack rows ('error') become 'distortion';
    `blob_rows` (container.inspect rows) add the bytes each tensor takes in the shipped blob."""
    t = _with_layer_kind(table, Path(path))
    if "distortion" not in t and "error" in t:
        t = t.rename(columns={"error": "distortion"})
    for column in ("params", "bytes"):
        if column not in t:
            t[column] = pd.NA
    if blob_rows:
        t["shipped_bytes"] = [blob_rows.get(n, {}).get("bytes") for n in t["name"]]
        if pd.to_numeric(t["bytes"], errors="coerce").isna().all():
            t["bytes"] = t["shipped_bytes"]
    nbytes, params = pd.to_numeric(t["bytes"], errors="coerce"), pd.to_numeric(t["params"], errors="coerce")
    if "bits_per_weight" not in t:
        t["bits_per_weight"] = nbytes * 8 / params.where(params > 0)
    if "share_of_budget" not in t:
        t["share_of_budget"] = nbytes / budget if budget else float("nan")
    for column in TENSOR_COLUMNS:
        if column not in t:
            t[column] = float("nan")
    extras = [c for c in t.columns if c not in TENSOR_COLUMNS]
    return t[list(TENSOR_COLUMNS) + extras].reset_index(drop=True)


def byte_breakdown(tensors: pd.DataFrame, figures: dict, blob_totals: dict, code_bytes, budget) -> pd.DataFrame:
    """Bytes per part of the artifact: weights codes (passthrough values included), scales,
    LQER factors, container (manifest + header), code. Exact from the blob when one was found;
    else from the per-tensor parts (or their totals) and the fit's figures."""
    if blob_totals:
        parts = [("weights codes", blob_totals["codes_bytes"]), ("scales", blob_totals["scales_bytes"]),
                 ("LQER factors", blob_totals["lqer_bytes"]), ("container", blob_totals["overhead_bytes"])]
    else:
        columns = {"code_bytes": "weights codes", "scale_bytes": "scales", "lqer_bytes": "LQER factors"}
        if all(c in tensors for c in columns):
            parts = [(label, _total(tensors[c])) for c, label in columns.items()]
        else:
            parts = [("weights (all parts)", _total(tensors["bytes"]))]
        model = _pick(figures, "model_bytes", "measured_model_bytes")
        if model is not None:
            parts.append(("container", int(model) - sum(v for _, v in parts)))
    code = code_bytes if code_bytes is not None else _pick(figures, "code_bytes")
    if code is not None:
        parts.append(("code", int(code)))
    total = sum(v for _, v in parts)
    return pd.DataFrame({"part": [p for p, _ in parts], "bytes": [int(v) for _, v in parts],
                         "share": [v / total if total else float("nan") for _, v in parts],
                         "share_of_budget": [v / budget if budget else float("nan") for _, v in parts]})


def _total(series: pd.Series) -> int:
    return int(pd.to_numeric(series, errors="coerce").fillna(0).sum())


def _derived_figures(tensors: pd.DataFrame, breakdown: pd.DataFrame, blob_totals: dict, budget) -> dict:
    """Totals every report shows whatever the source: tensor count, parameters, bytes."""
    out = {"tensors": len(tensors), "params": _total(tensors["params"]),
           "tensor_bytes (Σ per tensor)": _total(tensors["bytes"]),
           "artifact_bytes (breakdown total)": int(breakdown["bytes"].sum())}
    if blob_totals:
        out["blob_bytes (shipped)"] = blob_totals["blob_bytes"]
        out["model_bytes (counted)"] = blob_totals["model_bytes"]
        code = breakdown.loc[breakdown["part"] == "code", "bytes"]
        if len(code):
            out["code_bytes (counted)"] = int(code.iloc[0])
        out["submission"] = blob_totals["submission"]
    if budget:
        out["headroom_bytes"] = budget - out["artifact_bytes (breakdown total)"]
    return out


def _with_fit_row(compare: pd.DataFrame, figures: dict) -> pd.DataFrame:
    """The comparison table with the fit's own row added when compare.csv lacks one."""
    if "recipe" in compare and (compare["recipe"].astype(str) == "fit").any():
        return compare
    bpb = _pick(figures, "val_bpb", "measured_val_bpb")
    total = _pick(figures, "real_total", "total_bytes", "measured_bytes")
    if figures.get("source") != "fit" or bpb is None or total is None:
        return compare
    reference = _pick(figures, "unquantized_val_bpb", "val_bpb_unquantized", "reference_val_bpb")
    row = {"recipe": "fit", "model_bytes": _pick(figures, "model_bytes", "model_bytes (counted)"),
           "code_bytes": _pick(figures, "code_bytes", "code_bytes (counted)"),
           "total_bytes": total, "val_bpb": bpb, "gap": (bpb - reference) if reference is not None else None}
    return pd.concat([compare, pd.DataFrame([row])], ignore_index=True)


# ------------------------------------------------------------------------------ formatting

def _cell(value):
    """A summary value as a plain scalar (numpy scalars → Python, NaN kept)."""
    return value.item() if hasattr(value, "item") else value


def _fmt(value, column: str = "") -> str:
    """One table cell for display: counts of bytes/params with separators, shares as %."""
    if value is None or value is pd.NA:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return f"{int(value):,}"
    if isinstance(value, numbers.Real):
        v = float(value)
        if math.isnan(v):
            return ""
        if column.startswith("share"):
            return f"{100 * v:.2f}%"
        if v.is_integer() and ("bytes" in column or column in _COUNT_COLUMNS or abs(v) >= 1e5):
            return f"{int(v):,}"
        return f"{v:.5g}"
    return str(value)


def formatted(frame: pd.DataFrame, drop_empty: bool = True) -> pd.DataFrame:
    """A table as display strings (thousands separators, shares as %); empty columns dropped."""
    out = pd.DataFrame({c: [_fmt(v, str(c)) for v in frame[c].tolist()] for c in frame.columns})
    if drop_empty:
        out = out[[c for c in out.columns if (out[c] != "").any() or c == "name"]]
    return out


def _summary_rows(summary: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"figure": summary["figure"],
                         "value": [_fmt(v, str(f)) for f, v in zip(summary["figure"], summary["value"])]})


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of a DataFrame of strings."""
    def row(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
    lines = [row(frame.columns), "|" + "|".join("---" for _ in frame.columns) + "|"]
    lines += [row(r) for r in frame.itertuples(index=False)]
    return "\n".join(lines)


def html_table(frame: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>"
                   for r in frame.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _sections(tables: dict[str, pd.DataFrame]) -> list[tuple[str, pd.DataFrame]]:
    """(heading, table of strings) in the order both documents show them."""
    sections = [("Totals", _summary_rows(tables["summary"])), ("Byte breakdown", formatted(tables["breakdown"]))]
    if "compare" in tables and len(tables["compare"]):
        sections.append(("Comparison at the same bytes (recipe, bytes, val_bpb, gap)", formatted(tables["compare"])))
    sections.append(("Per-tensor table", formatted(tables["tensors"])))
    return sections


# ------------------------------------------------------------------------------ writing

_CSS = """body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:12px}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f0f0f0;position:sticky;top:0}
td:first-child,th:first-child{text-align:left}
tr:nth-child(even){background:#fafafa}
img{max-width:100%;border:1px solid #ddd;margin:0.5em 0 1.5em}
h2{border-bottom:1px solid #ddd;padding-bottom:0.2em;margin-top:1.6em}"""


def write_report(folder, tables: dict[str, pd.DataFrame], title: str | None = None) -> dict[str, Path]:
    """Write report.csv (per-tensor), report.md, report.html (self-contained, plots inline)
    and report_<plot>.png into `folder`; return {'csv'|'md'|'html'|<plot stem>: path}."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ArtifactError(f"{folder}: cannot create the report folder: {exc.strerror or exc}") from None
    title = title or f"Fit report: {folder.name}"
    budget = _pick(dict(zip(tables["summary"]["figure"], tables["summary"]["value"])), "budget_bytes")
    plots = all_plots(tables, int(budget) if budget else None)
    paths = {"csv": folder / "report.csv", "md": folder / "report.md", "html": folder / "report.html"}
    atomic_write(paths["csv"], tables["tensors"].to_csv(index=False, lineterminator="\n"))
    sections = _sections(tables)
    md = [f"# {title}", ""]
    for heading, table in sections:
        md += [f"## {heading}", "", markdown_table(table), ""]
    md += ["## Plots", ""] + [f"![{PLOT_TITLES[s]}](report_{s}.png)" for s in plots] + [""]
    atomic_write(paths["md"], "\n".join(md))
    body = [f"<h1>{html.escape(title)}</h1>"]
    for heading, table in sections[:-1]:
        body += [f"<h2>{html.escape(heading)}</h2>", html_table(table)]
    for stem, png in plots.items():
        data = base64.b64encode(png).decode("ascii")
        alt = html.escape(PLOT_TITLES[stem])
        body += [f"<h2>{alt}</h2>", f'<img alt="{alt}" src="data:image/png;base64,{data}">']
    body += [f"<h2>{html.escape(sections[-1][0])}</h2>", html_table(sections[-1][1])]
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    atomic_write(paths["html"], page)
    for stem, png in plots.items():
        paths[stem] = folder / f"report_{stem}.png"
        atomic_write(paths[stem], png)
    return paths


def default_out(folder) -> Path:
    """Where `golf report DIR` writes: DIR itself, unless DIR is a submission (whose every
    file is counted), then the sibling DIR-report."""
    folder = Path(folder)
    return folder.with_name(folder.name + "-report") if is_submission(folder) else folder
