"""The fresh-process round trip: prove a submission folder works with nothing but its own files.

`verify(sub_dir, budget, data_dir)`:
1. counts the shipped bytes exactly as they sit on disk (`budget.count_submission`), plus code
   files counted from outside the folder (a budget's `code_files`, `--code-file`);
2. copies the folder to a clean temporary folder outside the project;
3. runs its `run.py` there in a fresh interpreter (`python -I -B`, cwd = the copy) behind an
   import guard: a meta-path finder, first in line, that refuses any module whose file lies in
   one of this project's package folders (artifact/, train/, analysis/, wherever installed) — a
   missing shipped module is a failure, never a silent fallback to the installed project;
4. checks run.py's JSON line: every tensor hash verified by the shipped decoder, as many tensors
   as the manifest holds, every imported project module (and a user's model file) loaded from
   inside the copy; when
   config.json configures test-time training (eval.ttt), a TTT score from the shipped
   TTT module over exactly the plain eval's targets and bytes;
5. returns the verdict: `FITS total=… (code=… model=…) limit=… headroom=… val_bpb=…` or
   `OVER total=… limit=… over_by=… val_bpb=…` (byte counts with thousands separators); val_bpb
   is the submission's score (the TTT figure when it has TTT, then followed by `plain_val_bpb=…`).
   `progress` hears the run's scoring as it goes (run.py's `golf-progress` lines on stderr).
A failed process, a hash mismatch (tampered blob), an import from outside or a timeout raises
`VerifyError` (an `ArtifactError`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from artifact.budget import Budget, ByteCount, count_submission, resolve_budget
from artifact.container import read_manifest_checked
from artifact.runtime.errors import ArtifactError
from artifact.runtime.format import TENSORS
from artifact.runtime.progress import Progress
from artifact.runtime.run import PROGRESS_TAG
from artifact.submission import BLOB, CONFIG, ENTRY, RUNTIME_PACKAGE, TTT_MODULE

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PROJECT_PACKAGES = ("artifact", "train", "analysis")
REQUIRED_MODULES = tuple(f"{RUNTIME_PACKAGE}.{m}" for m in ("decoder", "model", "scoring"))
SHIPPED_TTT = f"{RUNTIME_PACKAGE}.{TTT_MODULE}"
DEFAULT_TIMEOUT_S = 3600.0

# Runs in the fresh interpreter: argv = [-c, json guarded folders, script, its args...]. A finder placed
# before all others asks the rest of sys.meta_path for each module and refuses the answer when its
# file (or package folder) lies inside one of this project's package folders.
_BOOTSTRAP = r"""
import json, os, runpy, sys
ROOTS = [os.path.realpath(r) for r in json.loads(sys.argv[1])]
def guarded(p):
    p = os.path.realpath(p)
    return any(p == r or p.startswith(r.rstrip(os.sep) + os.sep) for r in ROOTS)
class ProjectGuard:
    def find_spec(self, name, path=None, target=None):
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is None:
                continue
            places = [spec.origin] if spec.origin and os.path.isabs(spec.origin) else []
            for place in places + list(spec.submodule_search_locations or []):
                if guarded(place):
                    raise ImportError(f"import guard: module {name!r} would come from the project "
                                      f"source tree ({place}), not from the submission", name=name)
            return spec
        return None
sys.meta_path.insert(0, ProjectGuard())
entry = os.path.abspath(sys.argv[2])
sys.argv = [entry] + sys.argv[3:]
runpy.run_path(entry, run_name="__main__")
"""


class VerifyError(ArtifactError):
    """The submission failed its fresh-process round trip (crash, hash mismatch, import from
    outside the folder, timeout, or a malformed result)."""


@dataclass
class VerifyResult:
    """Outcome of `verify`: the byte count against the budget and run.py's reported figures."""

    count: ByteCount
    run: dict
    command: list[str] = field(default_factory=list)
    stderr_tail: str = ""

    @property
    def fits(self) -> bool:
        return self.count.fits

    @property
    def verdict(self) -> str:
        return "FITS" if self.fits else "OVER"

    @property
    def ttt(self) -> dict | None:
        """run.py's test-time-training figures, None when the submission has no TTT."""
        return self.run.get("ttt") or None

    @property
    def val_bpb(self) -> float:
        """The submission's score: with TTT when it carries TTT, else the plain eval's."""
        return float(self.ttt["val_bpb"] if self.ttt else self.run["val_bpb"])

    @property
    def plain_val_bpb(self) -> float:
        """The plain eval's val_bpb of the decoded weights (no test-time training)."""
        return float(self.run["val_bpb"])

    def line(self) -> str:
        """The one verdict line."""
        c = self.count
        score = f"val_bpb={self.val_bpb:.8f}"
        if self.ttt:
            score += f" (ttt {self.ttt['mode']}; plain_val_bpb={self.plain_val_bpb:.8f})"
        if self.fits:
            return (f"FITS total={c.total:,} (code={c.code_bytes:,} model={c.model_bytes:,}) "
                    f"limit={c.budget.bytes:,} headroom={c.headroom:,} {score}")
        return f"OVER total={c.total:,} limit={c.budget.bytes:,} over_by={-c.headroom:,} {score}"

    def to_dict(self) -> dict:
        return {"verdict": self.verdict, "line": self.line(), "bytes": self.count.to_dict(), "run": self.run}


def _inside(path: str | Path, root: Path) -> bool:
    p, r = os.path.realpath(path), os.path.realpath(root)
    return p == r or p.startswith(r.rstrip(os.sep) + os.sep)


def guarded_folders() -> list[str]:
    """Folders of this project's top-level packages (wherever they are installed): no module of
    the verified run may come from them."""
    folders = [os.path.realpath(PROJECT_ROOT / p) for p in PROJECT_PACKAGES if (PROJECT_ROOT / p).is_dir()]
    for package in PROJECT_PACKAGES:
        spec = importlib.util.find_spec(package)  # locates without importing it
        if spec is not None and spec.submodule_search_locations:
            folders += [os.path.realpath(p) for p in spec.submodule_search_locations]
    return sorted(set(folders))


def copy_submission(sub_dir: Path, dest_parent: Path) -> Path:
    """A clean copy of the submission (no caches) under `dest_parent`; returns the copy."""
    copy = dest_parent / "submission"
    try:
        shutil.copytree(sub_dir, copy, symlinks=False, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    except (OSError, shutil.Error) as e:
        raise VerifyError(f"{sub_dir}: cannot copy the submission: {e}") from None
    return copy


def run_command(copy: Path, data_dir, seq_len=None, stride=None, max_tokens=None, device=None,
                threads=None) -> list[str]:
    """The fresh-process command line that runs the copy's run.py behind the import guard."""
    args = ["--data", str(Path(data_dir).resolve())]
    for flag, value in (("--seq-len", seq_len), ("--stride", stride), ("--max-tokens", max_tokens),
                        ("--device", device), ("--threads", threads)):
        if value is not None:
            args += [flag, str(value)]
    return guarded_command(ENTRY, args)


def guarded_command(script: str, args=()) -> list[str]:
    """A fresh interpreter (`python -I -B`) running `script` (relative to its working folder) with
    `args`, behind the import guard: no module may come from this project's package folders."""
    return [sys.executable, "-I", "-B", "-c", _BOOTSTRAP, json.dumps(guarded_folders()), script, *map(str, args)]


def _result_line(stdout: str) -> dict | None:
    for line in reversed(stdout.strip().splitlines()):
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            return obj
    return None


def _tail(text: str, n: int = 1500) -> str:
    text = text.strip()
    return text if len(text) <= n else "…" + text[-n:]


def _check_modules(result: dict, copy: Path) -> None:
    modules = result.get("modules")
    if not isinstance(modules, dict):
        raise VerifyError("run.py did not report the modules it imported")
    outside = {name: path for name, path in modules.items() if not _inside(path, copy)}
    if outside:
        name, path = sorted(outside.items())[0]
        raise VerifyError(f"module {name} was imported from {path}, outside the submission "
                          f"({len(outside)} such module(s))")
    missing = [m for m in REQUIRED_MODULES if m not in modules]
    if missing:
        raise VerifyError(f"run.py did not import the shipped {', '.join(missing)}")


def _configured_ttt(copy: Path) -> dict | None:
    """config.json's eval.ttt table (None without TTT; an unreadable config is run.py's error)."""
    try:
        config = json.loads((copy / CONFIG).read_text(encoding="utf-8"))
        return config["eval"].get("ttt")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _check_ttt(result: dict, configured: dict | None) -> None:
    """With TTT configured, run.py must report a TTT score from the shipped TTT module over the
    very targets and bytes the plain eval scored; without, it must report none."""
    ttt = result.get("ttt")
    if configured is None:
        if ttt is not None:
            raise VerifyError("run.py reported a TTT score but config.json configures no TTT")
        return
    if not isinstance(ttt, dict):
        raise VerifyError("config.json configures TTT (eval.ttt) but run.py reported no TTT score")
    for key in ("val_bpb", "val_loss", "tokens", "bytes"):
        if not isinstance(ttt.get(key), (int, float)):
            raise VerifyError(f"run.py's TTT result lacks {key!r}")
    if (ttt["tokens"], ttt["bytes"]) != (result["tokens"], result["bytes"]):
        raise VerifyError(f"run.py's TTT run scored {ttt['tokens']} targets / {ttt['bytes']} bytes, its plain "
                          f"eval {result['tokens']} / {result['bytes']}")
    if SHIPPED_TTT not in result["modules"]:
        raise VerifyError(f"run.py reported a TTT score without importing the shipped {SHIPPED_TTT}")


def _check_result(proc, result: dict | None, copy: Path, n_manifest: int) -> dict:
    if result is None:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise VerifyError(f"run.py exited with status {proc.returncode} without a result line: {last}")
    if result.get("error") or proc.returncode != 0:
        raise VerifyError(f"run.py failed (exit {proc.returncode}): {result.get('error') or _tail(proc.stderr)}")
    if result.get("hashes_ok") is not True:
        raise VerifyError("run.py did not confirm the tensor hashes")
    if result.get("n_tensors") != n_manifest:
        raise VerifyError(f"run.py decoded {result.get('n_tensors')} tensors; the manifest lists {n_manifest}")
    _check_modules(result, copy)
    for key in ("val_bpb", "val_loss", "tokens", "bytes"):
        if not isinstance(result.get(key), (int, float)):
            raise VerifyError(f"run.py's result lacks {key!r}")
    _check_ttt(result, _configured_ttt(copy))
    return result


def _run_streaming(cmd: list[str], cwd: Path, timeout: float, progress: Progress | None):
    """Run `cmd`, handing its `golf-progress DONE TOTAL` stderr lines to `progress` as they come
    (the run's scoring progress) and keeping all other output; killed after `timeout` seconds."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    out: list[str] = []
    err: list[str] = []

    def pump_stderr():
        for line in proc.stderr:
            words = line.split()
            if len(words) == 3 and words[0] == PROGRESS_TAG and words[1].isdigit() and words[2].isdigit():
                if progress is not None:
                    progress(int(words[1]), int(words[2]), "scoring")
            else:
                err.append(line)

    readers = [threading.Thread(target=pump_stderr, daemon=True),
               threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True)]
    for r in readers:
        r.start()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise VerifyError(f"run.py did not finish within {timeout:.0f} s") from None
    finally:
        for r in readers:
            r.join()
    return subprocess.CompletedProcess(cmd, proc.returncode, "".join(out), "".join(err))


def verify(sub_dir, budget: Budget | str | int | None, data_dir, seq_len: int | None = None,
           stride: int | None = None, max_tokens: int | None = None, device: str | None = None,
           threads: int | None = None, timeout: float = DEFAULT_TIMEOUT_S, code_files=(),
           progress: Progress | None = None) -> VerifyResult:
    """Run the submission in `sub_dir` in a fresh, guarded process on `data_dir`'s val shards,
    count its shipped bytes against `budget` (a Budget, a budgets.toml name or a byte count; its
    code files and `code_files` count as code too) and return the verdict; `progress(done, total,
    note)` hears the run's scoring as it goes. Raises VerifyError when the round trip fails in
    any way."""
    sub_dir = Path(sub_dir)
    if not isinstance(budget, Budget):
        budget = resolve_budget(budget)
    if not (sub_dir / ENTRY).is_file() or not (sub_dir / BLOB).is_file():
        raise VerifyError(f"{sub_dir}: not a submission folder (needs {ENTRY} and {BLOB})")
    if not Path(data_dir).is_dir():
        raise VerifyError(f"{data_dir}: no such data folder")
    count = count_submission(sub_dir, budget, code_files)
    n_manifest = _manifest_tensors(sub_dir / BLOB)
    with tempfile.TemporaryDirectory(prefix="golf-verify-") as tmp:
        if any(_inside(tmp, f) for f in [PROJECT_ROOT, *guarded_folders()]):
            raise VerifyError(f"temporary folder {tmp} lies inside the project; set TMPDIR elsewhere")
        copy = copy_submission(sub_dir, Path(tmp))
        cmd = run_command(copy, data_dir, seq_len, stride, max_tokens, device, threads)
        proc = _run_streaming(cmd, copy, timeout, progress)
        result = _result_line(proc.stdout)
        result = _check_result(proc, result, copy, n_manifest)
    return VerifyResult(count=count, run=result, command=cmd[:3] + ["<bootstrap>"] + cmd[4:],
                        stderr_tail=_tail(proc.stderr))


def _manifest_tensors(blob: Path) -> int | None:
    # A corrupt blob is left for the shipped decoder to reject in the fresh process (that is the
    # check being verified); the tensor count is only cross-checked when the manifest reads.
    try:
        return len(read_manifest_checked(blob)[0][TENSORS])
    except ArtifactError:
        return None
