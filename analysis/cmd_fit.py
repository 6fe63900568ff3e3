"""`golf fit`: the lowest-loss artifact of a checkpoint that fits a byte budget, proven.

    golf fit [CKPT] [--budget NAME|BYTES] [--out DIR] [--data DIR] [--pin NAME=LABEL ...]
             [--dry-run] [--compact] [--cache DIR] [--jobs N] [--json]

measure (cached) → solve + pack + repair → write the submission to OUT/submission → verify it in
a fresh process (artifact.pipeline) → compare with fixed recipes (analysis.compare). OUT also
gets fit.json, tensors.csv, candidates.csv (every measured candidate, the chosen ones marked:
the report's rate–distortion curves) and recipe.toml (the fit's choice as a recipe file); they
live beside the submission folder, not in it, so they are never counted against the budget.
"""

from __future__ import annotations

import time
from pathlib import Path

from analysis.cliutil import Meter, add_code_form_flags, add_json_flag, emit, say
from analysis.compare import compare_recipes
from analysis.fit_tables import CANDIDATE_COLUMNS, CSV_COLUMNS, candidate_rows, tensor_rows, write_csv
from analysis.report import load_fit_tables, write_report
from artifact.budget import resolve_budget
from artifact.measure import Choice
from artifact.pipeline import fit_checkpoint, prepare
from artifact.runtime.errors import ConfigError
from artifact.runtime.files import atomic_write_json
from train.bundled import BUNDLED_CHECKPOINT, BUNDLED_DATA

DEFAULT_OUT = "runs/fit"
DEFAULT_CACHE = "runs/fit-cache"
DEFAULT_COMPARE = "record-1855,seed-004,seed-003"


def add_arguments(p) -> None:
    p.add_argument("checkpoint", nargs="?", default=None, help="checkpoint (default: the bundled one)")
    p.add_argument("--budget", default=None, help="budget name in budgets.toml or a byte count (default: demo)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"fit folder; the submission goes to OUT/submission "
                                                      f"(default: {DEFAULT_OUT})")
    p.add_argument("--data", default=None, help="data root for calibration and val (default: bundled data)")
    p.add_argument("--pin", action="append", default=[], metavar="NAME=LABEL",
                   help="restrict a tensor to candidates whose label has these '/'-separated fields "
                        "(e.g. tok_emb.weight=int8, or a full label int6/sdclip:12.85/gptq/r0/ans)")
    p.add_argument("--dry-run", action="store_true", help="predicted bytes and loss only: no submission")
    add_code_form_flags(p)
    p.add_argument("--cache", default=DEFAULT_CACHE, help=f"measurement cache folder (default: {DEFAULT_CACHE})")
    p.add_argument("--jobs", type=int, default=None,
                   help="worker processes measuring tensors (default: the CPU count, at most 8)")
    p.add_argument("--max-tokens", type=int, default=None, help="verify on only the first N val tokens")
    p.add_argument("--compare", default=DEFAULT_COMPARE,
                   help=f"recipes to compare with ('' to skip); scored on --compare-tokens val tokens "
                        f"(default: {DEFAULT_COMPARE})")
    p.add_argument("--compare-tokens", type=int, default=32768, help="val prefix for the comparison (default: 32768)")
    add_json_flag(p)


def parse_pins(items: list[str]) -> dict[str, str]:
    pins = {}
    for item in items:
        name, sep, label = item.partition("=")
        if not sep or not name or not label:
            raise ConfigError(f"--pin {item!r}: expected NAME=LABEL (e.g. tok_emb.weight=int8)")
        pins[name] = label
    return pins


def stage_meter(stage: str) -> Meter:
    """The progress meter of a pipeline stage ("calibrate", "measure")."""
    return Meter(stage)


def run(args) -> int:
    t0 = time.perf_counter()
    budget = resolve_budget(args.budget)
    pins = parse_pins(args.pin)
    val_data = args.data or BUNDLED_DATA
    p = prepare(args.checkpoint or BUNDLED_CHECKPOINT, val_data, args.cache, progress=stage_meter, jobs=args.jobs)
    label = str(args.budget) if args.budget is not None else budget.name
    fr = fit_checkpoint(p, budget, args.out, val_data, pins, args.dry_run, args.compact, args.max_tokens,
                        budget_label=label, log=say)
    res, m = fr.result, p["measurement"]
    result = {"checkpoint": str(args.checkpoint or "bundled"), "budget": budget.name, "limit": budget.bytes,
              "dry_run": args.dry_run, "code_bytes": fr.code_bytes, "predicted_total": res.predicted_total,
              "predicted_dloss": res.predicted_loss, "solver": {"method": res.solution.method,
                                                                 "optimal": res.solution.optimal},
              "measure": m.stats, "rounds": res.rounds, "tensors": tensor_rows(m, res.choices, budget.bytes)}
    if not args.dry_run:
        v = fr.verify
        result.update({"submission": str(fr.submission), "real_total": fr.real_total, "verify": v.to_dict(),
                       "val_bpb": v.val_bpb, "line": v.line(),
                       "unquantized_val_bpb": (p["meta"] or {}).get("val_bpb") if not args.max_tokens else None})
        if args.compare:
            result["compare"] = _compare(args, fr.recipe_file, budget)
    result["seconds"] = time.perf_counter() - t0
    if not args.dry_run:
        _write_reports(Path(args.out), result, candidate_rows(m, res.choices))
    emit(result, args.json, _text)
    return 0


def _compare(args, recipe_file: Path, budget) -> list[dict]:
    names = [r.strip() for r in args.compare.split(",") if r.strip()]
    say(f"fit: comparing with {', '.join(names)} on {args.compare_tokens:,} val tokens")
    table = compare_recipes(args.checkpoint or BUNDLED_CHECKPOINT, names + [str(recipe_file)],
                            args.data or BUNDLED_DATA, budget.bytes, max_tokens=args.compare_tokens,
                            compact=args.compact, log=say)

    def plain(k, v):
        if isinstance(v, float) and v != v:
            return None  # NaN: the unquantized row has no bytes
        return int(v) if k.endswith("bytes") or k == "headroom" else v
    return [{k: plain(k, v) for k, v in row.items()} for row in table.to_dict(orient="records")]


def _write_reports(out: Path, result: dict, candidates: list[dict]) -> None:
    """fit.json + tensors.csv + candidates.csv, then the report (CSV, Markdown, self-contained
    HTML with plots)."""
    atomic_write_json(out / "fit.json", result, indent=1)
    write_csv(out / "tensors.csv", CSV_COLUMNS, result["tensors"])
    write_csv(out / "candidates.csv", CANDIDATE_COLUMNS, candidates)
    paths = write_report(out, load_fit_tables(out))
    result["report"] = str(paths["html"])


def _text(r: dict) -> str:
    width = max(len(t["name"]) for t in r["tensors"])
    lines = [f"{'tensor':<{width}}  {'choice':<42} {'params':>8} {'bytes':>8} {'bits/w':>6} {'pred dloss':>10}"]
    for t in r["tensors"]:
        label = Choice(t["bits"], t["clip"], t["gptq"], t["lqer_rank"], t["codec"], t["prune"], t.get("rd", 0.0)).label
        lines.append(f"{t['name']:<{width}}  {label:<42} {t['params']:>8,} {t['bytes']:>8,} "
                     f"{t['bits_per_weight']:>6.3f} {t['predicted_dloss']:>10.5f}")
    ms = r["measure"]
    lines += ["", f"measure      {ms['tensors']} tensors, {ms['measured']} candidates measured, {ms['cached']} "
                  f"from cache, {ms['seconds']:.1f} s",
              f"solver       {r['solver']['method']} (optimal={r['solver']['optimal']}); code {r['code_bytes']:,} B",
              f"predicted    total {r['predicted_total']:,} B of {r['limit']:,} ({r['budget']}), "
              f"Δloss {r['predicted_dloss']:.5f} nats"]
    if r["dry_run"]:
        return "\n".join(lines + ["dry run: nothing written"])
    lines.append(f"real         total {r['real_total']:,} B (predicted {r['predicted_total']:,}, "
                 f"{len(r['rounds'])} pack round(s))")
    if r.get("unquantized_val_bpb") is not None:
        lines.append(f"val_bpb      {r['val_bpb']:.6f} (unquantized {r['unquantized_val_bpb']:.6f}, "
                     f"gap {r['val_bpb'] - r['unquantized_val_bpb']:+.6f})")
    if r.get("compare"):
        lines += ["", "comparison on a val prefix (fit = recipe.toml):",
                  f"{'recipe':<28} {'total bytes':>12} {'val_bpb':>10} {'gap':>9}  fits"]
        for c in r["compare"]:
            tb = f"{c['total_bytes']:,}" if c.get("total_bytes") is not None else "-"
            fits = "" if c.get("fits") is None else ("yes" if c["fits"] else "NO")
            lines.append(f"{str(c['recipe']):<28} {tb:>12} {c['val_bpb']:>10.6f} {c['gap']:>+9.6f}  {fits}")
    lines += ["", f"wrote        {r['submission']} (+ fit.json, tensors.csv, candidates.csv, recipe.toml beside it)",
              f"report       {r.get('report', '-')}",
              f"time         {r['seconds']:.1f} s", r["line"]]
    return "\n".join(lines)
