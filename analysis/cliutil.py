"""What every command shares: `--json`, the code-form flags, `--set KEY=VALUE`, the model flags
(`--model`, `--model-config`), `--code-file`, the default budget, printing a result, stage
headers, and the progress meter (tqdm) that draws the library's `progress(done, total, note)` calls.

Commands that report figures build one plain dict and hand it to `emit`, which prints either
one line of JSON (`--json`) or text on stdout. Progress and log lines go to stderr, and under
`--json` only when stderr is a terminal (see `configure`).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import tomllib
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

from artifact.models import ModelSpec
from artifact.runtime.errors import ConfigError
from train.bundled import BUNDLED_CHECKPOINT


def add_json_flag(parser) -> None:
    """Add the `--json` switch every figure-reporting command takes."""
    parser.add_argument("--json", action="store_true", help="print the result as one line of JSON on stdout (default: text)")


def add_code_form_flags(parser) -> None:
    """`--compact` (the default: one self-extracting run.py, minified and compressed sources) or
    `--plain-code` (the readable modules as they are). Counted code bytes differ by tens of KB,
    so every command that packs or counts a submission takes the same pair."""
    form = parser.add_mutually_exclusive_group()
    form.add_argument("--compact", dest="compact", action="store_true", default=True,
                      help="ship one self-extracting run.py with minified, compressed sources (default)")
    form.add_argument("--plain-code", dest="compact", action="store_false",
                      help="ship the readable modules as they are, more code bytes counted (default: off, --compact)")


def add_model_flags(parser) -> None:
    """`--model FILE.py:NAME`, `--model-config FILE`, `--set KEY=VALUE`: which model a
    checkpoint is loaded into (artifact.models; the contract: artifact/runtime/contract.py)."""
    g = parser.add_argument_group("model (default: golf's GPT, its config read beside the checkpoint or "
                                  "inferred from its tensors)")
    g.add_argument("--model", default=None, metavar="FILE:NAME",
                   help="your model: a class or factory NAME in FILE.py (or package.module:NAME) returning a "
                        "torch.nn.Module under golf's model contract (README); it ships in the submission "
                        "(default: golf's GPT)")
    g.add_argument("--model-config", default=None, metavar="FILE",
                   help="the model's config: keyword arguments of NAME (JSON or TOML), or for golf's GPT a "
                        "(partial) JSON of its fields merged over what the tensors show (default: none)")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a model config value, e.g. --set logit_softcap=15; seq_len=N sets the "
                        "calibration and eval window (repeatable; default: none)")


def model_spec(args) -> ModelSpec:
    """The ModelSpec of `add_model_flags`' flags."""
    return ModelSpec(args.model, args.model_config, parse_set_values(args.set))


def add_code_file_flag(parser, packs: bool = True) -> None:
    """`--code-file PATH` (repeatable): files counted as code in the budget, exactly as shipped
    (`packs`: the command writes a submission, which then ships them beside run.py)."""
    where = ("it ships beside run.py" if packs else
             "counted once if the submission already ships the same file")
    parser.add_argument("--code-file", action="append", default=[], metavar="PATH",
                        help=f"a file counted as code in the budget exactly as it is, e.g. your train_gpt.py; "
                             f"{where} (repeatable; default: none beyond the budget's code_files)")


def is_bundled(checkpoint) -> bool:
    return checkpoint is None or Path(checkpoint).resolve() == Path(BUNDLED_CHECKPOINT).resolve()


def default_budget(checkpoint) -> str:
    """The budget when none is named: demo for the bundled checkpoint, the 16 MB track for any other."""
    return "demo" if is_bundled(checkpoint) else "track_10min_16mb"


def say_model(loaded) -> None:
    """What the loaded model's config rests on (inferred, read, set, defaulted), on stderr."""
    for note in loaded.notes:
        say(f"model: {note}")


def add_set_flag(parser, what: str) -> None:
    """`--set KEY=VALUE` (repeatable): override a field of `what`."""
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override {what}, e.g. --set matrix_lr=0.03; repeatable (default: none)")


def parse_set_values(items: list[str] | None) -> dict:
    """{key: value} of `--set KEY=VALUE` items; values read as TOML (numbers, booleans, quoted
    strings, lists), else taken as plain strings."""
    out = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        try:
            value = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()
        out[key.strip()] = value
    return out


def emit(result: dict[str, Any], as_json: bool, text: Callable[[dict[str, Any]], str] | None = None) -> None:
    """Print a command's result on stdout: one line of JSON when asked, else `text(result)` or
    `key: value` lines."""
    if as_json:
        print(json.dumps(result, sort_keys=True, default=_jsonable))
        return
    if text is not None:
        print(text(result))
        return
    for key, value in result.items():
        print(f"{key}: {value}")


def records(frame) -> list[dict[str, Any]]:
    """A DataFrame's rows as plain dicts for JSON: missing values (NaN, NA) become None."""
    return [{k: (None if _missing(v) else v) for k, v in row.items()} for row in frame.to_dict(orient="records")]


def _missing(value: Any) -> bool:
    try:
        return bool(value != value) or type(value).__name__ == "NAType"  # NaN is the one value unequal to itself
    except (TypeError, ValueError):
        return type(value).__name__ == "NAType"


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


# ----------------------------------------------------------------------------- stderr: log and progress
# Where progress and log lines go. stdout carries the result alone, always. Under --json, stderr
# stays silent too unless a person is watching it (a terminal), so a script that captures both
# streams gets nothing but the JSON line; without --json, progress goes to stderr always: bars
# redrawn in place on a terminal, plain lines (at most one every LOG_EVERY_S) in a log file.
_quiet = False
LOG_EVERY_S = 10.0


def configure(json_output: bool) -> None:
    """Set where progress goes for this command (see above); `main` calls it once per command."""
    global _quiet
    _quiet = bool(json_output) and not sys.stderr.isatty()


def say(message: str) -> None:
    """One line of what a command is doing, on stderr (above any progress bar)."""
    if not _quiet:
        tqdm.write(message, file=sys.stderr)


class Stages:
    """Numbered stage headers of a long command: `stages.start("measure")` prints
    `[2/6] measure` on stderr; `stages.meter(name)` starts the stage and returns its Meter, so it
    can be handed to a library call as its stage-progress factory."""

    def __init__(self, names, command: str = ""):
        self.names, self.command = list(names), command

    def start(self, name: str, detail: str = "") -> None:
        where = f"[{self.names.index(name) + 1}/{len(self.names)}]" if name in self.names else "[-]"
        say(f"{where} {self.command + ' ' if self.command else ''}{name}" + (f": {detail}" if detail else ""))

    def meter(self, name: str) -> "Meter":
        self.start(name)
        return Meter(name, results=name in RESULT_STAGES)


# Stages whose every progress call reports one finished result (a tensor measured, a recipe
# compared): each is printed as its own line, in the order they finish.
RESULT_STAGES = ("measure", "compare")


class Meter:
    """Draws the library's `progress(done, total, note)` calls with tqdm: label, done/total,
    elapsed, ETA and rate, the latest note. On a terminal a bar redrawn in place; elsewhere one
    plain line at most every `every_s` seconds (and the last), so a log stays readable. With
    `results`, every call is a finished result and also gets a line of its own. The ETA counts
    only work done while the meter ran: work reported done within a second of its start (found
    in a cache) is not a rate."""

    def __init__(self, label: str, enabled: bool = True, every_s: float = LOG_EVERY_S, results: bool = False):
        self.label, self.enabled, self.every_s, self.results = label, enabled, every_s, results
        self.t0 = time.time()  # tqdm's own clock
        self.last = -math.inf
        self.bar: tqdm | None = None
        self.initial: int | None = None

    def __call__(self, done: int, total: int, note: str = "") -> None:
        if not self.enabled or _quiet:
            return
        now = time.time()
        if self.initial is None:  # work reported done at once (from a cache) is not a rate
            self.initial = done if now - self.t0 < 1.0 else 0
        if sys.stderr.isatty():
            self._draw(done, total, note)
            if self.results:
                tqdm.write(f"  {self.label}: {note}", file=sys.stderr)
        elif self.results or now - self.last >= self.every_s or done >= total:
            self.last = now
            line = tqdm.format_meter(done, total, now - self.t0, prefix=self.label, initial=self.initial,
                                     bar_format=_LINE_FORMAT, postfix=note or None)
            tqdm.write(line, file=sys.stderr)
        if done >= total:
            self.close()

    def _draw(self, done: int, total: int, note: str) -> None:
        if self.bar is None:
            # a pty may report a 0 x 0 screen, where tqdm would hide the bar: give it a size then
            sized = min(os.get_terminal_size(sys.stderr.fileno())) > 0
            self.bar = tqdm(total=total, initial=self.initial, desc=self.label, file=sys.stderr, leave=True,
                            dynamic_ncols=sized, ncols=None if sized else 100, nrows=None if sized else 24,
                            bar_format=_BAR_FORMAT)
            self.bar.start_t = self.t0  # elapsed and rate from the stage's start, as in a log line
        self.bar.total = total
        self.bar.set_postfix_str(note, refresh=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


_LINE_FORMAT = "{desc}: {n_fmt}/{total_fmt} [{elapsed} elapsed, eta {remaining}, {rate_fmt}]{postfix}"
_BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]{postfix}"
