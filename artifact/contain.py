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
from dataclasses import dataclass, field
from pathlib import Path

from artifact.runtime.errors import ConfigError

HARNESS_SOURCE = (Path(__file__).resolve().parent / "harness.py").read_text(encoding="utf-8")
RUN = HARNESS_SOURCE + "\nrun_submission()\n"
RESCORE = HARNESS_SOURCE + """
cfg, record = prepare()
sys.path[:0] = cfg["paths"]
from artifact.reference import score_reference
record({"reference": score_reference(cfg["run_dir"], cfg["options"])})
"""
PASSED_ENV = ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "NVIDIA_VISIBLE_DEVICES", "LD_LIBRARY_PATH", "LANG",
              "LC_ALL", "TZ")
RECORD_LIMIT = 1 << 20  # bytes of harness records read back
TAIL = 1 << 16  # bytes of stdout / stderr read back


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


def run_contained(source: str, box: Path, config: dict, limits: Limits) -> Contained:
    """Run the harness `source` (RUN or RESCORE) contained in `box` (box/run its working folder)
    with `config` (merged into the harness's own); see the module docstring."""
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
        code = proc.wait(timeout=limits.timeout_s)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever it left running in its group
        except ProcessLookupError:
            pass
        proc.wait()
    reader.join(timeout=10)
    return Contained(code, _tail(out_path), _tail(err_path), records)
