"""`golf compare`: recipes side by side on one checkpoint — total bytes as shipped, val_bpb, gap.

For each recipe: pack the checkpoint (calibrating once per distinct calibration setting), count
the bytes the submission would ship (blob + code files, exactly as `golf pack` writes them), load
the packer's dequantized weights — bit-identical to what the shipped decoder produces — and score
them with the harness's exact val_bpb. The first row is the unquantized checkpoint.
"""

from __future__ import annotations

from typing import Callable

import pandas as pd

from artifact.budget import resolve_budget
from artifact.pack import pack_state_dict, recipe_needs_hessians
from artifact.models import ModelSpec
from artifact.pipeline import eval_setup, recipe_hessians, score, shipped_files
from artifact.recipe import load_recipe
from artifact.submission import BLOB, plan_files

DEFAULT_RECIPES = ("baseline-int8-zlib", "seed-000", "seed-001", "seed-002", "seed-003", "seed-004", "record-1855")


def compare_recipes(checkpoint, recipes=DEFAULT_RECIPES, data=None, budget=None, max_tokens=None,
                    compact: bool = True, batch_seqs: int = 16,
                    log: Callable[[str], None] | None = None, model: ModelSpec | None = None,
                    code_files=()) -> pd.DataFrame:
    """One row per recipe (plus the unquantized reference): recipe, model_bytes, code_bytes,
    total_bytes, val_bpb, gap (val_bpb − unquantized), and fits/headroom when `budget` is given.
    `data` is the data folder (val shards, and train tokens for recipes that calibrate on them);
    `model` the model to load (default golf's GPT); code bytes include a user's model file and
    the code files counted (the budget's and `code_files`)."""
    setup = eval_setup(checkpoint, data, None, max_tokens or None, model)
    net, loaded = setup.model, setup.loaded
    for note in loaded.notes if log is not None else ():
        log(f"model: {note}")
    limit = resolve_budget(budget) if budget is not None else None
    extra = shipped_files(loaded, limit, code_files)
    own = {k: v.detach().clone() for k, v in net.state_dict().items()}

    def val_bpb() -> float:
        return score(setup, batch_seqs=batch_seqs, device="cpu").val_bpb

    reference = val_bpb()
    rows = [{"recipe": "unquantized", "model_bytes": None, "code_bytes": None, "total_bytes": None,
             "val_bpb": reference, "gap": 0.0}]
    hessian_cache: dict[str, dict] = {}
    for name in recipes:
        recipe = load_recipe(name)
        if log is not None:
            log(f"compare: {recipe.name}")
        hessians = None
        if recipe_needs_hessians(recipe):
            key = repr(recipe.calibration)
            if key not in hessian_cache:
                net.load_state_dict(own)
                hessian_cache[key] = recipe_hessians(net, recipe, data)[0]
            hessians = hessian_cache[key]
        packed = pack_state_dict(loaded.state, recipe, hessians, predict_sizes=False)
        files = plan_files(packed.entries, loaded.section, {"seq_len": setup.seq_len}, compact=compact,
                           extra_files=extra)
        model_bytes = len(files[BLOB])
        code_bytes = sum(len(b) for rel, b in files.items() if rel != BLOB)
        # each tensor in its own dtype, as the shipped decoder hands it to the model
        net.load_state_dict({k: packed.dequantized[k].to(v.dtype) for k, v in loaded.state.items()})
        bpb = val_bpb()
        row = {"recipe": recipe.name, "model_bytes": model_bytes, "code_bytes": code_bytes,
               "total_bytes": model_bytes + code_bytes, "val_bpb": bpb, "gap": bpb - reference}
        if limit is not None:
            row["fits"] = row["total_bytes"] <= limit.bytes
            row["headroom"] = limit.bytes - row["total_bytes"]
        rows.append(row)
    net.load_state_dict(own)
    return pd.DataFrame(rows)
