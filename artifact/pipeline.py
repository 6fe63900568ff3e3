"""The pipelines as library calls: load → calibrate → measure (`prepare`), then solve → pack →
write → verify (`fit_checkpoint`); load → calibrate → pack → write by a fixed recipe
(`pack_checkpoint`); load → score (`evaluate_checkpoint`). The CLI, the rank check, the
benchmarks and the Python API (analysis.api) all run these; nothing here prints — progress and
log lines go to the callbacks given.

Calibration Hessians and per-tensor measurements are cached under `cache` (keyed by the
checkpoint's weights and the calibration settings), so a second fit measures only what is new.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from artifact.budget import Budget, ByteCount, count_submission, resolve_budget
from artifact.calibrate import batches_from_tokens
from artifact.fit import FitResult, counted_code_bytes, fit, recipe_data, recipe_toml
from artifact.measure import Grid, cache_key, default_jobs, measure, state_hash
from artifact.models import LoadedModel, ModelSpec, load_model
from artifact.pack import PackResult, calibrate_for_recipe, pack_state_dict, recipe_needs_hessians
from artifact.recipe import CalibrationConfig, Recipe, load_recipe, parse_recipe
from artifact.runtime.contract import mean_loss, model_vocab, require_per_token
from artifact.runtime.errors import ArtifactError, ConfigError, DataError
from artifact.runtime.files import atomic_write, atomic_writer, check_writable, file_sha256, read_json_or_none
from artifact.runtime.progress import Progress
from artifact.runtime.scoring import EvalResult, ValStream, eval_flat, eval_sliding, val_stream
from artifact.runtime.shards import load_tokens, resolve_data
from artifact.runtime.ttt import TTTConfig
from artifact.submission import check_out_dir, merge_shipped, read_code_files, write_submission
from artifact.verify import VerifyResult, verify

PROBE_SEQS = 128
# probe forwards cost ~ seqs x seq_len x params: large models probe on fewer sequences (>= 2) so
# the ~1 probe per tensor stays about as cheap as 128 x 1025 tokens on a 600k-parameter model
PROBE_WORK = 128 * 1025 * 600_000
CALIBRATION_TOKENS = 64 * 1024
Log = Callable[[str], None]
StageProgress = Callable[[str], Progress]  # stage name ("calibrate", "pack", …) -> its progress callback


def probe_loss_fn(model: torch.nn.Module, batches: list[torch.Tensor]) -> Callable[[dict], float]:
    """probe_loss(replaced) → mean loss on `batches` with the `replaced` tensors (state-dict
    names, each cast to the model's own dtype) swapped in, through the model contract."""
    tensors = model.state_dict(keep_vars=True)

    @torch.no_grad()
    def probe(replaced: dict) -> float:
        saved = {n: tensors[n].detach().clone() for n in replaced}
        try:
            for n, w in replaced.items():
                tensors[n].data.copy_(w)
            total = 0.0
            for b in batches:
                total += float(mean_loss(model, b[:, :-1], b[:, 1:])) * b.shape[0]
            return total / sum(b.shape[0] for b in batches)
        finally:
            for n, w in saved.items():
                tensors[n].data.copy_(w)
    return probe


def probe_seqs(n_params: int, seq_len: int) -> int:
    """Probe sequences for a model of `n_params` at `seq_len` (PROBE_WORK, 2..PROBE_SEQS)."""
    return max(2, min(PROBE_SEQS, PROBE_WORK // max(1, n_params * (seq_len + 1))))


def _cached_hessians(path: Path | None, compute: Callable[[], dict], log: Log | None = None) -> dict:
    if path is not None and path.is_file():
        if log is not None:
            log(f"calibrate: Hessians from the cache ({path.name})")
        return torch.load(path, weights_only=True)
    hessians = compute()
    if path is not None:
        with atomic_writer(path) as f:
            torch.save(hessians, f)
    return hessians


def prepare(checkpoint, data, cache: str | Path | None = None, grid: Grid | None = None,
            progress: StageProgress | None = None, jobs: int | None = 1, model: ModelSpec | None = None,
            log: Log | None = None) -> dict[str, Any]:
    """Load the checkpoint (as `model` says: golf's GPT by default, or a user's module),
    calibrate (Hessians cached) and measure (`jobs` worker processes, None:
    `measure.default_jobs()`). `progress(stage)` is called as each stage starts ("calibrate",
    then "measure") and gives that stage's progress callback; `log` hears what came from the
    cache. Returns a dict with loaded (the LoadedModel), model, cfg (golf's GPT's ModelConfig,
    else None), meta, state, hessians, calibration, measurement, data (paths) and seq_len (the
    training seq_len)."""
    if cache:
        check_writable(cache, "measurement cache")
    loaded = load_model(checkpoint, model)
    net, state, seq_len = loaded.model, loaded.state, loaded.seq_len
    paths = resolve_data(data, vocab_size=loaded.vocab_size)
    tokens = load_tokens(paths.require_train(), loaded.vocab_size)
    # calibrate at the length the model was trained on (its activations beyond it are not the
    # ones it will be scored with), on as many tokens as the recipes' 64 x 1024
    cal = CalibrationConfig(seq_len=seq_len, n_seqs=max(1, CALIBRATION_TOKENS // seq_len))
    used = np.asarray(tokens[cal.offset: cal.offset + cal.n_seqs * cal.seq_len])
    settings = {k: getattr(cal, k) for k in cal.__dataclass_fields__}
    # the cache keys hold the forward too (the weights alone do not fix it: a soft-cap, a model file)
    calibration = {**settings, "tokens_sha": hashlib.sha256(used.astype(np.int64).tobytes()).hexdigest(),
                   "model": model_digest(loaded)}
    cache_dir = Path(cache) if cache else None
    ckpt_hash = state_hash(state)
    h_path = cache_dir / f"hessians-{cache_key(ckpt_hash, calibration)}.pt" if cache_dir else None
    recipe = parse_recipe({"name": "fit", "calibration": settings})
    stage = progress or (lambda name: None)
    cal_progress = stage("calibrate")
    hessians = _cached_hessians(h_path, lambda: calibrate_for_recipe(net, recipe, tokens, progress=cal_progress), log)
    n_probe = probe_seqs(sum(t.numel() for t in state.values()), seq_len)
    probe_batches = batches_from_tokens(tokens, n_probe, seq_len + 1, n_probe, cal.offset)
    measurement = measure(state, hessians, grid, probe_loss_fn(net, probe_batches),
                          calibration={**calibration, "probe": [n_probe, seq_len + 1]}, cache_dir=cache_dir,
                          progress=stage("measure"), jobs=default_jobs() if jobs is None else jobs)
    return {"loaded": loaded, "model": net, "cfg": loaded.cfg, "meta": loaded.meta, "state": state,
            "hessians": hessians, "calibration": calibration, "measurement": measurement, "data": paths,
            "seq_len": seq_len}


def model_digest(loaded: LoadedModel) -> str:
    """sha256 of what builds the model's forward: config.json's model section and the model file."""
    h = hashlib.sha256(json.dumps(loaded.section, sort_keys=True).encode())
    for name in sorted(loaded.files):
        h.update(name.encode() + b"\0" + loaded.files[name])
    return h.hexdigest()


def recipe_hessians(model: torch.nn.Module, recipe: Recipe, data,
                    progress: Progress | None = None) -> tuple[dict | None, str | None]:
    """Hessians when the recipe needs them (train tokens from the data folder `data` for a
    "train" calibration source), else (None, None). Returns (hessians, calibration source)."""
    if not recipe_needs_hessians(recipe):
        return None, None
    tokens, source = None, "self-generated"
    if recipe.calibration.source == "train":
        vocab = model_vocab(model)
        paths = resolve_data(data, vocab_size=vocab)
        tokens = load_tokens(paths.require_train(), vocab)
        source = paths.dataset_dir.name
    return calibrate_for_recipe(model, recipe, tokens, progress=progress), source


def shipped_files(loaded: LoadedModel, budget: Budget | None, code_files=()) -> dict[str, bytes]:
    """What ships beside run.py: the model file of a user's model, and the code files counted
    (the budget's and `code_files`), each as it is."""
    listed = [*(budget.code_files if budget is not None else ()), *code_files]
    return merge_shipped(loaded.files, read_code_files(listed))


@dataclass
class FitRun:
    """What `fit_checkpoint` did: the fit's choice, and (unless a dry run) the submission written,
    its counted total and the fresh-process verdict."""

    result: FitResult
    code_bytes: int
    eval_defaults: dict
    submission: Path | None = None
    real_total: int | None = None
    verify: VerifyResult | None = None
    recipe_file: Path | None = None
    extra: dict = field(default_factory=dict)


FIT_FORMAT = "golf-fit"  # fit.json's "format": marks a folder a fit wrote (and may write again)
FIT_FILES = ("fit.json", "tensors.csv", "candidates.csv", "recipe.toml", "report.csv", "report.md", "report.html",
             "submission")


def is_fit_folder(folder: str | Path) -> bool:
    """Whether `folder` holds a previous fit: its fit.json says so (or, from before the marker,
    has a fit's fields)."""
    record = read_json_or_none(Path(folder) / "fit.json")
    return isinstance(record, dict) and (record.get("format") == FIT_FORMAT
                                         or {"budget", "tensors", "rounds"} <= set(record))


def check_fit_out(out: str | Path) -> None:
    """Refuse (ArtifactError) an OUT that exists and is neither empty nor a previous fit: a fit
    writes recipe.toml, fit.json, reports and submission/ there, and must not overwrite a
    user's files of those names."""
    out = Path(out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ArtifactError(f"{out}: exists and is not a folder; refusing to write a fit there")
    if out.is_dir() and any(out.iterdir()) and not is_fit_folder(out):
        clash = sorted(p.name for p in out.iterdir() if p.name in FIT_FILES)
        raise ArtifactError(f"{out}: folder exists and is not a previous fit (no fit.json of format {FIT_FORMAT!r})"
                            + (f"; it holds {', '.join(clash)}" if clash else "") + "; refusing to write into it")


def fit_checkpoint(prepared: dict, budget: Budget, out: str | Path, val_data, pins: dict[str, str] | None = None,
                   dry_run: bool = False, compact: bool = True, max_tokens: int | None = None,
                   budget_label: str | None = None, log: Log | None = None, code_files=(),
                   progress: StageProgress | None = None) -> FitRun:
    """Solve, pack and repair under `budget` (code counted as shipped: the runtime, a user's
    model file, the budget's and `code_files`), write the submission to OUT/submission and the
    fit's recipe to OUT/recipe.toml, and verify it in a fresh process on `val_data`'s val shards
    (the first `max_tokens` tokens when given). `progress(stage)` is called as each stage starts
    ("solve", then "verify": its scoring's progress); `log` hears each pack round."""
    out = Path(out)
    sub_dir = out / "submission"
    if not dry_run:
        check_fit_out(out)
        check_out_dir(sub_dir)  # refuse before minutes of packing, not after
    stage = progress or (lambda name: None)
    stage("solve")
    loaded, m = prepared["loaded"], prepared["measurement"]
    extra = shipped_files(loaded, budget, code_files)
    eval_defaults = {"seq_len": prepared["seq_len"]}
    code = counted_code_bytes(loaded.section, eval_defaults, budget, compact, extra)
    res = fit(prepared["state"], m, budget, code, prepared["hessians"], pins, dry_run, prepared["calibration"],
              log=log)
    run = FitRun(res, code, eval_defaults)
    if dry_run:
        return run
    info = {"recipe": "fit", "budget": budget_label or budget.name, "model": loaded.report(),
            "fit": {"choices": res.choices, "predicted_total": res.predicted_total}}
    write_submission(sub_dir, res.packed.entries, loaded.section, eval_defaults, compact=compact, info=info,
                     extra_files=extra)
    count = count_submission(sub_dir, budget, code_files)
    if count.total > budget.bytes:  # fit() checked the same bytes; this must never happen
        raise ArtifactError(f"fit: written submission is {count.total:,} bytes, over {budget.bytes:,}")
    run.submission, run.real_total = sub_dir, count.total
    run.recipe_file = out / "recipe.toml"
    atomic_write(run.recipe_file, recipe_toml(recipe_data(res.choices, prepared["calibration"], m.grid.lqer_codec,
                                                          m.grid.scales_codec, streams=res.streams)))
    run.verify = verify(sub_dir, budget, val_data, max_tokens=max_tokens, device="cpu", code_files=code_files,
                        progress=stage("verify"))
    return run


# ----------------------------------------------------------------------------- pack by a recipe
@dataclass
class PackRun:
    """What `pack_checkpoint` wrote: the packer's result, the submission's files and their count."""

    packed: PackResult
    written: dict
    count: ByteCount
    eval_defaults: dict
    info: dict
    loaded: LoadedModel | None = None


def pack_checkpoint(checkpoint, recipe: str | Path | Recipe, out: str | Path, data, budget=None,
                    compact: bool = True, seq_len: int | None = None, ttt: TTTConfig | None = None,
                    progress: StageProgress | None = None, model: ModelSpec | None = None,
                    code_files=()) -> PackRun:
    """Pack `checkpoint` (golf's GPT, or the user's module `model` names) by `recipe` (a name, a
    .toml path or a Recipe) into the submission folder `out`, calibrating on `data`'s train
    tokens when the recipe needs Hessians. `seq_len` is the eval window recorded in config.json
    (default: the model's seq_len: its training length, `--set seq_len`, else 1024); `ttt` makes
    the submission score with test-time training. `budget` (a name or bytes; default demo)
    labels the folder and counts it; its code files and `code_files` ship beside run.py."""
    budget_obj = resolve_budget(budget)
    check_out_dir(out)  # refuse before minutes of packing, not after
    if data is not None and not Path(data).is_dir():  # even when the recipe calibrates on nothing
        raise DataError(f"{data}: no such data folder")
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    loaded = load_model(checkpoint, model)
    extra = shipped_files(loaded, budget_obj, code_files)
    seq_len = seq_len or loaded.seq_len
    if seq_len < 1:
        raise ConfigError(f"seq_len {seq_len} must be >= 1")
    eval_defaults: dict = {"seq_len": seq_len}
    if ttt is not None:  # checked by the very TTTConfig the shipped run.py reads it back with
        require_per_token(loaded.model, "test-time training")
        ttt = TTTConfig.from_dict(ttt.to_dict())
        ttt.chunk_for(seq_len)  # a document-mode chunk longer than the eval window fails now
        eval_defaults["ttt"] = ttt.to_dict()
    stage = progress or (lambda name: None)
    hessians, calib_data = recipe_hessians(loaded.model, recipe, data, progress=stage("calibrate"))
    packed = pack_state_dict(loaded.state, recipe, hessians, progress=stage("pack"))
    info = {
        "recipe": recipe.name,
        "budget": str(budget) if budget is not None else budget_obj.name,
        "checkpoint": {"path": str(checkpoint), "file": loaded.weights.name, "sha256": file_sha256(loaded.weights)},
        "model": loaded.report(),
        "calibration_data": calib_data,
        "predicted_tensor_bytes": _predicted_bytes(packed.rows),
        "tensors": _plain(list(packed.rows)),
    }
    written = write_submission(out, packed.entries, loaded.section, eval_defaults, compact=compact, info=info,
                               extra_files=extra)
    return PackRun(packed, written, count_submission(out, budget_obj, code_files), eval_defaults, info, loaded)


def _plain(value):
    """JSON-able copy of pack figures (numpy/torch scalars → float/int, NaN → None)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, int, bool)):
        return value
    if hasattr(value, "tolist"):
        return _plain(value.tolist())
    if hasattr(value, "__dict__"):
        return _plain(vars(value))
    return str(value)


def _predicted_bytes(rows) -> int | None:
    """Σ of the packer's per-tensor size predictions (None when it made none)."""
    sizes = [r.get("bytes") for r in rows]
    return int(sum(sizes)) if sizes and all(isinstance(b, int) for b in sizes) else None


# ----------------------------------------------------------------------------- evaluate
@dataclass
class EvalSetup:
    """A checkpoint's model and the val stream it is scored on, at the window length `seq_len`."""

    model: torch.nn.Module
    stream: ValStream
    seq_len: int
    loaded: LoadedModel | None = None


def eval_setup(checkpoint, data, seq_len: int | None = None, max_tokens: int | None = None,
               model: ModelSpec | None = None) -> EvalSetup:
    """Load `checkpoint` (as `model` says) and `data`'s val stream (cut to `max_tokens`);
    `seq_len` defaults to the model's (its training seq_len, `--set seq_len`, else 1024)."""
    loaded = load_model(checkpoint, model)
    stream = val_stream(data, loaded.vocab_size, max_tokens)
    return EvalSetup(loaded.model, stream, seq_len or loaded.seq_len, loaded)


def score(setup: EvalSetup, stride: int | None = None, batch_seqs: int = 8, device: str | None = "auto",
          progress: Progress | None = None) -> EvalResult:
    """The exact val_bpb of the setup's model on its stream: flat, or sliding with `stride`."""
    s = setup.stream
    common = dict(batch_seqs=batch_seqs, device=device, sidecar=s.sidecar, progress=progress)
    if stride is not None:
        return eval_sliding(setup.model, s.tokens, s.counter, setup.seq_len, stride, **common)
    return eval_flat(setup.model, s.tokens, s.counter, setup.seq_len, **common)


def evaluate_checkpoint(checkpoint, data, seq_len: int | None = None, stride: int | None = None,
                        max_tokens: int | None = None, batch_seqs: int = 8, device: str | None = "auto",
                        progress: Progress | None = None, model: ModelSpec | None = None) -> EvalResult:
    """The exact val_bpb of `checkpoint` on `data`'s val shards (artifact/docs/val_bpb.md)."""
    return score(eval_setup(checkpoint, data, seq_len, max_tokens, model), stride, batch_seqs, device, progress)
