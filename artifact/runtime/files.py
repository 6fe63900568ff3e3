"""Writing files and folders all or nothing, and reading the project's TOML files.

Every file the tool writes goes through `atomic_writer` (a temporary file beside the target,
flushed, fsynced, renamed over it), and every folder it replaces through `replace_folder` (built
in a temporary folder beside it, swapped in; the previous folder is restored if the swap fails).
An interrupted write therefore leaves the old file or folder, never a torn one, and no stray
temporary. Failures are one `FileError` naming the path.

Not shipped in a submission: nothing a submission runs writes files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import tomllib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import ConfigError, FileError, GolfError


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


@contextmanager
def atomic_writer(path: str | Path, mode: str = "wb", encoding: str | None = None,
                  newline: str | None = None) -> Iterator[Any]:
    """Open a temporary file beside `path` for writing; on a clean exit it replaces `path`.

    On any exception (Ctrl-C included) the temporary file is removed and `path` is untouched."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    except OSError as e:
        raise FileError(f"{path}: cannot write: {_why(e)}") from None
    try:
        with os.fdopen(fd, mode, encoding=encoding, newline=newline) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; a written file is not
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise FileError(f"{path}: cannot write: {_why(e)}") from None
        raise


def atomic_write(path: str | Path, data: bytes | str) -> int:
    """Write `data` (bytes, or text as UTF-8) to `path` all or nothing; return the bytes written."""
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    with atomic_writer(path) as f:
        f.write(raw)
    return len(raw)


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = None) -> int:
    """`obj` as sorted-key JSON (one line, or indented) plus a newline, written atomically."""
    return atomic_write(path, json.dumps(obj, sort_keys=True, indent=indent, default=str) + "\n")


def check_writable(folder: str | Path, what: str = "folder") -> Path:
    """Create `folder` if needed and prove a file can be written in it, so that a command refuses
    before minutes of work rather than after; FileError naming the folder otherwise."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".golf-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise FileError(f"{folder}: cannot write the {what}: {_why(e)}") from None
    return folder


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def read_json_or_none(path: str | Path) -> Any | None:
    """The JSON in `path`, or None when it is missing or torn (a cache entry to rebuild)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def marked_as(folder: str | Path, marker: str, fmt: str) -> bool:
    """Whether FOLDER/MARKER is JSON whose "format" is `fmt` (a folder this tool wrote)."""
    data = read_json_or_none(Path(folder) / marker)
    return isinstance(data, dict) and data.get("format") == fmt


def check_replaceable(out: str | Path, marker: str, fmt: str, what: str, error: type[GolfError] = FileError) -> None:
    """Raise `error` unless `out` is absent, an empty folder, or `what` (a folder marked `fmt`
    by its MARKER file): nothing else this tool did not write is ever replaced."""
    out = Path(out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise error(f"{out}: exists and is not a folder; refusing to replace it")
    if out.is_dir() and any(out.iterdir()) and not marked_as(out, marker, fmt):
        raise error(f"{out}: folder exists and is not {what} (no {marker} of format {fmt!r}); "
                    "refusing to overwrite it")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def replace_folder(out: str | Path, build: Callable[[Path], Any]) -> Any:
    """Build a folder with `build(tmp)` in a temporary folder beside `out`, then swap it in.

    The caller decides beforehand whether `out` may be replaced. On failure nothing is left
    behind and `out` is as it was. Returns what `build` returns."""
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    except OSError as e:
        raise FileError(f"{out}: cannot create the folder: {_why(e)}") from None
    try:
        result = build(tmp)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; the folder we write is not
        _swap(tmp, out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise FileError(f"{out}: cannot write the folder: {_why(e)}") from None
        raise
    return result


def _swap(tmp: Path, out: Path) -> None:
    """Rename `tmp` to `out`, moving an existing `out` aside first and back if the rename fails.
    Nothing is left behind: a previous version that cannot be removed is an error naming it."""
    aside = None
    if out.exists():
        aside = out.with_name(f".{out.name}.old-{os.getpid()}")
        if aside.exists():
            shutil.rmtree(aside)
        os.replace(out, aside)
    try:
        os.replace(tmp, out)
    except BaseException:
        if aside is not None:
            os.replace(aside, out)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
        if aside.exists():
            raise FileError(f"{out}: written, but its previous version could not be removed from {aside}")


# ----------------------------------------------------------------------------- TOML files
def read_toml(path: str | Path, kind: str) -> dict:
    """The table of a TOML file; one ConfigError naming the file (and `kind`: "recipe", …)."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read {kind} ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: malformed TOML ({exc})") from None


def named_toml_files(folder: str | Path) -> list[str]:
    """Names (file stems) of the bundled TOML files in `folder`, sorted."""
    return sorted(p.stem for p in Path(folder).glob("*.toml"))


def find_named_toml(name_or_path: str | Path, folder: str | Path, kind: str) -> Path:
    """The TOML file for a bundled name (a stem in `folder`) or an explicit path; `kind`
    ("recipe", "preset") words the error."""
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
