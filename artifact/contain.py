"""Running a submission's code contained (`golf verify`): the parent side of `artifact.harness`.

`run_contained(run_dir, box, ...)` starts `python -I -B -c <harness source + entry>` with:
- a scrubbed environment: PATH=/usr/bin:/bin, HOME and TMPDIR inside `box`, and only the
  variables in PASSED_ENV (device selection, library paths, locale: no credentials);
- `run_dir` (inside `box`) as its working folder, stdin closed, stdout/stderr to files outside
  `box` (only their tails are read back);
- the limits of `Limits` (memory, CPU time, file size) and the fences the harness applies to
  itself (namespaces, Landlock: see artifact.harness), which report what held;
- its own session, so that on a timeout the whole process group is killed.
What the OS does not offer is reported under "not enforced", never silently assumed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from artifact.runtime.errors import ConfigError
from artifact.runtime.progress import Progress
from artifact.runtime.run import PROGRESS_TAG

HARNESS_SOURCE = (Path(__file__).resolve().parent / "harness.py").read_text(encoding="utf-8")
RUN = HARNESS_SOURCE + "\nrun_submission()\n"
RESCORE = HARNESS_SOURCE + """
cfg, record = prepare()
sys.path[:0] = cfg["paths"]
from artifact.reference import score_reference
record({"reference": score_reference(cfg["run_dir"], cfg["options"])})
"""
# Only the import guard, for golf's own tools and tests (argv: guarded folders, script, its args)
GUARDED = HARNESS_SOURCE + """
guard_imports(json.loads(sys.argv[1]))
entry = os.path.abspath(sys.argv[2])
sys.argv = [entry] + sys.argv[3:]
runpy.run_path(entry, run_name="__main__")
"""
PASSED_ENV = ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "NVIDIA_VISIBLE_DEVICES", "LD_LIBRARY_PATH", "LANG",
              "LC_ALL", "TZ")
RECORD_LIMIT = 1 << 20  # bytes of harness records read back
TAIL = 1 << 16  # bytes of stdout / stderr read back
POLL_S = 0.5  # how often the run's progress lines are read while it runs


def physical_memory() -> int:
    """Bytes of RAM on this machine (0 when the OS will not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


@dataclass(frozen=True)
class Limits:
    """What a contained run may use. memory_bytes None: 3/4 of RAM; cpu_seconds None: the
    timeout times the CPU count (all of the machine for the whole allowed time)."""

    timeout_s: float = 3600.0
    memory_bytes: int | None = None
    cpu_seconds: int | None = None
    file_bytes: int = 1 << 30

    def resolved(self) -> dict:
        if self.timeout_s <= 0:
            raise ConfigError(f"timeout must be positive, got {self.timeout_s}")
        memory = self.memory_bytes or physical_memory() * 3 // 4 or 16 << 30
        cpu = self.cpu_seconds or int(self.timeout_s * (os.cpu_count() or 1)) + 1
        if memory <= 0 or cpu <= 0 or self.file_bytes <= 0:
            raise ConfigError("memory, CPU-time and file-size limits must be positive")
        return {"memory_bytes": int(memory), "cpu_seconds": int(cpu), "file_bytes": int(self.file_bytes)}


@dataclass
class Contained:
    """How a contained run ended: exit status (None on a timeout), the tails of its output, and
    the harness's records (what it enforced, what was scored, a re-score)."""

    returncode: int | None
    stdout: str
    stderr: str
    records: list = field(default_factory=list)

    @property
    def enforced(self) -> dict:
        return next((r["enforced"] for r in self.records if "enforced" in r), {})

    @property
    def signal(self) -> int | None:
        """The signal that ended the run, if one did."""
        if self.returncode is not None and self.returncode < 0:
            return -self.returncode
        return next((r["signal"] for r in self.records if isinstance(r.get("signal"), int)), None)

    def ending(self) -> str:
        """How the run ended, in words: 'exit 1', or 'killed by SIGXCPU (its CPU-time limit)'."""
        sig = self.signal
        if sig is None:
            return f"exit {self.returncode}"
        why = {signal.SIGXCPU: "its CPU-time limit", signal.SIGXFSZ: "its file-size limit",
               signal.SIGKILL: "a hard limit or the out-of-memory killer"}.get(sig, "")
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else f"signal {sig}"
        return f"killed by {name}" + (f" ({why})" if why else "")


def scrubbed_env(box: Path) -> dict:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(box / "home"), "TMPDIR": str(box / "tmp"),
           "OMP_WAIT_POLICY": "PASSIVE", "PYTHONDONTWRITEBYTECODE": "1"}
    env.update({k: os.environ[k] for k in PASSED_ENV if k in os.environ})
    return env


def make_box(parent: Path) -> Path:
    """box/ (the only place the run may write) with run/, home/ and tmp/ inside, under `parent`."""
    box = parent / "box"
    for sub in ("run", "home", "tmp"):
        (box / sub).mkdir(parents=True)
    return box


def _tail(path: Path) -> str:
    with open(path, "rb") as f:
        f.seek(max(0, f.seek(0, 2) - TAIL))
        return f.read().decode("utf-8", "replace")


def _read_records(fd: int, into: list) -> None:
    chunks, size = [], 0
    with os.fdopen(fd, "rb") as f:
        while chunk := f.read(1 << 16):
            if size < RECORD_LIMIT:
                chunks.append(chunk)
            size += len(chunk)
    for line in b"".join(chunks)[:RECORD_LIMIT].splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            into.append(obj)


def _wait(proc, timeout_s: float, err_path: Path, on_progress: Progress | None) -> int | None:
    """The exit code, or None after `timeout_s`; meanwhile new progress lines of the run's stderr
    file go to `on_progress`."""
    deadline, seen = time.monotonic() + timeout_s, 0
    while True:
        try:
            return proc.wait(timeout=POLL_S if on_progress is not None else max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            if time.monotonic() >= deadline:
                return None
        seen = _forward_progress(err_path, seen, on_progress)


def _forward_progress(err_path: Path, seen: int, on_progress: Progress) -> int:
    with open(err_path, "rb") as f:
        f.seek(seen)
        chunk = f.read()
    done = chunk.rfind(b"\n") + 1  # whole lines only
    for line in chunk[:done].decode("utf-8", "replace").splitlines():
        words = line.split()
        if len(words) == 3 and words[0] == PROGRESS_TAG and words[1].isdigit() and words[2].isdigit():
            on_progress(int(words[1]), int(words[2]), "scoring")
    return seen + done


def run_contained(source: str, box: Path, config: dict, limits: Limits,
                  on_progress: Progress | None = None) -> Contained:
    """Run the harness `source` (RUN or RESCORE) contained in `box` (box/run its working folder)
    with `config` (merged into the harness's own); see the module docstring. `on_progress` hears
    the run's `golf-progress DONE TOTAL` stderr lines as they are written."""
    r, w = os.pipe()
    cfg = {**config, "record_fd": w, "box": str(box), "run_dir": str(box / "run"), "limits": limits.resolved()}
    records: list = []
    reader = threading.Thread(target=_read_records, args=(r, records), daemon=True)
    out_path, err_path = box.parent / "stdout", box.parent / "stderr"
    try:
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen([sys.executable, "-I", "-B", "-c", source, json.dumps(cfg)], cwd=box / "run",
                                    env=scrubbed_env(box), stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    pass_fds=(w,), start_new_session=True)
    except OSError as e:
        os.close(r)
        raise ConfigError(f"cannot start the contained run: {e.strerror or e}") from None
    finally:
        os.close(w)
    reader.start()
    try:
        code = _wait(proc, limits.timeout_s, err_path, on_progress)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever it left running in its group
        except ProcessLookupError:
            pass
        proc.wait()
    reader.join(timeout=10)
    return Contained(code, _tail(out_path), _tail(err_path), records)
