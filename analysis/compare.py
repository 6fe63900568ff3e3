"""Recipes side by side, and each recipe beside the fit at that recipe's bytes.

`compare_recipes` (`golf compare`): for each recipe, pack the checkpoint (calibrating once per
distinct calibration setting), count the bytes the submission would ship (blob + code files,
counted by the budget's rules exactly as `golf verify` counts them), load the packer's
dequantized weights — bit-identical to what the shipped decoder produces — and score them with
the harness's exact val_bpb. The first row is the unquantized checkpoint.

`compare_at_recipe_bytes` (`golf fit --compare`): for each recipe, the same pack and count, then
the fit re-solved from the measurement cache at exactly the recipe's counted total (solve + pack +
repair, `artifact.fit`), both scored on the same val tokens against the same unquantized
reference: the question "at the bytes this recipe spends, what does the fit get?".
"""

from __future__ import annotations

from typing import Callable

import pandas as pd

from artifact.budget import Budget, ByteCount, count_files, resolve_budget
from artifact.fit import counted_code_bytes, fit
from artifact.models import ModelSpec
from artifact.pack import PackResult, pack_state_dict, recipe_needs_hessians
from artifact.pipeline import EvalSetup, eval_setup, recipe_hessians, score, shipped_files
from artifact.recipe import Recipe, load_recipe
from artifact.runtime.errors import GolfError
from artifact.runtime.progress import Progress
from artifact.runtime.scoring import val_stream
from artifact.submission import plan_files

DEFAULT_RECIPES = ("baseline-int8-zlib", "seed-000", "seed-001", "seed-002", "seed-003", "seed-004", "record-1855")
# `golf compare`'s columns, in this order
RECIPE_COLUMNS = ("recipe", "total_bytes", "model_bytes", "code_bytes", "val_bpb", "gap", "fits", "headroom")
# `golf fit --compare`'s columns, in this order: the recipe, then the fit at the recipe's bytes
AT_BYTES_COLUMNS = ("recipe", "recipe_bytes", "recipe_val_bpb", "recipe_gap", "fit_bytes", "fit_val_bpb", "fit_gap",
                    "fit_minus_recipe")


class _Scorer:
    """Scores weights on one setup's val tokens (the model's own weights restored after each).
    Each tensor goes through its checkpoint dtype first, as the shipped decoder hands it over."""

    def __init__(self, setup: EvalSetup, batch_seqs: int):
        self.setup, self.batch_seqs = setup, batch_seqs
        self.original = {k: v.detach().clone() for k, v in setup.model.state_dict().items()}
        self.dtypes = {k: v.dtype for k, v in setup.loaded.state.items()}
        self.tokens = 0

    def __call__(self, weights: dict | None = None) -> float:
        model = self.setup.model
        if weights is not None:
            model.load_state_dict({k: weights[k].to(self.dtypes[k]) for k in self.original})
        try:
            result = score(self.setup, batch_seqs=self.batch_seqs, device="cpu")
        finally:
            model.load_state_dict(self.original)
        self.tokens = result.tokens
        return result.val_bpb


class _RecipePacker:
    """Packs recipes as `golf pack` would and counts their files as `golf verify` would; the
    calibration Hessians of each distinct calibration setting are computed once."""

    def __init__(self, setup: EvalSetup, data, compact: bool, budget: Budget, code_files=()):
        self.setup, self.data, self.compact, self.budget = setup, data, compact, budget
        self.extra = shipped_files(setup.loaded, budget, code_files)
        self.hessians: dict[str, dict] = {}

    def __call__(self, name) -> tuple[Recipe, PackResult, ByteCount]:
        recipe = load_recipe(name)
        model = self.setup.model
        hessians = None
        if recipe_needs_hessians(recipe):
            key = repr(recipe.calibration)
            if key not in self.hessians:
                self.hessians[key] = recipe_hessians(model, recipe, self.data)[0]
            hessians = self.hessians[key]
        loaded = self.setup.loaded
        packed = pack_state_dict(loaded.state, recipe, hessians, predict_sizes=False)
        files = plan_files(packed.entries, loaded.section, {"seq_len": self.setup.seq_len},
                           compact=self.compact, extra_files=self.extra)
        return recipe, packed, count_files(files, self.budget)


def compare_recipes(checkpoint, recipes=DEFAULT_RECIPES, data=None, budget=None, max_tokens=None,
                    compact: bool = True, batch_seqs: int = 16,
                    log: Callable[[str], None] | None = None, model: ModelSpec | None = None,
                    code_files=()) -> pd.DataFrame:
    """One row per recipe (plus the unquantized reference first), columns RECIPE_COLUMNS:
    recipe, total/model/code bytes as counted, val_bpb, gap (val_bpb − unquantized), and
    fits/headroom when `budget` is given. `data` is the data folder (val shards, and train tokens
    for recipes that calibrate on them); `model` the model to load (default golf's GPT); code
    bytes include a user's model file and the code files counted (the budget's and `code_files`)."""
    setup = eval_setup(checkpoint, data, None, max_tokens or None, model)
    for note in setup.loaded.notes if log is not None else ():
        log(f"model: {note}")
    limit = resolve_budget(budget) if budget is not None else None
    scorer = _Scorer(setup, batch_seqs)
    packer = _RecipePacker(setup, data, compact, limit or resolve_budget(None), code_files)
    reference = scorer()
    rows = [{"recipe": "unquantized", "val_bpb": reference, "gap": 0.0}]
    for name in recipes:
        if log is not None:
            log(f"compare: {name}")
        recipe, packed, count = packer(name)
        bpb = scorer(packed.dequantized)
        row = {"recipe": recipe.name, "total_bytes": count.total, "model_bytes": count.model_bytes,
               "code_bytes": count.code_bytes, "val_bpb": bpb, "gap": bpb - reference}
        if limit is not None:
            row.update(fits=count.fits, headroom=count.headroom)
        rows.append(row)
    columns = [c for c in RECIPE_COLUMNS if limit is not None or c not in ("fits", "headroom")]
    return pd.DataFrame(rows, columns=columns).astype({c: "Int64" for c in columns if c.endswith("bytes")
                                                       or c == "headroom"})


def compare_at_recipe_bytes(prepared: dict, recipes, data, budget: Budget, max_tokens: int | None = None,
                            compact: bool = True, batch_seqs: int = 16, progress: Progress | None = None,
                            code_files=()) -> dict:
    """Each recipe beside the fit re-solved at that recipe's counted total bytes (from the
    measurement in `prepared`, as `artifact.pipeline.prepare` returns it), both scored on the
    first `max_tokens` val tokens (None: all) of `data` against the unquantized model on the
    same tokens. `budget` gives the counting rules (which files count as model, which not at all).

    Returns {"tokens": targets scored, "reference_val_bpb": the unquantized val_bpb on them,
    "rows": [one dict per recipe, AT_BYTES_COLUMNS, plus "note" when the fit has no choice that
    small]}. `progress(done, total, note)` hears each recipe as it is done."""
    loaded, seq_len = prepared["loaded"], prepared["seq_len"]
    stream = val_stream(data, int(loaded.vocab_size), max_tokens or None)
    setup = EvalSetup(prepared["model"], stream, seq_len, loaded)
    scorer, packer = _Scorer(setup, batch_seqs), _RecipePacker(setup, data, compact, budget, code_files)
    reference = scorer()
    names = list(recipes)
    rows = []
    for i, name in enumerate(names):
        recipe, packed, count = packer(name)
        recipe_bpb = scorer(packed.dequantized)
        row = {"recipe": recipe.name, "recipe_bytes": count.total, "recipe_val_bpb": recipe_bpb,
               "recipe_gap": recipe_bpb - reference}
        at = Budget(f"{recipe.name} bytes", count.total, model_files=budget.model_files,
                    not_counted=budget.not_counted)
        code = counted_code_bytes(loaded.section, {"seq_len": seq_len}, at, compact, packer.extra)
        try:
            res = fit(prepared["state"], prepared["measurement"], at, code, prepared["hessians"],
                      calibration=prepared["calibration"])
        except GolfError as exc:  # e.g. the recipe is smaller than the fit's smallest choice
            row["note"] = f"no fit at {count.total:,} bytes: {exc}"
        else:
            fit_bpb = scorer(res.packed.dequantized)
            row.update(fit_bytes=res.real_total, fit_val_bpb=fit_bpb, fit_gap=fit_bpb - reference,
                       fit_minus_recipe=fit_bpb - recipe_bpb)
        rows.append(row)
        if progress is not None:
            progress(i + 1, len(names), _at_bytes_line(row))
    return {"tokens": scorer.tokens, "reference_val_bpb": reference, "rows": rows}


def _at_bytes_line(row: dict) -> str:
    line = f"{row['recipe']} {row['recipe_bytes']:,} B val_bpb {row['recipe_val_bpb']:.6f}"
    if "fit_val_bpb" in row:
        return line + (f" | fit at those bytes {row['fit_bytes']:,} B val_bpb {row['fit_val_bpb']:.6f} "
                       f"({row['fit_minus_recipe']:+.6f})")
    return line + f" | {row['note']}"
