"""`golf compare`, `golf rank-check`, `golf report`: recipes side by side, the fit's loss model
checked against real loss, and a fit's report rebuilt (the work: analysis.compare,
analysis.ranking, analysis.report)."""

from __future__ import annotations

from pathlib import Path

from analysis.cliutil import (Meter, add_code_file_flag, add_code_form_flags, add_json_flag, add_model_flags, emit,
                              model_spec, records, say)
from analysis.cmd_fit import DEFAULT_CACHE
from analysis.compare import DEFAULT_RECIPES, compare_recipes
from analysis.ranking import DEFAULT_CONFIGS, DEFAULT_TOKENS, ranking_check
from analysis.report import default_out, load_fit_tables, verdict_line, write_report
from artifact.runtime.files import atomic_write
from train.bundled import BUNDLED_CHECKPOINT, BUNDLED_DATA


# ----------------------------------------------------------------------------- compare
def add_compare_arguments(p) -> None:
    p.add_argument("checkpoint", nargs="?", default=None, metavar="CKPT",
                   help="checkpoint folder or file (default: the bundled checkpoint)")
    p.add_argument("--recipes", default=",".join(DEFAULT_RECIPES), metavar="NAMES",
                   help="comma-separated recipe names or .toml paths (default: every bundled recipe)")
    p.add_argument("--data", default=None, metavar="DIR", help="data folder (default: the bundled data)")
    p.add_argument("--budget", default=None, metavar="NAME|BYTES",
                   help="budget name or bytes: adds fits/headroom columns (default: none)")
    p.add_argument("--max-tokens", type=int, default=None, metavar="N",
                   help="score only a prefix of the val tokens (default: all)")
    add_code_form_flags(p)
    p.add_argument("--csv", type=Path, default=None, metavar="FILE", help="also write the table as CSV (default: no)")
    add_model_flags(p)
    add_code_file_flag(p)
    add_json_flag(p)


def run_compare(args) -> int:
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    table = compare_recipes(args.checkpoint or BUNDLED_CHECKPOINT, recipes, args.data or BUNDLED_DATA, args.budget,
                            args.max_tokens, args.compact, log=say, model=model_spec(args),
                            code_files=args.code_file)
    if args.csv:
        atomic_write(args.csv, table.to_csv(index=False))
    emit({"rows": records(table)}, args.json, lambda _: table.to_string(index=False))
    return 0


# ----------------------------------------------------------------------------- rank-check
def add_rank_check_arguments(p) -> None:
    p.add_argument("checkpoint", nargs="?", default=None, metavar="CKPT",
                   help="checkpoint folder or file (default: the bundled checkpoint)")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="data root for calibration and val (default: the bundled data)")
    p.add_argument("-n", "--configs", type=int, default=DEFAULT_CONFIGS, metavar="N",
                   help=f"random configurations to score (default: {DEFAULT_CONFIGS})")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the random configurations (default: 0)")
    p.add_argument("--max-tokens", type=int, default=DEFAULT_TOKENS, metavar="N",
                   help=f"val prefix scored, 0 = all (default: {DEFAULT_TOKENS})")
    p.add_argument("--cache", default=DEFAULT_CACHE, metavar="DIR", help=f"measurement cache folder (default: {DEFAULT_CACHE})")
    p.add_argument("--around", type=int, default=None, metavar="BYTES",
                   help="draw configurations near the solver's choice for BYTES of quantized tensors "
                        "(default: uniformly over every candidate)")
    add_model_flags(p)
    add_json_flag(p)


def run_rank_check(args) -> int:
    result = ranking_check(args.checkpoint or BUNDLED_CHECKPOINT, args.data or BUNDLED_DATA, args.cache, args.configs,
                           args.seed, args.max_tokens or None, progress=Meter, around=args.around,
                           model=model_spec(args))
    for note in result["model"]["notes"]:
        say(f"model: {note}")
    emit(result, args.json, _rank_text)
    return 0


def _rank_text(r: dict) -> str:
    lines = [f"{'config':>6} {'pred bytes':>10} {'predicted dloss':>15} {'real dloss':>11}"]
    for q in r["pairs"]:
        lines.append(f"{q['config']:>6} {q['predicted_bytes']:>10,} {q['predicted_dloss']:>15.5f} {q['real_dloss']:>11.5f}")
    where = "random" if r.get("around") is None else f"local (around {r['around']:,} B of tensors)"
    lines += ["", f"{r['n_configs']} {where} configurations of {r['checkpoint']}, seed {r['seed']}, "
                  f"{r['val_tokens']:,} val tokens (unquantized loss {r['base_loss']:.5f} nats)",
              f"spearman={r['spearman']:.4f}  pearson={r['pearson']:.4f}  time {r['seconds']:.1f} s"]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- report
def add_report_arguments(p) -> None:
    p.add_argument("folder", metavar="DIR", help="fit folder or submission folder (required)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="report folder (default: the fit folder; DIR-report for a submission)")
    add_json_flag(p)


def run_report(args) -> int:
    tables = load_fit_tables(args.folder)
    out = Path(args.out) if args.out else default_out(args.folder)
    paths = write_report(out, tables, title=f"Fit report: {Path(args.folder).resolve().name}")
    result = {"folder": str(args.folder), "out": str(out), "files": {k: str(v) for k, v in paths.items()},
              "verdict": verdict_line(tables), "tensors": len(tables["tensors"]), "tables": sorted(tables),
              "headline": {r["figure"]: r["value"] for r in records(tables["headline"])},
              "breakdown": records(tables["breakdown"])}
    emit(result, args.json, _report_text)
    return 0


def _report_text(r: dict) -> str:
    lines = [f"report of {r['folder']}: {r['tensors']} tensors; tables {', '.join(r['tables'])}", r["verdict"]]
    lines += [f"  {b['part']:<20} {b['bytes']:>12,} B" for b in r["breakdown"]]
    lines += [f"wrote {path}" for key, path in r["files"].items() if key in ("csv", "md", "html")]
    return "\n".join(lines)
