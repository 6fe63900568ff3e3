"""`golf fit`: the lowest-loss artifact of a checkpoint that fits a byte budget, proven.

    golf fit [CKPT] [--budget NAME|BYTES] [--out DIR] [--data DIR] [--pin NAME=LABEL ...]
             [--dry-run] [--compact] [--cache DIR] [--jobs N] [--json]
             [--model FILE.py:NAME] [--model-config FILE] [--set KEY=VALUE ...] [--code-file PATH ...]

calibrate + measure (cached) → solve + pack + repair → write the submission to OUT/submission →
verify it in a fresh process (artifact.pipeline) → set each of a few recipes beside the fit
re-solved at that recipe's bytes (analysis.compare) → report. Each stage prints a numbered
header and its progress on stderr. OUT also
gets fit.json, tensors.csv, candidates.csv (every measured candidate, the chosen ones marked:
the report's rate–distortion curves) and recipe.toml (the fit's choice as a recipe file); they
live beside the submission folder, not in it, so they are never counted against the budget.
"""

from __future__ import annotations

import time
from pathlib import Path

from analysis.cliutil import (Meter, Stages, add_code_file_flag, add_code_form_flags, add_json_flag, add_model_flags,
                              default_budget, emit, model_spec, say, say_model)
from analysis.compare import compare_at_recipe_bytes
from analysis.fit_tables import CANDIDATE_COLUMNS, CSV_COLUMNS, candidate_rows, tensor_rows, write_csv
from analysis.report import load_fit_tables, write_report
from artifact.budget import resolve_budget
from artifact.container import inspect as inspect_blob
from artifact.measure import Choice
from artifact.pipeline import FIT_FORMAT, EvalSetup, check_fit_out, fit_checkpoint, prepare, score
from artifact.recipe import load_recipe
from artifact.runtime.errors import ConfigError, GolfError
from artifact.runtime.files import atomic_write_json
from artifact.runtime.scoring import val_stream
from artifact.submission import BLOB
from train.bundled import BUNDLED_CHECKPOINT, BUNDLED_DATA

DEFAULT_OUT = "runs/fit"
DEFAULT_CACHE = "runs/fit-cache"
DEFAULT_COMPARE = "record-1855,seed-004,seed-003"
DEFAULT_COMPARE_TOKENS = 32768


FIT_STAGES = ("calibrate", "measure", "solve", "verify", "compare", "report")


def add_arguments(p) -> None:
    p.add_argument("checkpoint", nargs="?", default=None, metavar="CKPT",
                   help="checkpoint folder, .pt or .safetensors file (default: the bundled checkpoint)")
    p.add_argument("--budget", default=None, metavar="NAME|BYTES",
                   help="budget name in budgets.toml or a byte count (default: demo for the bundled checkpoint, "
                        "else track_10min_16mb)")
    p.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                   help=f"fit folder; the submission goes to DIR/submission (default: {DEFAULT_OUT})")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="data root for calibration and val (default: the bundled data)")
    p.add_argument("--pin", action="append", default=[], metavar="NAME=LABEL",
                   help="restrict a tensor to candidates whose label has these '/'-separated fields "
                        "(e.g. tok_emb.weight=int8, or a full label int6/sdclip:12.85/gptq/r0/p0/ans); "
                        "repeatable (default: none)")
    p.add_argument("--dry-run", action="store_true",
                   help="predicted bytes and loss only, write nothing (default: off)")
    add_code_form_flags(p)
    p.add_argument("--cache", default=DEFAULT_CACHE, metavar="DIR",
                   help=f"measurement cache folder (default: {DEFAULT_CACHE})")
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="worker processes measuring tensors (default: the CPU count, at most 8)")
    p.add_argument("--max-tokens", type=int, default=None, metavar="N",
                   help="verify on only the first N val tokens (default: all)")
    p.add_argument("--compare", default=DEFAULT_COMPARE, metavar="RECIPES",
                   help=f"comma-separated recipes to set beside the fit at each recipe's bytes, '' to skip "
                        f"(default: {DEFAULT_COMPARE})")
    p.add_argument("--compare-tokens", type=int, default=DEFAULT_COMPARE_TOKENS, metavar="N",
                   help=f"val tokens the comparison scores, 0 = all (default: {DEFAULT_COMPARE_TOKENS})")
    add_model_flags(p)
    add_code_file_flag(p)
    add_json_flag(p)


def parse_pins(items: list[str]) -> dict[str, str]:
    pins = {}
    for item in items:
        name, sep, label = item.partition("=")
        if not sep or not name or not label:
            raise ConfigError(f"--pin {item!r}: expected NAME=LABEL (e.g. tok_emb.weight=int8)")
        pins[name] = label
    return pins


def run(args) -> int:
    t0 = time.perf_counter()
    budget = resolve_budget(args.budget or default_budget(args.checkpoint))
    pins = parse_pins(args.pin)
    val_data = args.data or BUNDLED_DATA
    spec = model_spec(args)
    if not args.dry_run:
        check_fit_out(args.out)  # before minutes of measuring
    skip = {"verify", "compare", "report"} if args.dry_run else set() if args.compare else {"compare"}
    stages = Stages([s for s in FIT_STAGES if s not in skip], "fit")
    p = prepare(args.checkpoint or BUNDLED_CHECKPOINT, val_data, args.cache, progress=stages.meter, jobs=args.jobs,
                model=spec, log=say)
    say_model(p["loaded"])
    label = str(args.budget) if args.budget is not None else budget.name
    fr = fit_checkpoint(p, budget, args.out, val_data, pins, args.dry_run, args.compact, args.max_tokens,
                        budget_label=label, log=say, code_files=args.code_file, progress=stages.meter)
    result = fit_record(p, fr, budget, val_data, args.checkpoint, args.max_tokens)
    if not args.dry_run and args.compare:
        names = [r.strip() for r in args.compare.split(",") if r.strip()]
        fitting = [n for n in names if _plans(n, p["state"])]
        for n in sorted(set(names) - set(fitting)):
            say(f"fit: recipe {n} does not apply to this model's tensors; left out of the comparison")
        tokens = f"{args.compare_tokens:,}" if args.compare_tokens else "all"
        stages.start("compare", f"{', '.join(fitting) or 'no fixed recipe'}, each beside the fit at its bytes, "
                                f"on {tokens} val tokens")
        result["compare"] = compare_at_recipe_bytes(p, fitting, val_data, budget, args.compare_tokens or None,
                                                    args.compact, progress=Meter("compare", results=True),
                                                    code_files=args.code_file)
    result["seconds"] = time.perf_counter() - t0
    if not args.dry_run:
        stages.start("report")
        write_fit_folder(Path(args.out), result, candidate_rows(p["measurement"], fr.result.choices))
    emit(result, args.json, _text)
    return 0


def _plans(recipe: str, state) -> bool:
    """Whether `recipe` can plan the model's tensors (the bundled recipes name golf's GPT's)."""
    try:
        load_recipe(recipe).plan(state)
        return True
    except GolfError:
        return False


def fit_record(p: dict, fr, budget, val_data, checkpoint=None, max_tokens: int | None = None) -> dict:
    """fit.json: what was fitted, the choice per tensor (bytes as shipped when written), the
    verdict of the fresh-process verify, and the unquantized model's val_bpb on the tokens
    verify scored (the gap's reference)."""
    res, m = fr.result, p["measurement"]
    shipped = None
    if not res.dry_run:
        shipped = {r["name"]: r["bytes"] for r in inspect_blob(fr.submission / BLOB)["tensors"]}
    result = {"checkpoint": str(checkpoint or "bundled"), "model": p["loaded"].report(),
              "budget": budget.name, "limit": budget.bytes,
              "dry_run": res.dry_run, "code_bytes": fr.code_bytes, "predicted_total": res.predicted_total,
              "predicted_dloss": res.predicted_loss, "solver": {"method": res.solution.method,
                                                                 "optimal": res.solution.optimal},
              "measure": m.stats, "rounds": res.rounds, "tensors": tensor_rows(m, res.choices, budget.bytes, shipped)}
    if not res.dry_run:
        v = fr.verify
        reference, source = unquantized_reference(p, v.run, val_data, max_tokens)
        result.update({"submission": str(fr.submission), "real_total": fr.real_total, "verify": v.to_dict(),
                       "val_bpb": v.val_bpb, "line": v.line(), "unquantized_val_bpb": reference,
                       "unquantized_source": source})
    return result


def unquantized_reference(p: dict, run: dict, val_data, max_tokens: int | None) -> tuple[float, str]:
    """The unquantized checkpoint's val_bpb on exactly the tokens verify scored: the figure stored
    in the checkpoint when it was scored on as many tokens and bytes at the same seq_len, else
    scored here (the same flat windows)."""
    meta = p["meta"] or {}
    if (isinstance(meta.get("val_bpb"), float) and meta.get("seq_len") == run.get("seq_len") == p["seq_len"]
            and (meta.get("val_tokens"), meta.get("val_bytes")) == (run.get("tokens"), run.get("bytes"))
            and not run.get("stride")):
        return meta["val_bpb"], "the checkpoint's stored figure (same tokens, bytes and windows)"
    say("fit: scoring the unquantized checkpoint on the same tokens (the gap's reference)")
    loaded = p["loaded"]
    setup = EvalSetup(p["model"], val_stream(val_data, int(loaded.vocab_size), max_tokens), p["seq_len"], loaded)
    return score(setup, device="cpu").val_bpb, "scored here on the same tokens"


def write_fit_folder(out: Path, result: dict, candidates: list[dict]) -> None:
    """fit.json + tensors.csv + candidates.csv, then the report (CSV, Markdown, self-contained
    HTML with plots)."""
    atomic_write_json(out / "fit.json", {"format": FIT_FORMAT, **result}, indent=1)
    write_csv(out / "tensors.csv", CSV_COLUMNS, result["tensors"])
    write_csv(out / "candidates.csv", CANDIDATE_COLUMNS, candidates)
    paths = write_report(out, load_fit_tables(out))
    result["report"] = str(paths["html"])


def _text(r: dict) -> str:
    width = max(len(t["name"]) for t in r["tensors"])
    what = "bytes" if r["dry_run"] else "shipped"
    lines = [f"{'tensor':<{width}}  {'choice':<42} {'params':>8} {what:>8} {'bits/w':>6} {'pred Δloss':>10}"]
    for t in r["tensors"]:
        label = Choice(t["bits"], t["clip"], t["gptq"], t["lqer_rank"], t["codec"], t["prune"], t.get("rd", 0.0)).label
        lines.append(f"{t['name']:<{width}}  {label:<42} {t['params']:>8,} {t['bytes']:>8,} "
                     f"{t['bits_per_weight']:>6.3f} {t['predicted_dloss']:>10.6f}")
    ms = r["measure"]
    lines += ["", f"measure      {ms['tensors']} tensors, {ms['measured']:,} candidates measured, {ms['cached']:,} "
                  f"from cache, {ms['seconds']:.1f} s",
              f"solver       {r['solver']['method']} (optimal={r['solver']['optimal']}); code {r['code_bytes']:,} B",
              f"predicted    total {r['predicted_total']:,} B of {r['limit']:,} ({r['budget']}), "
              f"Δloss {r['predicted_dloss']:.6f} nats"]
    if r["dry_run"]:
        return "\n".join(lines + ["dry run: nothing written"])
    lines.append(f"real         total {r['real_total']:,} B (predicted {r['predicted_total']:,}, "
                 f"{len(r['rounds'])} pack round(s))")
    if r.get("unquantized_val_bpb") is not None:
        lines.append(f"val_bpb      {r['val_bpb']:.8f} (unquantized {r['unquantized_val_bpb']:.8f}, "
                     f"gap {r['val_bpb'] - r['unquantized_val_bpb']:+.8f})")
    if r.get("compare"):
        c = r["compare"]
        lines += ["", f"each recipe beside the fit at that recipe's bytes ({c['tokens']:,} val tokens; "
                      f"unquantized {c['reference_val_bpb']:.6f} on them):",
                  f"{'recipe':<22} {'bytes':>11} {'val_bpb':>9} {'fit bytes':>11} {'fit val_bpb':>11} {'fit-recipe':>10}"]
        for row in c["rows"]:
            fit_part = (f"{row['fit_bytes']:>11,} {row['fit_val_bpb']:>11.6f} {row['fit_minus_recipe']:>+10.6f}"
                        if "fit_val_bpb" in row else f"  {row['note']}")
            lines.append(f"{row['recipe']:<22} {row['recipe_bytes']:>11,} {row['recipe_val_bpb']:>9.6f} {fit_part}")
    lines += ["", f"wrote        {r['submission']} (+ fit.json, tensors.csv, candidates.csv, recipe.toml beside it)",
              f"report       {r.get('report', '-')}",
              f"time         {r['seconds']:.1f} s", r["line"]]
    return "\n".join(lines)
