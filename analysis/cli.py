"""The `golf` command: one entry point, a subcommand per job.

Subcommands live beside the code they drive (`train.cli`, `artifact.cli`, `analysis.commands`);
this module only collects them, runs the chosen one and turns the tool's own errors
(`GolfError`) into one clear line and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning threads
# made torch steps up to 10x slower. Must be set before torch is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from artifact.errors import GolfError

# Modules that provide `register(subparsers)`; a module that does not exist yet is skipped so
# the command line grows with the project.
COMMAND_MODULES = ("train.cli", "artifact.cli", "analysis.commands", "analysis.compare", "analysis.report",
                   "analysis.fit_command")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="golf",
        description="Fit a trained language model into a hard byte budget, verify it, report it.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        # A bare `golf` or `golf data` prints the relevant help.
        (getattr(args, "help_parser", None) or parser).print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except GolfError as exc:
        print(f"golf {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"golf {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`golf ... --json | head`): not an error of ours; stay quiet.
        sys.stdout = open(os.devnull, "w")
        return 0


if __name__ == "__main__":
    sys.exit(main())
