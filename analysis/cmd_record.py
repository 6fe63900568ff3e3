"""`golf record`: a Parameter Golf records folder from a training script, its logs and its model file.

    golf record OUT --script train_gpt.py --log [SEED=]LOG ... [--blob [SEED=]MODEL ...]
                --author NAME --github-id ID --name TITLE [--blurb TEXT] [--sota-val-loss NATS]

The work is artifact.record (the folder, the byte count, the t-test) and artifact.train_log (the
figures read from each log); this module reads the flags and prints the summary.
"""

from __future__ import annotations

from pathlib import Path

from analysis.cliutil import add_json_flag, emit
from artifact.record import SOTA_MARGIN, TRACK, RecordSpec, write_record
from artifact.runtime.errors import ConfigError
from artifact.train_log import FIGURES


def add_arguments(p) -> None:
    p.add_argument("out", metavar="OUT", help="the records folder to write (replaced only if golf wrote it)")
    p.add_argument("--script", required=True, type=Path, metavar="FILE",
                   help="the training script; copied as train_gpt.py and counted as code (required)")
    p.add_argument("--code-file", action="append", default=[], type=Path, metavar="FILE",
                   help="another file the submission counts as code, e.g. an exported golf_codec.py (repeatable; "
                        "default: none)")
    p.add_argument("--extra-file", action="append", default=[], type=Path, metavar="FILE",
                   help="a file copied into the folder but not counted, e.g. requirements.txt (repeatable; "
                        "default: none)")
    p.add_argument("--log", action="append", default=[], metavar="SEED=FILE",
                   help="a seed's train log, SEED= optional (repeatable); the seed comes from SEED=, the log's `seed:` line or "
                        "seedN in its name (default: none; then give every figure with --figure)")
    p.add_argument("--blob", action="append", default=[], metavar="SEED=FILE",
                   help="a seed's compressed model file, SEED= optional: its artifact_bytes become code + this file's bytes, "
                        "counted by golf (repeatable; SEED= needed with several seeds; default: the model size its "
                        "log implies, its total minus the code size it states)")
    p.add_argument("--figure", action="append", default=[], metavar="SEED.KEY=VALUE",
                   help=f"a figure the log lacks or gets wrong, KEY one of {', '.join(FIGURES)} (repeatable; "
                        "default: read from the logs)")
    p.add_argument("--author", required=True, metavar="NAME", help="your name (required)")
    p.add_argument("--github-id", required=True, metavar="ID", help="your GitHub user name (required)")
    p.add_argument("--name", required=True, metavar="TITLE", help="the submission's title (required)")
    p.add_argument("--blurb", default="", metavar="TEXT", help="one paragraph for submission.json (default: empty, a TODO in the "
                                                "README)")
    p.add_argument("--date", default=None, metavar="YYYY-MM-DD", help="the submission date (default: today)")
    p.add_argument("--track", default=TRACK, metavar="NAME", help=f"the track (default: {TRACK})")
    p.add_argument("--sota-val-loss", type=float, default=None, metavar="NATS",
                   help="the current record's val_loss: test beating it by --margin (default: no test)")
    p.add_argument("--margin", type=float, default=SOTA_MARGIN, metavar="NATS",
                   help=f"how much a record must beat the current one by (default: {SOTA_MARGIN})")
    p.add_argument("--budget", default="track_10min_16mb", metavar="NAME|BYTES",
                   help="budget name in budgets.toml or a byte count (default: track_10min_16mb)")
    add_json_flag(p)


def _seeded(items: list[str]) -> list[tuple[int | None, Path]]:
    out = []
    for item in items:
        seed, sep, path = item.partition("=")
        if sep and seed.strip().lstrip("-").isdigit():
            out.append((int(seed), Path(path)))
        else:
            out.append((None, Path(item)))
    return out


def _figures(items: list[str]) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, float]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        seed, dot, name = key.partition(".")
        try:
            out.setdefault(int(seed), {})[name] = float(value)
        except ValueError:
            raise ConfigError(f"--figure {item!r}: expected SEED.KEY=VALUE, e.g. 42.eval_time_s=508.8") from None
        if not (sep and dot and name):
            raise ConfigError(f"--figure {item!r}: expected SEED.KEY=VALUE, e.g. 42.eval_time_s=508.8")
    return out


def run(args) -> int:
    spec = RecordSpec(out=Path(args.out), script=args.script, author=args.author, github_id=args.github_id,
                      name=args.name, blurb=args.blurb, date=args.date, track=args.track,
                      code_files=args.code_file, extra_files=args.extra_file, logs=_seeded(args.log),
                      blobs=_seeded(args.blob), figures=_figures(args.figure),
                      sota_val_loss=args.sota_val_loss, margin=args.margin, budget=args.budget)
    emit(write_record(spec), args.json, _text)
    return 0


def _text(r: dict) -> str:
    sub, facts = r["submission"], r["facts"]
    lines = [f"{'seed':>6} {'val_loss':>11} {'val_bpb':>11} {'artifact':>11} {'steps':>7} {'ms/step':>8} "
             f"{'eval s':>7}  figures from"]
    for seed, res in sub["seed_results"].items():
        src = facts["seeds"][seed]["figure_sources"]
        where = ", ".join(sorted({v.split(":")[0] for v in src.values()}))
        lines.append(f"{seed:>6} {res['val_loss']:>11.8f} {res['val_bpb']:>11.8f} {res['artifact_bytes']:>11,} "
                     f"{res['steps']:>7,} {res['step_avg_ms']:>8.2f} {res['eval_time_s']:>7.1f}  {where}")
    std = f" (std {sub['val_loss_std']:.5f} / {sub['val_bpb_std']:.5f}, n-1)" if "val_loss_std" in sub else ""
    lines.append(f"mean   val_loss {sub['val_loss']:.8f}  val_bpb {sub['val_bpb']:.8f}{std}")
    lines.append(f"code   {facts['code_bytes']:,} bytes counted ("
                 + ", ".join(f"{k} {v['bytes']:,}" for k, v in facts["files"].items() if v["role"] == "code") + ")")
    for seed, s in facts["seeds"].items():
        b = s["bytes"]
        if b:
            lines.append(f"bytes  seed {seed}: code {b['code_bytes']:,} + model {b['model_bytes']:,} = "
                         f"{b['total_bytes']:,} vs {b['limit']:,}: {'fits' if b['fits'] else 'OVER'}, headroom "
                         f"{b['headroom']:,}" + (f" (its log said {s['log_artifact_bytes']:,})"
                                                 if s["log_artifact_bytes"] not in (None, b["total_bytes"]) else ""))
    t = facts["significance"]
    if t is not None:
        if t["p_value"] is None:
            lines.append(f"test   needs at least two seeds (have {t['n']})")
        else:
            lines.append(f"test   beat {t['sota_val_loss']:.8f} by {t['margin']} nats (mean < {t['threshold']:.8f}): "
                         f"one-sided t-test t = {t['t']:.3f}, df {t['df']}, p = {t['p_value']:.3g}: "
                         f"{'significant' if t['significant'] else 'NOT significant'} at p < {t['alpha']}")
    lines.append(f"wrote  {r['out']}  (submission.json, README.md, golf.json, "
                 f"{len(facts['files'])} files)")
    return "\n".join(lines)
