"""What every command shares: `--json`, the code-form flags, `--set KEY=VALUE`, the model flags
(`--model`, `--model-config`), `--code-file`, the default budget, printing a result, and the
progress meter that draws the library's `progress(done, total, note)` calls.

Commands that report figures build one plain dict and hand it to `emit`, which prints either
JSON (`--json`) or text. Progress goes to stderr, so stdout stays the result alone.
"""

from __future__ import annotations

import json
import sys
import time
import tomllib
from pathlib import Path
from typing import Any, Callable

from artifact.models import ModelSpec
from artifact.runtime.errors import ConfigError
from train.bundled import BUNDLED_CHECKPOINT


def add_json_flag(parser) -> None:
    """Add the `--json` switch every figure-reporting command takes."""
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")


def add_code_form_flags(parser) -> None:
    """`--compact` (the default: one self-extracting run.py, minified and compressed sources) or
    `--plain-code` (the readable modules as they are). Counted code bytes differ by tens of KB,
    so every command that packs or counts a submission takes the same pair."""
    form = parser.add_mutually_exclusive_group()
    form.add_argument("--compact", dest="compact", action="store_true", default=True,
                      help="ship one self-extracting run.py with minified, compressed sources (default)")
    form.add_argument("--plain-code", dest="compact", action="store_false",
                      help="ship the readable modules as they are (more code bytes counted)")


def add_model_flags(parser) -> None:
    """`--model FILE.py:NAME`, `--model-config FILE`, `--set KEY=VALUE`: which model a
    checkpoint is loaded into (artifact.models; the contract: artifact/runtime/contract.py)."""
    g = parser.add_argument_group("model (default: golf's GPT, its config read beside the checkpoint or "
                                  "inferred from its tensors)")
    g.add_argument("--model", default=None, metavar="FILE.py:NAME",
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
                        help=f"override {what}, e.g. --set matrix_lr=0.03 (repeatable)")


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
    """Print a command's result: JSON when asked, else `text(result)` or `key: value` lines."""
    if as_json:
        print(json.dumps(result, indent=2, sort_keys=True, default=_jsonable))
        return
    if text is not None:
        print(text(result))
        return
    for key, value in result.items():
        print(f"{key}: {value}")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def say(message: str) -> None:
    """One line of what a command is doing, on stderr."""
    print(message, file=sys.stderr, flush=True)


class Meter:
    """Draws `progress(done, total, note)` calls as lines on stderr:
    `label: done/total elapsed 12.0s eta 30.5s note`, at most one every `every_s` seconds (and
    always the last)."""

    def __init__(self, label: str, enabled: bool = True, every_s: float = 2.0):
        self.label, self.enabled, self.every_s = label, enabled, every_s
        self.t0 = time.perf_counter()
        self.last = 0.0

    def __call__(self, done: int, total: int, note: str = "") -> None:
        now = time.perf_counter()
        if not self.enabled or (now - self.last < self.every_s and done < total):
            return
        self.last = now
        elapsed = now - self.t0
        eta = elapsed / max(done, 1) * (max(total, 1) - done)
        tail = f" {note}" if note else ""
        say(f"{self.label}: {done}/{total} elapsed {elapsed:.1f}s eta {eta:.1f}s{tail}")
