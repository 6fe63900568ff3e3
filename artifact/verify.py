"""`golf verify`: FITS means these counted bytes, and nothing else, produce this score.

This executes the submission's code (its run.py and what it imports), contained. `verify(sub_dir,
budget, data_dir)`:
1. counts the shipped bytes exactly as they sit on disk (`budget.count_submission`), plus code
   files counted from outside the folder (a budget's `code_files`, `--code-file`); when the
   folder holds golf's submission.json, every counted file in it must be exactly a file it
   lists, with its SHA-256 (an edit after packing is an error);
2. reads model.blob's manifest and config.json (golf's reader: a malformed blob fails here);
3. copies ONLY the counted files (not README.md, train logs, … : what the budget does not count
   is not there) into a fresh temporary folder and runs its run.py there, contained
   (`artifact.contain`, `artifact.harness`: scrubbed environment, temporary HOME, memory, CPU-time
   and file-size caps, no network, writes only in its own folder, behind the project import
   guard), while the harness records the digest of the state dict that is actually scored;
   `progress` hears the run's scoring as it goes (run.py's `golf-progress` lines on stderr);
4. checks run.py's JSON line (every tensor hash verified by the shipped decoder, the manifest's
   tensor count, every imported project module — and a user's model file — from inside the
   copy, the TTT figures when config.json configures TTT);
5. decodes model.blob with golf's own decoder, builds the model through the one seam
   `runtime.run.build_model` and scores it with golf's own eval (`artifact.reference`: in this
   process for golf's GPT; contained when the model's code ships in the folder); the state the
   harness saw scored must have that state's digest, and the submission's figures must match:
   tokens and bytes exactly, val_loss / val_bpb within REL_TOL — a run.py that reports a figure
   it did not earn is caught;
6. returns the verdict on golf's own figures: `FITS total=… (code=… model=…) limit=… headroom=…
   val_bpb=…` or `OVER total=… limit=… over_by=… val_bpb=…` (byte counts with thousands
   separators; the TTT figure when the submission carries TTT, then followed by `plain_val_bpb=…`).
Anything that fails raises `VerifyError` (an `ArtifactError`), one line that names the problem.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from artifact.budget import Budget, ByteCount, count_submission, resolve_budget
from artifact.contain import GUARDED, RESCORE, RUN, Contained, Limits, make_box, run_contained
from artifact.container import read_manifest_checked
from artifact.reference import is_builtin_model, read_config, score_reference
from artifact.runtime.errors import ArtifactError, GolfError
from artifact.runtime.files import file_sha256
from artifact.runtime.format import TENSORS
from artifact.runtime.progress import Progress
from artifact.runtime.run import PROGRESS_TAG
from artifact.submission import BLOB, ENTRY, FORMAT, MARKER, RUNTIME_PACKAGE, TTT_MODULE

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PROJECT_PACKAGES = ("artifact", "train", "analysis")
REQUIRED_MODULES = tuple(f"{RUNTIME_PACKAGE}.{m}" for m in ("decoder", "model", "scoring"))
SHIPPED_TTT = f"{RUNTIME_PACKAGE}.{TTT_MODULE}"
DEFAULT_TIMEOUT_S = 3600.0
# The submission's figures against golf's own re-score of the same decoded weights, same code,
# same tokens, same thread count, same machine: on CPU (float32) they agree to the last bits but
# for reduction order (≤ ~1e-7 relative per float32 op); 1e-6 relative is still ~1000x finer than
# any score difference that matters (records differ by ≥ 1e-3). On CUDA (bf16 autocast) two
# processes may pick different kernels: bf16 rounding averaged over the scored tokens stays far
# below 1e-4 relative.
REL_TOL = {"cpu": 1e-6, "cuda": 1e-4}


class VerifyError(ArtifactError):
    """The submission failed verification: a crash, a hash or digest mismatch, a figure golf
    could not reproduce, an import from outside the folder, a timeout, a malformed result."""


@dataclass
class VerifyResult:
    """Outcome of `verify`: the byte count against the budget, golf's own figures (`score`),
    run.py's reported figures (`run`, which matched them) and what the containment enforced."""

    count: ByteCount
    run: dict
    score: dict = field(default_factory=dict)
    containment: dict = field(default_factory=dict)
    packed_by_golf: bool = False
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
        """The test-time-training figures, None when the submission has no TTT."""
        return (self.score or self.run).get("ttt") or None

    @property
    def val_bpb(self) -> float:
        """The submission's score: with TTT when it carries TTT, else the plain eval's."""
        return float(self.ttt["val_bpb"] if self.ttt else (self.score or self.run)["val_bpb"])

    @property
    def plain_val_bpb(self) -> float:
        """The plain eval's val_bpb of the decoded weights (no test-time training)."""
        return float((self.score or self.run)["val_bpb"])

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
        return {"verdict": self.verdict, "line": self.line(), "bytes": self.count.to_dict(), "run": self.run,
                "score": self.score, "containment": self.containment, "packed_by_golf": self.packed_by_golf}


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


def counted_files(count: ByteCount) -> list[str]:
    """The relative paths the budget counts (what a run may see)."""
    return [rel for rel, _, role in count.files if role != "not counted"]


def copy_counted(sub_dir: Path, count: ByteCount, dest: Path) -> Path:
    """Copy exactly the counted files of `sub_dir` into the (empty) folder `dest`."""
    try:
        for rel in counted_files(count):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(sub_dir / rel, dest / rel)
    except OSError as e:
        raise VerifyError(f"{sub_dir}: cannot copy the submission: {e.strerror or e}") from None
    return dest


def guarded_command(script: str, args=()) -> list[str]:
    """A fresh interpreter (`python -I -B`) running `script` (relative to its working folder) with
    `args`, behind the harness's import guard: no module may come from this project's package
    folders (not contained otherwise: for golf's own tests and tools, not for submissions)."""
    return [sys.executable, "-I", "-B", "-c", GUARDED, json.dumps(guarded_folders()), script, *map(str, args)]


def without_progress(stderr: str) -> str:
    """The run's stderr without its progress lines (they were handed to `progress` already)."""
    return "".join(l for l in stderr.splitlines(keepends=True) if not l.startswith(PROGRESS_TAG + " "))


def check_marker(sub_dir: Path, count: ByteCount) -> bool:
    """With golf's submission.json in the folder, the counted files must be exactly the files it
    lists, byte for byte (SHA-256). Returns whether the folder carries one."""
    marker = sub_dir / MARKER
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return False
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise VerifyError(f"{marker}: unreadable ({e})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        return False  # some other submission.json (e.g. the challenge's own metadata)
    files = record.get("files")
    if not isinstance(files, list) or not all(isinstance(f, dict) and isinstance(f.get("path"), str)
                                              and isinstance(f.get("sha256"), str) for f in files):
        raise VerifyError(f"{marker}: malformed file list")
    listed = {f["path"]: f["sha256"] for f in files}
    counted = set(counted_files(count)) - {MARKER}
    for what, names in (("is counted but not in", counted - set(listed)), ("is listed in", set(listed) - counted)):
        if names:
            extra = " (but not counted or missing)" if what == "is listed in" else ""
            raise VerifyError(f"{sorted(names)[0]} {what} {MARKER}{extra}: the folder is not what golf packed")
    for rel in sorted(counted):
        if file_sha256(sub_dir / rel) != listed[rel]:
            raise VerifyError(f"{rel}: differs from what golf packed (SHA-256 in {MARKER})")
    return True


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


def _one_line(text, n: int = 600) -> str:
    """A message from the run (which may span lines, e.g. torch's) as one line of at most n chars."""
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[:n] + "…"


def _check_modules(result: dict, copy: Path) -> None:
    modules = result.get("modules")
    if not isinstance(modules, dict) or not all(isinstance(p, str) for p in modules.values()):
        raise VerifyError("run.py did not report the modules it imported")
    outside = {name: path for name, path in modules.items() if not _inside(path, copy)}
    if outside:
        name, path = sorted(outside.items())[0]
        raise VerifyError(f"module {name} was imported from {path}, outside the submission "
                          f"({len(outside)} such module(s))")
    missing = [m for m in REQUIRED_MODULES if m not in modules]
    if missing:
        raise VerifyError(f"run.py did not import the shipped {', '.join(missing)}")


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


def check_run(ran: Contained, copy: Path, n_manifest: int, configured_ttt: dict | None, timeout: float) -> dict:
    """run.py's result line, checked (module docstring, step 4)."""
    if ran.returncode is None:
        raise VerifyError(f"run.py did not finish within {timeout:.0f} s")
    result = _result_line(ran.stdout)
    if result is None:
        last = (ran.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise VerifyError(f"run.py ended ({ran.ending()}) without a result line: {_one_line(last)}")
    if result.get("error") or ran.returncode != 0:
        raise VerifyError(f"run.py failed ({ran.ending()}): {_one_line(result.get('error') or _tail(ran.stderr))}")
    if result.get("hashes_ok") is not True:
        raise VerifyError("run.py did not confirm the tensor hashes")
    if result.get("n_tensors") != n_manifest:
        raise VerifyError(f"run.py decoded {result.get('n_tensors')} tensors; the manifest lists {n_manifest}")
    _check_modules(result, copy)
    for key in ("val_bpb", "val_loss", "tokens", "bytes"):
        if not isinstance(result.get(key), (int, float)) or isinstance(result.get(key), bool):
            raise VerifyError(f"run.py's result lacks {key!r}")
    _check_ttt(result, configured_ttt)
    return result


def check_scored_state(ran: Contained, digest: str) -> None:
    """The first model the harness saw scored must hold exactly model.blob's decoded weights."""
    scored = [r["scored"] for r in ran.records if isinstance(r.get("scored"), dict)]
    if not scored:
        raise VerifyError("the harness saw no model scored: run.py's figures do not come from a forward pass")
    if scored[0].get("digest") != digest:
        raise VerifyError(f"the state run.py scored ({scored[0].get('module')}, digest "
                          f"{str(scored[0].get('digest'))[:12]}…) is not model.blob's decoded weights "
                          f"(digest {digest[:12]}…)")


def check_figures(claimed: dict, score: dict, where: str = "") -> None:
    """The submission's figures against golf's: tokens and bytes exactly, the rest within REL_TOL."""
    for key in ("tokens", "bytes"):
        if claimed.get(key) != score[key]:
            raise VerifyError(f"run.py{where} reported {key}={claimed.get(key)}; golf's own eval of the decoded "
                              f"weights scored {key}={score[key]}")
    tol = REL_TOL["cuda" if str(score.get("device", "cpu")).startswith("cuda") else "cpu"]
    for key in ("val_loss", "val_bpb"):
        if abs(claimed[key] - score[key]) > tol * abs(score[key]):
            raise VerifyError(f"run.py{where} reported {key}={claimed[key]:.10f}; golf's own eval of the decoded "
                              f"weights gives {score[key]:.10f} (allowed relative difference {tol:g})")


def _reference(copy: Path, box: Path, options: dict, limits: Limits, contained: bool) -> dict:
    """golf's own score of the copy (artifact.reference): here for golf's GPT, contained when the
    model's code ships in the submission (or when asked)."""
    try:
        if not contained and is_builtin_model(read_config(copy)):
            return score_reference(copy, options)
        ran = run_contained(RESCORE, box, {"paths": [str(PROJECT_ROOT)], "options": options}, limits)
    except GolfError as e:
        raise VerifyError(f"golf's own eval of model.blob failed: {e}") from None
    found = [r["reference"] for r in ran.records if isinstance(r.get("reference"), dict)]
    if ran.returncode != 0 or not found:
        last = (ran.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise VerifyError(f"golf's own eval of model.blob failed ({ran.ending()}): {_one_line(last)}")
    return found[0]


def verify(sub_dir, budget: Budget | str | int | None, data_dir, seq_len: int | None = None,
           stride: int | None = None, max_tokens: int | None = None, device: str | None = None,
           threads: int | None = None, timeout: float = DEFAULT_TIMEOUT_S, limits: Limits | None = None,
           rescore_contained: bool = False, code_files=(), progress: Progress | None = None) -> VerifyResult:
    """Verify the submission in `sub_dir` on `data_dir`'s val shards against `budget` (a Budget, a
    budgets.toml name or a byte count; its code files and `code_files` count as code too): module
    docstring. `limits` caps the contained run (its timeout is `timeout`); `rescore_contained`
    forces golf's re-score into a contained child (as for a model whose code ships in the
    folder); `progress(done, total, note)` hears the run's scoring. Raises VerifyError when
    anything fails."""
    sub_dir = Path(sub_dir)
    if not isinstance(budget, Budget):
        budget = resolve_budget(budget)
    if not (sub_dir / ENTRY).is_file() or not (sub_dir / BLOB).is_file():
        raise VerifyError(f"{sub_dir}: not a submission folder (needs {ENTRY} and {BLOB})")
    if not Path(data_dir).is_dir():
        raise VerifyError(f"{data_dir}: no such data folder")
    limits = Limits(timeout, *(limits.memory_bytes, limits.cpu_seconds, limits.file_bytes) if limits else ())
    count = count_submission(sub_dir, budget, code_files)
    if ENTRY not in counted_files(count) or BLOB not in counted_files(count):
        raise VerifyError(f"{sub_dir}: the budget {budget.name} does not count {ENTRY} or {BLOB}")
    packed = check_marker(sub_dir, count)
    try:
        n_manifest = len(read_manifest_checked(sub_dir / BLOB)[0][TENSORS])
        config = read_config(sub_dir)
    except GolfError as e:
        raise VerifyError(str(e)) from None
    threads = threads or torch.get_num_threads()  # the same on both sides: same float reductions
    options = {"data": str(Path(data_dir).resolve()), "seq_len": seq_len, "stride": stride,
               "max_tokens": max_tokens, "device": device or "auto", "threads": threads}
    args = [a for k, v in options.items() if v is not None and k != "data" for a in (f"--{k.replace('_', '-')}", str(v))]
    with tempfile.TemporaryDirectory(prefix="golf-verify-") as tmp:
        if any(_inside(tmp, f) for f in [PROJECT_ROOT, *guarded_folders()]):
            raise VerifyError(f"temporary folder {tmp} lies inside the project; set TMPDIR elsewhere")
        box = make_box(Path(tmp))
        copy = copy_counted(sub_dir, count, box / "run")
        ran = run_contained(RUN, box, {"guarded": guarded_folders(), "args": ["--data", options["data"], *args]},
                            limits, progress)
        result = check_run(ran, copy, n_manifest, config.get("eval", {}).get("ttt"), timeout)
        # then golf's own decode and score of the same counted files (only when the run succeeded)
        score = _reference(copy, box, options, limits, rescore_contained)
    check_scored_state(ran, score["digest"])
    check_figures(result, score)
    if score.get("ttt"):
        check_figures(result["ttt"], score["ttt"], " (TTT)")
    return VerifyResult(count=count, run=result, score=score, containment=ran.enforced, packed_by_golf=packed,
                        command=[sys.executable, "-I", "-B", "-c", "<harness>", "--data", options["data"], *args],
                        stderr_tail=_tail(without_progress(ran.stderr)))
