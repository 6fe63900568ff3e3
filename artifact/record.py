"""A Parameter Golf records folder: the layout a record's pull request adds under
`records/track_10min_16mb/`, written from a training script, its train logs and its model file.

    OUT/train_gpt.py        the script (all counted code should live here), + any other counted code
    OUT/<logs>              each seed's train log, as given
    OUT/<extra files>       not counted (requirements.txt, data preparation, …)
    OUT/submission.json     the challenge's schema: author, github_id, name, blurb, date, track,
                            val_loss, val_bpb (means over seeds), val_loss_std, val_bpb_std (with
                            two seeds or more), seeds, seed_results {seed: val_loss, val_bpb,
                            artifact_bytes, steps, step_avg_ms, eval_time_s}
    OUT/README.md           a skeleton: results per seed, the byte breakdown, the significance
                            test, and the sections the author writes
    OUT/golf.json           golf's own facts (not the challenge's file): inputs and their hashes,
                            where each figure came from, the byte count, the test

The byte count is the challenge's: code bytes (the script and the other counted code files,
exactly as written into the folder) + the model file's bytes, against 16,000,000. A seed's
`artifact_bytes` is that count when the seed's model file is given, else the total its log
prints. The model file itself is not copied (records do not carry it; the script makes it).

Significance: the challenge asks a record to beat the current one by at least 0.005 nats at
p < 0.01. With per-seed val_loss x_1..x_n (independent training runs) and the current record's
val_loss S taken as a fixed number, the test is the one-sample, one-sided Student t-test of
H0: mean >= S - 0.005 against H1: mean < S - 0.005 (scipy.stats.ttest_1samp, alternative
"less"): t rather than a z-test because the spread is estimated from a handful of seeds
(n - 1 degrees of freedom). The stds reported are the sample stds (n - 1) the test uses.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from artifact.budget import Budget, ByteCount, resolve_budget
from artifact.runtime.errors import ConfigError, DataError
from artifact.runtime.files import atomic_write, check_replaceable, replace_folder
from artifact.train_log import FIGURES, LogFigures, parse_log

SCRIPT = "train_gpt.py"
SUBMISSION = "submission.json"
README = "README.md"
GOLF_FACTS = "golf.json"  # golf's own metadata: never the challenge's submission.json
FORMAT = "golf-record"
TRACK = "10min_16mb"
SOTA_MARGIN = 0.005  # nats: how much a new record must beat the current one by
SIGNIFICANCE = 0.01
INT_FIGURES = ("artifact_bytes", "steps")


@dataclass
class SeedRun:
    """One training run: its seed, its log (if any) and its figures with where each came from."""

    seed: int
    figures: dict[str, float | int]
    sources: dict[str, str]  # figure -> "file:line" or "flag" or "golf count"
    log: Path | None = None
    blob: Path | None = None
    log_code_bytes: int | None = None  # what the log says (scripts differ in what they count)
    log_artifact_bytes: int | None = None


@dataclass
class Significance:
    """The one-sided t-test of beating `sota` by `margin` nats."""

    sota_val_loss: float
    margin: float
    n: int
    mean: float
    std: float | None
    t: float | None  # (mean - threshold) / (std / sqrt(n)): negative when the seeds beat the threshold
    p_value: float | None

    @property
    def significant(self) -> bool:
        return self.p_value is not None and self.p_value < SIGNIFICANCE

    def to_dict(self) -> dict:
        return {"test": "one-sample one-sided Student t-test (scipy.stats.ttest_1samp, alternative='less')",
                "null": f"mean val_loss >= {self.sota_val_loss} - {self.margin}",
                "sota_val_loss": self.sota_val_loss, "margin": self.margin, "threshold": self.threshold,
                "n": self.n, "df": self.n - 1, "mean_val_loss": self.mean, "std_val_loss": self.std,
                "t": self.t, "p_value": self.p_value, "alpha": SIGNIFICANCE, "significant": self.significant}

    @property
    def threshold(self) -> float:
        return self.sota_val_loss - self.margin


@dataclass
class RecordSpec:
    """Everything a records folder is written from."""

    out: Path
    script: Path
    author: str
    github_id: str
    name: str
    blurb: str = ""
    date: str | None = None
    track: str = TRACK
    code_files: list[Path] = field(default_factory=list)
    extra_files: list[Path] = field(default_factory=list)
    logs: list[tuple[int | None, Path]] = field(default_factory=list)
    blobs: list[tuple[int | None, Path]] = field(default_factory=list)
    figures: dict[int, dict[str, float]] = field(default_factory=dict)  # --figure SEED.KEY=VALUE
    sota_val_loss: float | None = None
    margin: float = SOTA_MARGIN
    budget: str | Budget | None = "track_10min_16mb"


# ----------------------------------------------------------------------------- seeds and figures
def _seed_runs(spec: RecordSpec) -> list[SeedRun]:
    """One run per log (seed from SEED=, the log, or its name), plus seeds given only by flags."""
    runs: dict[int, SeedRun] = {}
    for given, path in spec.logs:
        parsed: LogFigures = parse_log(path)
        seed = given if given is not None else parsed.seed
        if seed is None:
            raise DataError(f"{path}: the log names no seed (no `seed: N` line, no seedN in its name); "
                            f"give it as --log SEED={path}")
        if given is not None and parsed.seed is not None and parsed.seed != given:
            raise DataError(f"{path}: given as seed {given} but the log says seed {parsed.seed}")
        if seed in runs:
            raise ConfigError(f"seed {seed} has two logs: {runs[seed].log} and {path}")
        sources = {k: f"{path.name}:{no}" for k, (no, _) in parsed.sources.items()}
        runs[seed] = SeedRun(seed, dict(parsed.figures), sources, path, log_code_bytes=parsed.code_bytes)
    for seed in spec.figures:
        runs.setdefault(seed, SeedRun(seed, {}, {}))
    for seed, values in spec.figures.items():
        for key, value in values.items():
            if key not in FIGURES:
                raise ConfigError(f"--figure {seed}.{key}: unknown figure (one of {', '.join(FIGURES)})")
            runs[seed].figures[key] = int(value) if key in INT_FIGURES else float(value)
            runs[seed].sources[key] = "flag"
    if not runs:
        raise ConfigError("no runs: give each seed's train log (--log) or its figures (--figure SEED.KEY=VALUE)")
    _pair_blobs(spec, runs)
    return list(runs.values())


def _pair_blobs(spec: RecordSpec, runs: dict[int, SeedRun]) -> None:
    for given, path in spec.blobs:
        if given is None:
            if len(runs) != 1 or len(spec.blobs) != 1:
                raise ConfigError(f"--blob {path}: with several seeds, pair each model file with its seed "
                                  "(--blob SEED=PATH)")
            given = next(iter(runs))
        if given not in runs:
            raise ConfigError(f"--blob {given}={path}: no log or figures for seed {given}")
        if not path.is_file():
            raise DataError(f"{path}: no such model file")
        runs[given].blob = path


def _check_figures(runs: list[SeedRun]) -> None:
    for run in runs:
        missing = [k for k in FIGURES if k not in run.figures]
        if missing:
            where = f"its log {run.log}" if run.log else "no log given"
            raise DataError(f"seed {run.seed}: {', '.join(missing)} not found ({where}); give "
                            + " ".join(f"--figure {run.seed}.{k}=VALUE" for k in missing))
        for key, value in run.figures.items():
            if not math.isfinite(value) or value < 0:
                raise DataError(f"seed {run.seed}: {key} = {value} is not a finite, non-negative figure")


# ----------------------------------------------------------------------------- bytes
def _file_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from None


def _code_files(spec: RecordSpec) -> dict[str, bytes]:
    """Counted code as it will sit in the folder: the script as train_gpt.py, the others by name."""
    files = {SCRIPT: _file_bytes(spec.script)}
    for path in spec.code_files:
        _claim(files, path.name, path)
        files[path.name] = _file_bytes(path)
    return files


def _claim(taken: dict, name: str, path: Path) -> None:
    if name in taken or name in (SUBMISSION, README, GOLF_FACTS):
        raise ConfigError(f"{path}: a file named {name} is already in the records folder")


def byte_count(code: dict[str, bytes], model_name: str, model_bytes: int, budget: Budget) -> ByteCount:
    """Code bytes + model bytes as the challenge counts them, against `budget`."""
    count = ByteCount(budget=budget)
    for rel, data in code.items():
        count.files.append((rel, len(data), "code"))
        count.code_bytes += len(data)
    count.files.append((model_name, model_bytes, "model"))
    count.model_bytes = model_bytes
    return count


def _model_bytes(run: SeedRun) -> tuple[str, int] | None:
    """(what, bytes) of a run's compressed model: its model file, else its log's total minus the
    code size the log states (the model the script wrote, whatever it counted as code)."""
    if run.blob is not None:
        if run.sources.get("artifact_bytes") == "flag":
            raise ConfigError(f"seed {run.seed}: give its artifact_bytes as a flag or its model file (--blob), "
                              "not both")
        return run.blob.name, run.blob.stat().st_size
    if run.sources.get("artifact_bytes") not in (None, "flag") and run.log_code_bytes is not None:
        model = int(run.figures["artifact_bytes"]) - run.log_code_bytes
        if model <= 0:
            raise DataError(f"{run.log}: its total size {run.figures['artifact_bytes']:,} is not above its code "
                            f"size {run.log_code_bytes:,}")
        return f"model per {run.log.name} (total - code size)", model
    return None


def _count_seed_bytes(runs: list[SeedRun], code: dict[str, bytes], budget: Budget) -> dict[int, ByteCount]:
    """Each run's byte count where its model's size is known; its artifact_bytes become that total
    (the log's own total is kept aside: scripts differ in how they count their code)."""
    counts = {}
    for run in runs:
        model = _model_bytes(run)
        if model is None:
            continue
        counts[run.seed] = byte_count(code, *model, budget)
        run.log_artifact_bytes = run.figures.get("artifact_bytes") if run.sources.get("artifact_bytes") != "flag" \
            else None
        run.figures["artifact_bytes"] = counts[run.seed].total
        run.sources["artifact_bytes"] = "golf count"
    return counts


# ----------------------------------------------------------------------------- statistics
def significance(losses: list[float], sota_val_loss: float, margin: float = SOTA_MARGIN) -> Significance:
    """The one-sided t-test of the module docstring (p None with fewer than two seeds)."""
    n, mean = len(losses), statistics.fmean(losses)
    if n < 2:
        return Significance(sota_val_loss, margin, n, mean, None, None, None)
    std = statistics.stdev(losses)
    threshold = sota_val_loss - margin
    if std == 0.0:  # every seed the same: the test degenerates to a comparison
        t = math.copysign(math.inf, mean - threshold) if mean != threshold else 0.0
        return Significance(sota_val_loss, margin, n, mean, 0.0, t, 0.0 if mean < threshold else 1.0)
    from scipy import stats  # heavy: imported only when a test is asked for

    result = stats.ttest_1samp(losses, popmean=threshold, alternative="less")
    return Significance(sota_val_loss, margin, n, mean, std, float(result.statistic), float(result.pvalue))


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


# ----------------------------------------------------------------------------- documents
def submission_json(spec: RecordSpec, runs: list[SeedRun], date: str) -> dict:
    """submission.json in the challenge's schema (key order as the records write it)."""
    loss, loss_std = _mean_std([r.figures["val_loss"] for r in runs])
    bpb, bpb_std = _mean_std([r.figures["val_bpb"] for r in runs])
    out = {"author": spec.author, "github_id": spec.github_id, "name": spec.name, "blurb": spec.blurb,
           "date": date, "track": spec.track, "val_loss": round(loss, 8), "val_bpb": round(bpb, 8)}
    if loss_std is not None:
        out["val_loss_std"] = round(loss_std, 8)
        out["val_bpb_std"] = round(bpb_std, 8)
    out["seeds"] = [r.seed for r in runs]
    out["seed_results"] = {str(r.seed): {k: r.figures[k] for k in FIGURES} for r in runs}
    return out


def _fmt(v) -> str:
    return f"{v:,}" if isinstance(v, int) else f"{v:.8f}" if isinstance(v, float) else str(v)


def readme(sub: dict, runs: list[SeedRun], code: dict[str, bytes], counts: dict[int, ByteCount],
           budget: Budget, test: Significance | None, logs: list[str]) -> str:
    """The README skeleton: the figures golf knows, TODO where the author writes."""
    std = f" (mean of {len(runs)} seeds, std {sub['val_bpb_std']:.5f})" if "val_bpb_std" in sub else ""
    lines = [f"# {sub['name']}", "", f"**val_bpb: {sub['val_bpb']:.8f}**{std} | val_loss {sub['val_loss']:.8f} nats"
             f" | track {sub['track']} | {sub['author']} (@{sub['github_id']}) | {sub['date']}", "",
             sub["blurb"] or "TODO: one paragraph on what this submission does.", "", "## Results", "",
             "| seed | steps | ms/step | val_loss | val_bpb | artifact bytes | eval time (s) |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        f = r.figures
        lines.append(f"| {r.seed} | {f['steps']:,} | {f['step_avg_ms']:.2f} | {f['val_loss']:.8f} | "
                     f"{f['val_bpb']:.8f} | {f['artifact_bytes']:,} | {f['eval_time_s']:.1f} |")
    if len(runs) > 1:
        lines.append(f"| **mean** | | | {sub['val_loss']:.8f} | {sub['val_bpb']:.8f} | | |")
    code_total = sum(len(b) for b in code.values())
    lines += ["", "## Bytes", "", f"Counted as the challenge counts them: code bytes + model bytes, limit "
              f"{budget.bytes:,} (decimal).", "", "| file | bytes | counted as |", "|---|---:|---|"]
    lines += [f"| {rel} | {len(data):,} | code |" for rel, data in code.items()]
    lines.append(f"| **code** | **{code_total:,}** | |")
    for r in runs:
        c = counts.get(r.seed)
        if c is not None:
            lines.append(f"| seed {r.seed}: {c.files[-1][0]} | {c.model_bytes:,} | model |")
            lines.append(f"| **total, seed {r.seed}** | **{c.total:,}** | {'fits' if c.fits else 'OVER'}, "
                         f"headroom {c.headroom:,} |")
        else:
            lines.append(f"| total, seed {r.seed} (as its log states it) | {r.figures['artifact_bytes']:,} | "
                         f"{'fits' if r.figures['artifact_bytes'] <= budget.bytes else 'OVER'} |")
        if r.log_artifact_bytes is not None and r.log_artifact_bytes != r.figures["artifact_bytes"]:
            lines.append(f"| (seed {r.seed}'s log states {r.log_artifact_bytes:,}: its script counts its code "
                         f"as {r.log_code_bytes:,} bytes) | | |")
    if test is not None:
        lines += ["", "## Significance", ""] + _test_lines(test)
    lines += ["", "## Method", "", "TODO: architecture, training, quantization and compression, evaluation.", "",
              "## Reproducing", "", "```bash", "TODO: the command that trains and evaluates one seed, e.g.",
              "SEED=42 torchrun --standalone --nproc_per_node=8 train_gpt.py", "```", "",
              "## Files", "", f"- `{SCRIPT}` and the other counted code above",
              *[f"- `{name}`: train log" for name in logs], "- `submission.json`: the challenge's metadata",
              f"- `{GOLF_FACTS}`: what golf read and where each figure came from", ""]
    return "\n".join(lines)


def _test_lines(t: Significance) -> list[str]:
    if t.p_value is None:
        return [f"A significance test needs at least two seeds (have {t.n})."]
    verdict = "significant" if t.significant else "NOT significant"
    return [f"Current record val_loss {t.sota_val_loss:.8f}; a new record must be below {t.threshold:.8f} "
            f"(−{t.margin} nats). Mean over {t.n} seeds {t.mean:.8f}, sample std {t.std:.8f}.", "",
            f"One-sample one-sided t-test (H0: mean ≥ {t.threshold:.8f}; {t.n - 1} degrees of freedom): "
            f"t = {t.t:.4f}, **p = {t.p_value:.3g}** — {verdict} at p < {SIGNIFICANCE}."]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _json(obj) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode()


# ----------------------------------------------------------------------------- the folder
def write_record(spec: RecordSpec) -> dict:
    """Write the records folder `spec.out` (all or nothing); returns what golf.json holds."""
    out = Path(spec.out)
    check_replaceable(out, GOLF_FACTS, FORMAT, "a records folder written by golf")
    budget = spec.budget if isinstance(spec.budget, Budget) else resolve_budget(spec.budget)
    code = _code_files(spec)
    runs = _seed_runs(spec)
    counts = _count_seed_bytes(runs, code, budget)
    _check_figures(runs)
    files: dict[str, bytes] = dict(code)
    logs = []
    for run in runs:
        if run.log is not None:
            _claim(files, run.log.name, run.log)
            files[run.log.name] = _file_bytes(run.log)
            logs.append(run.log.name)
    for path in spec.extra_files:
        _claim(files, path.name, path)
        files[path.name] = _file_bytes(path)
    date = spec.date or datetime.date.today().isoformat()
    sub = submission_json(spec, runs, date)
    test = significance([r.figures["val_loss"] for r in runs], spec.sota_val_loss, spec.margin) \
        if spec.sota_val_loss is not None else None
    facts = {"format": FORMAT, "version": 1, "budget": budget.name, "limit": budget.bytes,
             "code_bytes": sum(len(b) for b in code.values()),
             "files": {rel: {"bytes": len(data), "sha256": _sha256(data),
                             "role": "code" if rel in code else "log" if rel in logs else "not counted"}
                       for rel, data in files.items()},
             "seeds": {str(r.seed): {"log": r.log.name if r.log else None, "figure_sources": r.sources,
                                     "log_code_bytes": r.log_code_bytes, "log_artifact_bytes": r.log_artifact_bytes,
                                     "bytes": counts[r.seed].to_dict() if r.seed in counts else None,
                                     "model_file": ({"path": str(r.blob), "sha256": _sha256(r.blob.read_bytes())}
                                                    if r.blob else None)} for r in runs},
             "std": "sample standard deviation over seeds (n - 1)",
             "significance": test.to_dict() if test is not None else None}
    files[SUBMISSION] = _json(sub)
    files[README] = readme(sub, runs, code, counts, budget, test, logs).encode()
    files[GOLF_FACTS] = _json(facts)

    def build(tmp: Path) -> None:
        for rel, data in files.items():
            atomic_write(tmp / rel, data)

    replace_folder(out, build)
    return {"out": str(out), "submission": sub, "facts": facts}
