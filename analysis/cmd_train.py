"""`golf train` and `golf bench-train`: the command lines of the training loop (train/loop.py)
and of the training-speed benchmark (train/bench_train.py)."""

from __future__ import annotations

import sys

from analysis.cliutil import add_json_flag, add_set_flag, emit, parse_set_values
from artifact.runtime.errors import ConfigError
from train.bench_train import bench_preset
from train.loop import DEFAULT_PRESET, train
from train.presets import list_presets


def add_train_arguments(p) -> None:
    p.add_argument("--preset", default=DEFAULT_PRESET, metavar="NAME|PATH",
                   help=f"preset name or .toml path (default: {DEFAULT_PRESET})")
    p.add_argument("--data", default=None, metavar="DIR", help="data root or dataset folder (default: the bundled data)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output folder for model.pt, config.json and train_log.txt (required unless --list-presets; no default)")
    p.add_argument("--max-steps", type=int, default=None, metavar="N",
                   help="training steps (default: the preset's iterations)")
    p.add_argument("--max-seconds", type=float, default=None, metavar="S",
                   help="wall-clock cap in seconds, 0 = none (default: the preset's)")
    p.add_argument("--seed", type=int, default=None, metavar="N", help="random seed (default: the preset's)")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default=None, metavar="DEVICE",
                   help="where to train: cpu, cuda, or auto = CUDA when available (default: the preset's, usually auto)")
    add_set_flag(p, "any [train] key")
    p.add_argument("--list-presets", action="store_true", help="print the preset names and exit (default: off)")
    add_json_flag(p)


def train_overrides(args) -> dict:
    """TrainConfig overrides of `golf train`: --set, then the named flags."""
    overrides = parse_set_values(args.set)
    named = {"iterations": args.max_steps, "seed": args.seed, "device": args.device,
             "max_wallclock_seconds": None if args.max_seconds is None else float(args.max_seconds)}
    overrides.update({k: v for k, v in named.items() if v is not None})
    return overrides


def run_train(args) -> int:
    if args.list_presets:
        print("\n".join(list_presets()))
        return 0
    if args.out is None:
        raise ConfigError("--out DIR is required")
    figures = train(args.preset, args.data, args.out, train_overrides(args),
                    log_stream=sys.stderr if args.json else sys.stdout)
    if "val_bpb" not in figures:  # a non-zero rank: rank 0 reports
        return 0
    emit(figures, args.json, _summary)
    return 0


def _summary(f: dict) -> str:
    return (f"trained {f['preset']}: {f['steps']} steps, {f['tokens_seen']:,} tokens in {f['train_seconds']:.1f}s "
            f"({f['tokens_per_second']:,.0f} tokens/s)\n"
            f"val_bpb {f['val_bpb']:.4f} (val_loss {f['val_loss']:.4f}) vs unigram {f['unigram_bpb']:.4f}"
            + (f" (raw weights before averaging: {f['raw_val_bpb']:.4f})" if "raw_val_bpb" in f else "") + "\n"
            f"checkpoint: {f['checkpoint']}")


# ----------------------------------------------------------------------------- bench-train
def add_bench_arguments(p) -> None:
    p.add_argument("--presets", default="baseline", metavar="NAMES",
                   help="comma-separated preset names or .toml paths (default: baseline)")
    p.add_argument("--steps", type=int, default=20, metavar="N", help="timed optimiser steps per preset (default: 20)")
    p.add_argument("--warmup", type=int, default=3, metavar="N", help="untimed steps first, for torch.compile (default: 3)")
    p.add_argument("--start-step", type=int, default=0, metavar="N",
                   help="number the steps from here, to time late switches: QAT, recurrence (default: 0)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", metavar="DEVICE",
                   help="where to run: auto (CUDA when available), cpu or cuda (default: auto)")
    p.add_argument("--data", default=None, metavar="DIR", help="dataset to read (default: synthetic tokens)")
    p.add_argument("--cpu-seq-len", type=int, default=128, metavar="L", help="CPU only: cap on seq_len (default: 128)")
    p.add_argument("--cpu-batch-seqs", type=int, default=4, metavar="N", help="CPU only: sequences per step (default: 4)")
    add_set_flag(p, "a [train] key for every preset")
    add_json_flag(p)


def run_bench(args) -> int:
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    if not presets:
        raise ConfigError("--presets: give at least one preset name")
    if args.steps <= 0 or args.warmup < 0 or args.start_step < 0:
        raise ConfigError("--steps must be positive, --warmup and --start-step >= 0")
    overrides = parse_set_values(args.set)
    overrides.pop("device", None)
    rows = [bench_preset(p, args.steps, args.warmup, args.device, args.data, overrides, args.cpu_seq_len,
                         args.cpu_batch_seqs, args.start_step) for p in presets]
    emit({"results": rows}, args.json, _bench_table)
    return 0


def _bench_table(result: dict) -> str:
    lines = [f"{'preset':<20} {'device':<28} {'ms/step':>10} {'tokens/s':>14} {'params':>12}"]
    for r in result["results"]:
        lines.append(f"{r['preset']:<20} {r['device']:<28} {r['ms_per_step']:>10.2f} {r['tokens_per_second']:>14,.0f} "
                     f"{r['params']:>12,}")
    return "\n".join(lines)
