"""`golf fit`: the lowest-loss artifact of a checkpoint that fits a byte budget, proven.

    golf fit [CKPT] [--budget NAME|BYTES] [--out DIR] [--data DIR] [--pin NAME=LABEL ...]
             [--dry-run] [--compact] [--cache DIR] [--jobs N] [--json]

measure (artifact.measure, cached) → solve + pack + repair (artifact.fit) → write the submission
to OUT/submission → verify it in a fresh process (artifact.verify) → compare with fixed recipes.
OUT also gets fit.json, tensors.csv, candidates.csv (every measured candidate, the chosen ones
marked: the report's rate–distortion curves) and recipe.toml (the fit's choice as a recipe file); they
live beside the submission folder, not in it, so they are never counted against the budget.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

from artifact.budget import count_submission, resolve_budget
from artifact.cliutil import Progress, add_code_form_flags, add_json_flag, emit
from artifact.errors import ArtifactError, ConfigError

DEFAULT_OUT = "runs/fit"
DEFAULT_CACHE = "runs/fit-cache"
DEFAULT_COMPARE = "record-1855,seed-004,seed-003"
PROBE_SEQS = 128
# probe forwards cost ~ seqs x seq_len x params: large models probe on fewer sequences (>= 2) so
# the ~1 probe per tensor stays about as cheap as 32 x 1025 tokens on a 600k-parameter model
PROBE_WORK = 128 * 1025 * 600_000
CALIBRATION_TOKENS = 64 * 1024
CSV_COLUMNS = ("name", "layer", "kind", "params", "bits", "clip", "gptq", "lqer_rank", "prune", "codec", "bytes",
               "bits_per_weight", "share_of_budget", "distortion", "predicted_dloss")
CANDIDATE_COLUMNS = ("name", "kind", "label", "bytes", "distortion", "predicted_dloss", "chosen")


def register(sub) -> None:
    p = sub.add_parser("fit", help="fit a checkpoint into a byte budget at the lowest predicted loss",
                       description=__doc__.split("\n\n")[0])
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
                   help="recipes to compare with ('' to skip); scored on --compare-tokens val tokens")
    p.add_argument("--compare-tokens", type=int, default=32768, help="val prefix for the comparison")
    add_json_flag(p)
    p.set_defaults(run=_run_fit, help_parser=p)
    from analysis.ranking import register as register_rank_check
    register_rank_check(sub)  # `golf rank-check`: predicted vs real Δloss over random configurations
    from analysis.bench_fit import register as register_bench_fit
    register_bench_fit(sub)  # `golf bench-fit`: the fit's timings on a record-scale checkpoint


def parse_pins(items: list[str]) -> dict[str, str]:
    pins = {}
    for item in items:
        name, sep, label = item.partition("=")
        if not sep or not name or not label:
            raise ConfigError(f"--pin {item!r}: expected NAME=LABEL (e.g. tok_emb.weight=int8)")
        pins[name] = label
    return pins


def _probe_loss_fn(model, batches):
    """probe_loss(replaced) → mean loss on `batches` with `replaced` tensors swapped in."""
    params = dict(model.named_parameters())

    @torch.no_grad()
    def probe(replaced: dict) -> float:
        saved = {n: params[n].detach().clone() for n in replaced}
        try:
            for n, w in replaced.items():
                params[n].copy_(w)
            total = 0.0
            for b in batches:
                total += float(model.loss(b[:, :-1], b[:, 1:])) * b.shape[0]
            return total / sum(b.shape[0] for b in batches)
        finally:
            for n, w in saved.items():
                params[n].copy_(w)
    return probe


def probe_seqs(n_params: int, seq_len: int) -> int:
    """Probe sequences for a model of `n_params` at `seq_len` (PROBE_WORK, 2..PROBE_SEQS)."""
    return max(2, min(PROBE_SEQS, PROBE_WORK // max(1, n_params * (seq_len + 1))))


def prepare(checkpoint=None, data=None, cache=DEFAULT_CACHE, grid=None, progress: bool = True,
            jobs: int | None = 1):
    """Load the checkpoint, calibrate (Hessians cached) and measure (`jobs` worker processes,
    None: `measure.default_jobs()`). Returns a dict with model, cfg, meta, state, hessians,
    calibration, measurement, data paths and train seq_len."""
    from analysis.commands import train_seq_len
    from artifact.calibrate import batches_from_tokens
    from artifact.measure import cache_key, default_jobs, measure, state_hash
    from artifact.pack import calibrate_for_recipe
    from artifact.recipe import CalibrationConfig, parse_recipe
    from train.bundled import BUNDLED_CHECKPOINT, BUNDLED_DATA
    from train.checkpoint import load_checkpoint
    from train.shards import load_tokens, resolve_data

    model, cfg, meta = load_checkpoint(checkpoint or BUNDLED_CHECKPOINT)
    model.eval()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    paths = resolve_data(data or BUNDLED_DATA, vocab_size=cfg.vocab_size)
    tokens = load_tokens(paths.require_train(), cfg.vocab_size)
    seq_len = train_seq_len(meta) or 1024
    # calibrate at the length the model was trained on (its activations beyond it are not the
    # ones it will be scored with), on as many tokens as the recipes' 64 x 1024
    cal = CalibrationConfig(seq_len=seq_len, n_seqs=max(1, CALIBRATION_TOKENS // seq_len))
    used = np.asarray(tokens[cal.offset: cal.offset + cal.n_seqs * cal.seq_len])
    calibration = {**{k: getattr(cal, k) for k in cal.__dataclass_fields__},
                   "tokens_sha": hashlib.sha256(used.astype(np.int64).tobytes()).hexdigest()}
    cache_dir = Path(cache) if cache else None
    ckpt_hash = state_hash(state)
    h_path = cache_dir / f"hessians-{cache_key(ckpt_hash, calibration)}.pt" if cache_dir else None
    if h_path is not None and h_path.is_file():
        hessians = torch.load(h_path, weights_only=True)
    else:
        recipe = parse_recipe({"name": "fit", "calibration": {k: v for k, v in calibration.items() if k != "tokens_sha"}})
        meter = Progress(f"calibrate ({paths.dataset_dir.name})", -(-cal.n_seqs // cal.batch_size), enabled=progress)
        hessians = calibrate_for_recipe(model, recipe, tokens, model.hidden, progress=meter.update)
        if h_path is not None:
            h_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = h_path.with_suffix(".tmp")
            torch.save(hessians, tmp)
            tmp.replace(h_path)
    n_probe = probe_seqs(sum(t.numel() for t in state.values()), seq_len)
    probe_batches = batches_from_tokens(tokens, n_probe, seq_len + 1, n_probe, cal.offset)
    measurement = measure(state, hessians, grid, _probe_loss_fn(model, probe_batches),
                          calibration={**calibration, "probe": [n_probe, seq_len + 1]},
                          cache_dir=cache_dir, progress=progress, jobs=default_jobs() if jobs is None else jobs)
    return {"model": model, "cfg": cfg, "meta": meta, "state": state, "hessians": hessians,
            "calibration": calibration, "measurement": measurement, "data": paths, "seq_len": seq_len}


def _layer_kind(name: str) -> tuple[int | str, str]:
    m = re.match(r"blocks\.(\d+)\.(.*)\.weight$", name)
    return (int(m.group(1)), m.group(2)) if m else ("", name.removesuffix(".weight"))


def candidate_rows(measurement, choices: dict[str, str]) -> list[dict]:
    """Every measured candidate of every tensor (CANDIDATE_COLUMNS), the fit's choice marked."""
    rows = []
    for name, t in measurement.tensors.items():
        kind = _layer_kind(name)[1]
        for label, fig in t.candidates.items():
            rows.append({"name": name, "kind": kind, "label": label, "bytes": fig["bytes"],
                         "distortion": fig["distortion"], "predicted_dloss": t.predicted_dloss(label),
                         "chosen": choices.get(name) == label})
    return rows


def write_csv(path: Path, columns, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)


def tensor_rows(measurement, choices: dict[str, str], budget_bytes: int) -> list[dict]:
    """The per-tensor table (CSV_COLUMNS) of a fit's choice."""
    from artifact.measure import Choice

    rows = []
    for name, label in choices.items():
        t, c = measurement.tensors[name], Choice.parse(label)
        fig = t.candidates[label]
        layer, kind = _layer_kind(name)
        rows.append({"name": name, "layer": layer, "kind": kind,
                     "params": t.params, "bits": c.bits, "clip": c.clip, "gptq": c.gptq, "lqer_rank": c.lqer_rank,
                     "prune": c.prune, "codec": c.codec, "bytes": fig["bytes"],
                     "bits_per_weight": fig["bytes"] * 8 / t.params, "share_of_budget": fig["bytes"] / budget_bytes,
                     "distortion": fig["distortion"], "predicted_dloss": t.predicted_dloss(label)})
    return rows


def _run_fit(args) -> int:
    from analysis.commands import ship_modules
    from artifact.fit import counted_code_bytes, fit, recipe_data, recipe_toml
    from artifact.submission import check_out_dir, write_submission
    from artifact.verify import verify
    from train.bundled import BUNDLED_DATA

    t0 = time.perf_counter()
    budget = resolve_budget(args.budget)
    pins = parse_pins(args.pin)
    out = Path(args.out)
    sub_dir = out / "submission"
    if not args.dry_run:
        check_out_dir(sub_dir)
    p = prepare(args.checkpoint, args.data, args.cache, jobs=args.jobs)
    cfg, m = p["cfg"], p["measurement"]
    eval_defaults = {"seq_len": p["seq_len"]}
    code = counted_code_bytes(cfg.to_dict(), eval_defaults, ship_modules(), budget, args.compact)
    res = fit(p["state"], m, budget, code, p["hessians"], pins, args.dry_run, p["calibration"])
    rows = tensor_rows(m, res.choices, budget.bytes)
    result = {"checkpoint": str(args.checkpoint or "bundled"), "budget": budget.name, "limit": budget.bytes,
              "dry_run": args.dry_run, "code_bytes": code, "predicted_total": res.predicted_total,
              "predicted_dloss": res.predicted_loss, "solver": {"method": res.solution.method,
                                                                 "optimal": res.solution.optimal},
              "measure": m.stats, "rounds": res.rounds, "tensors": rows}
    if not args.dry_run:
        data = recipe_data(res.choices, p["calibration"], m.grid.lqer_codec, m.grid.scales_codec)
        info = {"recipe": "fit", "budget": str(args.budget) if args.budget is not None else budget.name,
                "fit": {"choices": res.choices, "predicted_total": res.predicted_total}}
        write_submission(sub_dir, res.packed.entries, cfg.to_dict(), eval_defaults, ship_modules(),
                         compact=args.compact, info=info)
        count = count_submission(sub_dir, budget)
        if count.total > budget.bytes:  # fit() checked the same bytes; this must never happen
            raise ArtifactError(f"fit: written submission is {count.total:,} bytes, over {budget.bytes:,}")
        (out / "recipe.toml").write_text(recipe_toml(data))
        print("fit: verifying in a fresh process", file=sys.stderr, flush=True)
        v = verify(sub_dir, budget, args.data or BUNDLED_DATA, max_tokens=args.max_tokens, device="cpu")
        result.update({"submission": str(sub_dir), "real_total": count.total, "verify": v.to_dict(),
                       "val_bpb": v.val_bpb, "line": v.line(),
                       "unquantized_val_bpb": (p["meta"] or {}).get("val_bpb") if not args.max_tokens else None})
        if args.compare:
            result["compare"] = _compare(args, p, res, out / "recipe.toml", budget)
    result["seconds"] = time.perf_counter() - t0
    if not args.dry_run:
        _write_reports(out, result, candidate_rows(m, res.choices))
    emit(result, args.json, _text)
    return 0


def _compare(args, p, res, recipe_file: Path, budget) -> list[dict]:
    from analysis.compare import compare_recipes

    names = [r.strip() for r in args.compare.split(",") if r.strip()]
    print(f"fit: comparing with {', '.join(names)} on {args.compare_tokens:,} val tokens", file=sys.stderr, flush=True)
    table = compare_recipes(args.checkpoint, names + [str(recipe_file)], args.data, budget.bytes,
                            max_tokens=args.compare_tokens, compact=args.compact)
    def plain(k, v):
        if isinstance(v, float) and v != v:
            return None  # NaN: the unquantized row has no bytes
        return int(v) if k.endswith("bytes") or k == "headroom" else v
    return [{k: plain(k, v) for k, v in row.items()} for row in table.to_dict(orient="records")]


def _write_reports(out: Path, result: dict, candidates: list[dict]) -> None:
    """fit.json + tensors.csv + candidates.csv, then the report (CSV, Markdown, self-contained
    HTML with plots)."""
    from analysis.report import load_fit_tables, write_report

    out.mkdir(parents=True, exist_ok=True)
    (out / "fit.json").write_text(json.dumps(result, indent=1, sort_keys=True, default=str) + "\n")
    write_csv(out / "tensors.csv", CSV_COLUMNS, result["tensors"])
    write_csv(out / "candidates.csv", CANDIDATE_COLUMNS, candidates)
    paths = write_report(out, load_fit_tables(out))
    result["report"] = str(paths["html"])


def _text(r: dict) -> str:
    from artifact.measure import Choice

    width = max(len(t["name"]) for t in r["tensors"])
    lines = [f"{'tensor':<{width}}  {'choice':<36} {'params':>8} {'bytes':>8} {'bits/w':>6} {'pred dloss':>10}"]
    for t in r["tensors"]:
        label = Choice(t["bits"], t["clip"], t["gptq"], t["lqer_rank"], t["codec"], t["prune"]).label
        lines.append(f"{t['name']:<{width}}  {label:<36} {t['params']:>8,} {t['bytes']:>8,} "
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
