"""Command-line plumbing shared by every package's subcommands.

Each package exposes `register(subparsers)`, adding its commands with
`parser.set_defaults(run=fn)`; `fn(args)` returns an exit code. Commands that report figures
build one plain dict and hand it to `emit`, which prints either JSON (`--json`) or text.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Callable


def add_json_flag(parser) -> None:
    """Add the `--json` switch every figure-reporting command takes."""
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")


def add_code_form_flags(parser) -> None:
    """`--compact` (the default: one self-extracting run.py, minified and compressed sources) or
    `--plain-code` (the readable modules as they are). Counted code bytes differ by ~60 KB, so
    every command that packs or counts a submission takes the same pair."""
    form = parser.add_mutually_exclusive_group()
    form.add_argument("--compact", dest="compact", action="store_true", default=True,
                      help="ship one self-extracting run.py with minified, compressed sources (default)")
    form.add_argument("--plain-code", dest="compact", action="store_false",
                      help="ship the readable modules as they are (more code bytes counted)")


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


class Progress:
    """Progress lines on stderr for long work: `label: done/total (rate) eta`.

    Quiet when `enabled` is false (e.g. under --json the caller may still want stderr progress;
    stdout stays clean either way).
    """

    def __init__(self, label: str, total: int, enabled: bool = True, every_s: float = 2.0):
        self.label, self.total, self.enabled, self.every_s = label, max(int(total), 1), enabled, every_s
        self.t0 = time.perf_counter()
        self.last = 0.0

    def update(self, done: int, extra: str = "") -> None:
        now = time.perf_counter()
        if not self.enabled or (now - self.last < self.every_s and done < self.total):
            return
        self.last = now
        elapsed = now - self.t0
        eta = elapsed / max(done, 1) * (self.total - done)
        tail = f" {extra}" if extra else ""
        print(f"{self.label}: {done}/{self.total} elapsed {elapsed:.1f}s eta {eta:.1f}s{tail}",
              file=sys.stderr, flush=True)


def named_toml_files(folder) -> list[str]:
    """Names (file stems) of the bundled TOML files in `folder`, sorted."""
    from pathlib import Path

    return sorted(p.stem for p in Path(folder).glob("*.toml"))


def find_named_toml(name_or_path, folder, kind: str):
    """The TOML file for a bundled name (a stem in `folder`) or an explicit path; `kind`
    ("recipe", "preset") words the error."""
    from pathlib import Path

    from artifact.errors import ConfigError

    text = str(name_or_path)
    candidate = Path(text)
    if text.endswith(".toml") or candidate.is_file():
        if not candidate.is_file():
            raise ConfigError(f"{candidate}: no such {kind} file")
        return candidate
    bundled = Path(folder) / f"{text}.toml"
    if not bundled.is_file():
        known = ", ".join(named_toml_files(folder))
        raise ConfigError(f"unknown {kind} {text!r}; known {kind}s: {known} (or a path to a .toml file)")
    return bundled
