"""golf from Python: the calls a notebook needs, with the CLI's defaults.

    from analysis import api as golf

    golf.measure().to_frame()                           # every tensor's candidates (a DataFrame)
    run = golf.fit(budget="demo")                       # measure, solve, pack, verify
    print(run.verify.line())                            # FITS total=… val_bpb=…
    run.verify.count.to_frame()                         # the counted files (a DataFrame)
    golf.inspect(run.submission).to_frame()             # bytes per tensor, from the blob alone
    golf.pack(recipe="seed-004", out="runs/p").packed.to_frame()  # the packer's per-tensor rows
    golf.compare(recipes=["record-1855", "seed-004"])   # recipes side by side (a DataFrame)
    golf.evaluate(max_tokens=32_769).val_bpb            # the exact val_bpb of a checkpoint
    tables = golf.report("runs/fit")                    # the report's tables (DataFrames)
    golf.plots("runs/fit")["dloss_heatmap"]             # its plots as matplotlib Figures

Every call defaults to the bundled checkpoint and data (train/bundled/), as the CLI does; pass
paths for your own. Errors are `artifact.runtime.errors.GolfError` subclasses with one clear
message. Progress goes to stderr only when `progress=True`. Nothing here selects a matplotlib
backend: the figures display inline in a notebook, and `analysis.plots.png_bytes` renders one.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from matplotlib.figure import Figure

from analysis.cliutil import Meter, default_budget, say
from analysis.compare import DEFAULT_RECIPES, compare_recipes
from analysis.plots import all_plots
from analysis.report import load_fit_tables
from artifact.budget import resolve_budget
from artifact.container import BlobReport
from artifact.container import inspect as inspect_blob
from artifact.measure import Grid, Measurement
from artifact.models import ModelSpec
from artifact.pipeline import FitRun, PackRun, evaluate_checkpoint, fit_checkpoint, pack_checkpoint, prepare
from artifact.runtime.scoring import EvalResult
from artifact.runtime.ttt import TTTConfig
from artifact.submission import BLOB
from artifact.verify import VerifyResult
from artifact.verify import verify as verify_folder
from train.bundled import BUNDLED_CHECKPOINT, BUNDLED_DATA

__all__ = ["ModelSpec", "compare", "evaluate", "fit", "inspect", "measure", "pack", "plots", "report", "verify"]


def _progress(on: bool):
    return Meter if on else None


def measure(checkpoint=BUNDLED_CHECKPOINT, data=BUNDLED_DATA, cache="runs/fit-cache", grid: Grid | None = None,
            jobs: int | None = None, progress: bool = False, model: ModelSpec | None = None) -> Measurement:
    """Calibrate and measure every quantizable tensor's candidates (cached under `cache`), as the
    fit's first stages do. `.to_frame()` is one row per (tensor, candidate): bytes, distortion,
    sensitivity and predicted Δloss in nats."""
    return prepare(checkpoint, data, cache, grid, _progress(progress), jobs, model=model,
                   log=say if progress else None)["measurement"]


def fit(checkpoint=BUNDLED_CHECKPOINT, budget: str | int | None = None, out="runs/fit", data=BUNDLED_DATA,
        cache="runs/fit-cache", pins: dict[str, str] | None = None, dry_run: bool = False, compact: bool = True,
        jobs: int | None = None, grid: Grid | None = None, max_tokens: int | None = None,
        progress: bool = False, model: ModelSpec | None = None, code_files=()) -> FitRun:
    """The lowest-predicted-loss artifact of `checkpoint` under `budget` (a budgets.toml name or a
    byte count, code included; default demo for the bundled checkpoint, else track_10min_16mb),
    written to OUT/submission with OUT/recipe.toml and verified in a fresh process. `model`: a
    user's model (`ModelSpec("my_model.py:Net")`, the README's contract); `code_files`: files
    counted as code (shipped beside run.py). Returns the FitRun: `.result` (choices, predicted
    bytes and loss), and unless `dry_run` `.submission`, `.real_total` and `.verify` (the
    VerifyResult; `.verify.count` is the byte count, `.to_frame()` its files). `golf fit` also
    writes the report; here `report(out)` builds its tables once a report folder exists."""
    budget = budget if budget is not None else default_budget(checkpoint)
    p = prepare(checkpoint, data, cache, grid, _progress(progress), jobs, model=model, log=say if progress else None)
    return fit_checkpoint(p, resolve_budget(budget), out, data, pins, dry_run, compact, max_tokens,
                          budget_label=str(budget), log=say if progress else None, code_files=code_files,
                          progress=_progress(progress))


def pack(checkpoint=BUNDLED_CHECKPOINT, recipe: str | Path = "record-1855", out="runs/pack", data=BUNDLED_DATA,
         budget: str | int | None = None, compact: bool = True, seq_len: int | None = None,
         ttt: TTTConfig | None = None, progress: bool = False, model: ModelSpec | None = None,
         code_files=()) -> PackRun:
    """Pack `checkpoint` by a fixed recipe (a name in artifact/recipes or a .toml path) into the
    submission folder `out` (`model`, `code_files` as in `fit`). Returns the PackRun: `.packed`
    (entries, per-tensor rows — a DataFrame by `.packed.to_frame()` — and dequantized weights),
    `.written` (files and hashes) and `.count` (bytes against the budget; `.count.to_frame()`
    lists the counted files)."""
    budget = budget if budget is not None else default_budget(checkpoint)
    return pack_checkpoint(checkpoint, recipe, out, data, budget, compact, seq_len, ttt, _progress(progress),
                           model=model, code_files=code_files)


def verify(submission, budget: str | int | None = None, data=BUNDLED_DATA, max_tokens: int | None = None,
           stride: int | None = None, device: str = "cpu", timeout: float = 3600.0, code_files=()) -> VerifyResult:
    """Run the submission folder in a fresh, guarded process: count its bytes (and `code_files`)
    against `budget` (default demo), decode, score. `.fits`, `.val_bpb`, `.line()` are the
    verdict; `.count` the byte count (`.count.to_frame()`). This executes the submission's code."""
    return verify_folder(submission, budget, data, stride=stride, max_tokens=max_tokens, device=device,
                         timeout=timeout, code_files=code_files)


def inspect(blob) -> BlobReport:
    """Every tensor's scheme, bytes (its exact share of the blob) and bits per weight, from a
    model.blob (or a submission folder) alone: {"tensors": [...], "streams": [...], "totals":
    {...}}; `.to_frame()` is the tensors as a DataFrame (`.to_frame("streams")` the streams)."""
    path = Path(blob)
    return inspect_blob(path / BLOB if path.is_dir() else path)


def compare(checkpoint=BUNDLED_CHECKPOINT, recipes=DEFAULT_RECIPES, data=BUNDLED_DATA,
            budget: str | int | None = None, max_tokens: int | None = None, compact: bool = True,
            model: ModelSpec | None = None, code_files=()) -> pd.DataFrame:
    """Recipes side by side on one checkpoint: total bytes as shipped, val_bpb and gap to the
    unquantized model (the first row), with fits/headroom columns when `budget` is given."""
    return compare_recipes(checkpoint, list(recipes), data, budget, max_tokens, compact, model=model,
                           code_files=code_files)


def evaluate(checkpoint=BUNDLED_CHECKPOINT, data=BUNDLED_DATA, seq_len: int | None = None,
             stride: int | None = None, max_tokens: int | None = None, device: str = "auto",
             progress: bool = False, model: ModelSpec | None = None) -> EvalResult:
    """The exact val_bpb of a checkpoint on a dataset's val shards (flat windows, or sliding with
    `stride`); `seq_len` defaults to the checkpoint's training length."""
    meter = Meter("eval") if progress else None
    return evaluate_checkpoint(checkpoint, data, seq_len, stride, max_tokens, device=device, progress=meter,
                               model=model)


def report(folder="runs/fit") -> dict[str, pd.DataFrame]:
    """The report's tables of a fit folder or a submission folder (`golf report` writes them):
    headline (verdict, budget, total, headroom, val_bpb, unquantized, gap), tensors, breakdown,
    details, and candidates/compare when present — every one a DataFrame."""
    return load_fit_tables(folder)


def plots(folder="runs/fit") -> dict[str, Figure]:
    """The report's plots of a fit or submission folder as matplotlib Figures, by name
    (byte_breakdown, dloss_heatmap, rate_distortion, layers)."""
    tables = load_fit_tables(folder)
    head = dict(zip(tables["headline"]["figure"], tables["headline"]["value"]))
    return all_plots(tables, head.get("budget_bytes"))
