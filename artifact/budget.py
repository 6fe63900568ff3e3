"""Budgets (budgets.toml) and counting a submission's bytes exactly as shipped.

The challenge counts code bytes + compressed model bytes ≤ the cap, in decimal bytes. We count
every file in the submission folder as it sits on disk (a self-extracting stub counts as the
stub file, never as the source it unpacks), excluding only what the budget names as not counted,
plus code files counted wherever they are (a budget's `code_files`, `--code-file`: e.g. the
competitor's train_gpt.py; paths in budgets.toml are relative to it).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path

from artifact.runtime.config import build_dataclass, check_keys
from artifact.runtime.errors import ConfigError, GolfError
from artifact.runtime.files import read_toml

# budgets.toml sits at the repository root; an installed copy falls back to the packaged one.
_BUDGET_FILES = (
    Path(__file__).resolve().parent.parent / "budgets.toml",
    Path(__file__).resolve().parent / "budgets.toml",
)


_BUDGET_KEYS = ("bytes", "description", "model_files", "not_counted", "code_files")


@dataclass(frozen=True)
class Budget:
    """A byte limit and which files of a submission count as model bytes or not at all."""

    name: str
    bytes: int
    description: str = ""
    model_files: tuple[str, ...] = ("*.blob",)
    not_counted: tuple[str, ...] = ()
    code_files: tuple[str, ...] = ()  # files counted as code wherever they are (e.g. train_gpt.py)

    def __post_init__(self) -> None:
        if not isinstance(self.bytes, int) or isinstance(self.bytes, bool) or self.bytes <= 0:
            raise ConfigError(f"budget {self.name}: bytes must be a positive integer, got {self.bytes!r}")
        for key in ("model_files", "not_counted", "code_files"):
            if not all(isinstance(p, str) for p in getattr(self, key)):
                raise ConfigError(f"budget {self.name}: {key} must be a list of file patterns")


@dataclass
class ByteCount:
    """The shipped files and what they add up to against a budget."""

    budget: Budget
    files: list[tuple[str, int, str]] = field(default_factory=list)  # (relative path, bytes, role)
    code_bytes: int = 0
    model_bytes: int = 0

    @property
    def total(self) -> int:
        return self.code_bytes + self.model_bytes

    @property
    def fits(self) -> bool:
        return self.total <= self.budget.bytes

    @property
    def headroom(self) -> int:
        return self.budget.bytes - self.total

    def add(self, rel: str, size: int) -> None:
        """Count one shipped file (its path relative to the submission folder) by the budget's rules."""
        if matches(rel, self.budget.not_counted):
            role = "not counted"
        elif matches(rel, self.budget.model_files):
            role, self.model_bytes = "model", self.model_bytes + size
        else:
            role, self.code_bytes = "code", self.code_bytes + size
        self.files.append((rel, size, role))

    def to_frame(self):
        """The counted files as a pandas DataFrame (path, bytes, role), for a notebook."""
        import pandas as pd  # only a notebook user pays for pandas here

        return pd.DataFrame(self.files, columns=["path", "bytes", "role"])

    def to_dict(self) -> dict:
        return {
            "budget": self.budget.name, "limit": self.budget.bytes, "code_bytes": self.code_bytes,
            "model_bytes": self.model_bytes, "total_bytes": self.total, "fits": self.fits,
            "headroom": self.headroom,
            "files": [{"path": p, "bytes": b, "role": r} for p, b, r in self.files],
        }


def budgets_path() -> Path:
    for path in _BUDGET_FILES:
        if path.is_file():
            return path
    raise ConfigError("budgets.toml not found next to the package")


def load_budgets(path: str | Path | None = None) -> dict[str, Budget]:
    """All named budgets in budgets.toml (or `path`), validated."""
    path = Path(path) if path else budgets_path()
    table = read_toml(path, "budgets").get("budgets")
    if not isinstance(table, dict) or not table:
        raise ConfigError(f"{path}: no [budgets.NAME] tables")
    out = {}
    for name, spec in table.items():
        where = f"{path}: budgets.{name}"
        spec = dict(check_keys(spec, _BUDGET_KEYS, where))
        if isinstance(spec.get("code_files"), list):  # paths relative to the budgets file
            spec["code_files"] = [str(path.parent / p) if isinstance(p, str) else p for p in spec["code_files"]]
        out[name] = build_dataclass(Budget, {**spec, "name": name}, where)
    return out


def resolve_budget(value: Budget | str | int | None, default: str = "demo") -> Budget:
    """A budget by name, or a plain byte count (`"15000000"`, `15_000_000`); a Budget as it is."""
    if isinstance(value, Budget):
        return value
    if value is None:
        value = default
    if isinstance(value, int) or str(value).replace("_", "").isdigit():
        limit = int(str(value).replace("_", ""))
        if limit <= 0:
            raise ConfigError(f"budget must be positive, got {limit}")
        base = load_budgets().get("track_10min_16mb")
        return Budget(name=f"{limit}B", bytes=limit,
                      model_files=base.model_files if base else ("*.blob",),
                      not_counted=base.not_counted if base else ())
    budgets = load_budgets()
    if value not in budgets:
        raise ConfigError(f"unknown budget {value!r}; known: {', '.join(sorted(budgets))} (or a byte count)")
    return budgets[value]


def matches(rel: str, patterns: tuple[str, ...]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(name, p) for p in patterns)


def count_submission(folder: str | Path, budget: Budget, code_files=()) -> ByteCount:
    """Count every regular file under `folder` exactly as shipped (symlinks are refused: what
    ships must be the bytes on disk), plus the budget's and `code_files` (paths) as code: a code
    file the folder already ships with the same bytes counts once."""
    count = _count_folder(Path(folder), budget)
    for path in [*budget.code_files, *code_files]:
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ConfigError(f"{path}: cannot read the code file ({e.strerror or e})") from None
        shipped = Path(folder) / path.name
        if shipped.is_file() and not shipped.is_symlink():
            if shipped.read_bytes() != data:
                raise GolfError(f"{path}: the submission ships a different {path.name}; which one counts?")
            continue  # shipped, so already counted
        if any(rel == str(path) for rel, _, _ in count.files):
            continue  # named twice
        count.files.append((str(path), len(data), "code"))
        count.code_bytes += len(data)
    return count


def _count_folder(folder: Path, budget: Budget) -> ByteCount:
    if not folder.is_dir():
        raise GolfError(f"{folder}: not a submission folder")
    count = ByteCount(budget=budget)
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if "__pycache__" in path.parts:
            continue
        if path.is_symlink():
            raise GolfError(f"{path}: symbolic links are not allowed in a submission (ship the file)")
        if not path.is_file():
            continue
        count.add(rel, path.stat().st_size)
    return count


def count_files(files: dict[str, bytes], budget: Budget) -> ByteCount:
    """Count planned files ({relative path: bytes}, as `submission.plan_files` makes them)
    exactly as `count_submission` counts them once written."""
    count = ByteCount(budget=budget)
    for rel in sorted(files):
        count.add(rel, len(files[rel]))
    return count
