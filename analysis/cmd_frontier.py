"""`golf bench-gptq` (and the other quantization-frontier benchmarks): print tables that the
work in analysis.bench_gptq (and siblings) computes from checkpoint paths."""

from __future__ import annotations

import pandas as pd

from analysis.bench_gptq import run_bench as run_gptq_bench
from analysis.cliutil import Meter, add_json_flag, emit
from train.bundled import BUNDLED_CHECKPOINT, BUNDLED_DATA


def _table_text(result: dict) -> str:
    pd.set_option("display.width", 200, "display.max_columns", 20)
    return pd.DataFrame(result["rows"]).round(4).to_string(index=False)


# ----------------------------------------------------------------------------- bench-gptq
def add_gptq_arguments(p) -> None:
    p.add_argument("checkpoint", nargs="?", default=str(BUNDLED_CHECKPOINT),
                   help="checkpoint whose matrices and calibration Hessians are timed (default: the bundled one)")
    p.add_argument("--data", default=str(BUNDLED_DATA), help="data folder for calibration (default: the bundled data)")
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
