"""Registers the trainer's subcommands: `golf data build|check`, `golf train`, `golf eval`,
`golf bench-train`; the `golf train` command line lives here (the loop is train/loop.py)."""

from __future__ import annotations

import sys

from artifact.errors import ConfigError


def register(sub) -> None:
    from train import bench_train, data_build, evaluate

    data_build.register(sub)
    register_train(sub)
    evaluate.register(sub)
    bench_train.register(sub)


def _parse_value(text: str):
    """A --set value as TOML (numbers, booleans, quoted strings), else the raw string."""
    import tomllib

    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def overrides_from_args(args) -> dict:
    overrides = {}
    for item in args.set or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        overrides[key.strip()] = _parse_value(value.strip())
    if args.max_steps is not None:
        overrides["iterations"] = args.max_steps
    if args.max_seconds is not None:
        overrides["max_wallclock_seconds"] = float(args.max_seconds)
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.device is not None:
        overrides["device"] = args.device
    return overrides


def run_train(args) -> int:
    from artifact.cliutil import emit
    from train.loop import train
    from train.presets import list_presets

    if args.list_presets:
        print("\n".join(list_presets()))
        return 0
    if args.out is None:
        raise ConfigError("--out DIR is required")
    figures = train(args.preset, args.data, args.out, overrides_from_args(args),
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


def register_train(sub) -> None:
    from artifact.cliutil import add_json_flag
    from train.loop import DEFAULT_PRESET

    p = sub.add_parser("train", help="train a GPT preset and save a checkpoint",
                       description="Train the challenge baseline GPT (or a preset of it) and save model.pt + config.json.")
    p.add_argument("--preset", default=DEFAULT_PRESET, help=f"preset name or .toml path (default {DEFAULT_PRESET})")
    p.add_argument("--data", default=None, help="data root or dataset folder (default: the bundled data)")
    p.add_argument("--out", default=None, help="output folder for model.pt, config.json and train_log.txt")
    p.add_argument("--max-steps", type=int, default=None, help="override the preset's iterations")
    p.add_argument("--max-seconds", type=float, default=None, help="wall-clock cap in seconds (0 = none)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default=None)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any [train] key, e.g. --set matrix_lr=0.03")
    p.add_argument("--list-presets", action="store_true", help="print the preset names and exit")
    add_json_flag(p)
    p.set_defaults(run=run_train, help_parser=p)
