"""`golf compare`: recipes side by side on one checkpoint — total bytes as shipped, val_bpb, gap.

For each recipe: pack the checkpoint (calibrating once per distinct calibration setting), count
the bytes the submission would ship (blob + code files, exactly as `golf pack` writes them), load
the packer's dequantized weights — bit-identical to what the shipped decoder produces — and score
them with the harness's exact val_bpb. The first row is the unquantized checkpoint.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from artifact.cliutil import add_code_form_flags, add_json_flag, emit

DEFAULT_RECIPES = ("baseline-int8-zlib", "seed-000", "seed-001", "seed-002", "seed-003", "seed-004", "record-1855")


def compare_recipes(checkpoint=None, recipes=DEFAULT_RECIPES, data=None, budget=None, max_tokens=None,
                    compact: bool = True, batch_seqs: int = 16) -> pd.DataFrame:
    """One row per recipe (plus the unquantized reference): recipe, model_bytes, code_bytes,
    total_bytes, val_bpb, gap (val_bpb − unquantized), and fits/headroom when `budget` is given."""

    from analysis.commands import recipe_hessians, ship_modules, train_seq_len
    from artifact.budget import resolve_budget
    from artifact.pack import pack_state_dict, recipe_needs_hessians
    from artifact.recipe import load_recipe
    from artifact.submission import BLOB, plan_files
    from train.bundled import BUNDLED_CHECKPOINT, BUNDLED_DATA
    from train.byte_count import ByteCounter
    from train.checkpoint import load_checkpoint
    from train.evaluate import eval_flat, load_val
    from train.shards import resolve_data

    model, cfg, meta = load_checkpoint(checkpoint or BUNDLED_CHECKPOINT)
    data_paths = resolve_data(data or BUNDLED_DATA, vocab_size=cfg.vocab_size)
    counter = ByteCounter.from_sentencepiece(data_paths.require_tokenizer(), cfg.vocab_size)
    tokens, sidecar = load_val(data_paths, cfg.vocab_size)
    if max_tokens:
        tokens = tokens[:max_tokens]
        sidecar = None if sidecar is None else sidecar[:max_tokens]
    seq_len = train_seq_len(meta) or 1024
    limit = resolve_budget(budget) if budget is not None else None
    original = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def score() -> float:
        return eval_flat(model, tokens, counter, seq_len, batch_seqs=batch_seqs, device="cpu",
                         sidecar=sidecar, progress=False).val_bpb

    reference = score()
    rows = [{"recipe": "unquantized", "model_bytes": None, "code_bytes": None, "total_bytes": None,
             "val_bpb": reference, "gap": 0.0}]
    hessian_cache: dict[str, dict] = {}
    for name in recipes:
        recipe = load_recipe(name)
        print(f"compare: {recipe.name}", file=sys.stderr, flush=True)
        hessians = None
        if recipe_needs_hessians(recipe):
            key = repr(recipe.calibration)
            if key not in hessian_cache:
                model.load_state_dict(original)
                hessian_cache[key] = recipe_hessians(model, cfg, recipe, data)[0]
            hessians = hessian_cache[key]
        packed = pack_state_dict(original, recipe, hessians, predict_sizes=False)
        files = plan_files(packed.entries, cfg.to_dict(), {"seq_len": seq_len}, ship_modules(), compact=compact)
        model_bytes = len(files[BLOB])
        code_bytes = sum(len(b) for rel, b in files.items() if rel != BLOB)
        model.load_state_dict({k: packed.dequantized[k].to(original[k].dtype) for k in original})
        bpb = score()
        row = {"recipe": recipe.name, "model_bytes": model_bytes, "code_bytes": code_bytes,
               "total_bytes": model_bytes + code_bytes, "val_bpb": bpb, "gap": bpb - reference}
        if limit is not None:
            row["fits"] = row["total_bytes"] <= limit.bytes
            row["headroom"] = limit.bytes - row["total_bytes"]
        rows.append(row)
    model.load_state_dict(original)
    return pd.DataFrame(rows)


def register(sub) -> None:
    p = sub.add_parser("compare", help="recipes side by side on one checkpoint: bytes, val_bpb, gap",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", nargs="?", default=None, help="checkpoint (default: the bundled one)")
    p.add_argument("--recipes", default=",".join(DEFAULT_RECIPES), help="comma-separated recipe names or .toml paths")
    p.add_argument("--data", default=None, help="data folder (default: the bundled data)")
    p.add_argument("--budget", default=None, help="budget name or bytes: adds fits/headroom columns")
    p.add_argument("--max-tokens", type=int, default=None, help="score only a prefix of the val tokens")
    add_code_form_flags(p)
    p.add_argument("--csv", type=Path, default=None, help="also write the table as CSV")
    add_json_flag(p)
    p.set_defaults(run=_run, help_parser=p)


def _run(args) -> int:
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    table = compare_recipes(args.checkpoint, recipes, args.data, args.budget, args.max_tokens, args.compact)
    if args.csv:
        table.to_csv(args.csv, index=False)
    emit({"rows": table.to_dict(orient="records")}, args.json, lambda _: table.to_string(index=False))
    return 0
