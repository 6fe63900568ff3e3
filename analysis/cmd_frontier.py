"""`golf bench-gptq` (and the other quantization-frontier benchmarks): print tables that the
work in analysis.bench_gptq (and siblings) computes from checkpoint paths."""

from __future__ import annotations

import pandas as pd

from analysis.bench_gptq import run_bench as run_gptq_bench
from analysis.cliutil import Meter, add_json_flag, emit, say
from analysis.frontier import DEFAULT_ABLATE_AT, DEFAULT_RECIPES, DEFAULT_SEGMENTS, DEFAULT_TOKENS, LEVERS, QUICK_GRID, frontier
from artifact.runtime.errors import ConfigError
from train.bundled import BUNDLED_CHECKPOINT, BUNDLED_DATA


def _table_text(result: dict) -> str:
    pd.set_option("display.width", 200, "display.max_columns", 20)
    return pd.DataFrame(result["rows"]).round(4).to_string(index=False)


# ----------------------------------------------------------------------------- bench-gptq
def add_gptq_arguments(p) -> None:
    p.add_argument("checkpoint", nargs="?", default=str(BUNDLED_CHECKPOINT), metavar="CKPT",
                   help="checkpoint whose matrices and calibration Hessians are timed (default: the bundled one)")
    p.add_argument("--data", default=str(BUNDLED_DATA), metavar="DIR", help="data folder for calibration (default: the bundled data)")
    p.add_argument("--record-layers", type=int, default=2, metavar="N",
                   help="blocks of the synthetic record-scale GPT (512 wide, MLP x4) also timed; 0 = none (default: 2)")
    p.add_argument("--bits", type=int, default=6, metavar="B", help="code width (default: 6)")
    p.add_argument("--threads", type=int, default=1, metavar="N", help="torch threads for both sides (default: 1)")
    p.add_argument("--repeats", type=int, default=3, metavar="N", help="runs per side per matrix, best kept (default: 3)")
    add_json_flag(p)


def run_gptq(args) -> int:
    table = run_gptq_bench(args.checkpoint, args.data, args.record_layers, args.bits, args.threads, args.repeats,
                           progress=Meter("bench-gptq"))
    emit({"rows": table.to_dict("records")}, args.json, _table_text)
    return 0


# ----------------------------------------------------------------------------- bench-frontier
def add_frontier_arguments(p) -> None:
    p.add_argument("checkpoint", nargs="?", default=str(BUNDLED_CHECKPOINT), metavar="CKPT", help="checkpoint (default: the bundled one)")
    p.add_argument("--data", default=str(BUNDLED_DATA), metavar="DIR", help="data folder: calibration and val (default: the bundled data)")
    p.add_argument("--cache", default="runs/fit-cache", metavar="DIR", help="measurement cache folder (default: runs/fit-cache)")
    p.add_argument("--recipes", default=",".join(DEFAULT_RECIPES), metavar="A,B",
                   help=f"recipes whose bytes the fit is tried at (default: {','.join(DEFAULT_RECIPES)})")
    p.add_argument("--levers", default=None, metavar="L,M",
                   help=f"comma-separated levers to ablate, '' for none (default: every one the grid has, of "
                        f"{','.join(LEVERS)}; curve only with a second probe)")
    p.add_argument("--max-tokens", type=int, default=DEFAULT_TOKENS, metavar="N",
                   help=f"val prefix scored (default: {DEFAULT_TOKENS})")
    p.add_argument("--ablate-at", default=",".join(DEFAULT_ABLATE_AT), metavar="RECIPES",
                   help=f"recipes at whose bytes the lever configurations other than 'all' run "
                        f"(default: {','.join(DEFAULT_ABLATE_AT)})")
    p.add_argument("--quick", action="store_true",
                   help="a cheaper grid: clips sdclip:8/12.85, no pruning, no brotli codecs (default: the full grid)")
    p.add_argument("--segments", type=int, default=DEFAULT_SEGMENTS, metavar="N",
                   help=f"val parts the noise is taken over (default: {DEFAULT_SEGMENTS})")
    add_json_flag(p)


def _frontier_text(result: dict) -> str:
    pd.set_option("display.width", 220, "display.max_columns", 20)
    cols = ["recipe", "config", "bytes", "recipe_gap", "fit_gap", "ratio", "win", "noise", "pred_over_real",
            "pred_over_cal"]
    return (pd.DataFrame(result["rows"])[cols].round(5).to_string(index=False)
            + f"\nunquantized bpb {result['reference_bpb']:.5f} on {result['val_tokens']:,} val tokens "
              f"({result['segments']} parts); {result['seconds']:.0f} s")


def run_frontier(args) -> int:
    levers = None if args.levers is None else [x for x in args.levers.split(",") if x]
    unknown = sorted(set(levers or []) - set(LEVERS))
    if unknown:
        raise ConfigError(f"unknown levers {unknown} (known: {', '.join(LEVERS)})")
    result = frontier(args.checkpoint, args.data, args.cache, [r for r in args.recipes.split(",") if r],
                      args.max_tokens, args.segments, levers, grid=QUICK_GRID if args.quick else None,
                      progress=Meter, log=say, ablate_at=tuple(r for r in args.ablate_at.split(",") if r))
    emit(result, args.json, _frontier_text)
    return 0
