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
from artifact.pack import PackResult, calibrate_for_recipe, pack_state_dict, recipe_needs_hessians
from artifact.recipe import CalibrationConfig, Recipe, load_recipe, parse_recipe
from artifact.runtime.checkpoint import load_checkpoint, locate_checkpoint, train_seq_len
from artifact.runtime.errors import ArtifactError, ConfigError
from artifact.runtime.files import atomic_write, atomic_writer
from artifact.runtime.progress import Progress
from artifact.runtime.scoring import EvalResult, ValStream, eval_flat, eval_sliding, val_stream
from artifact.runtime.shards import load_tokens, resolve_data
from artifact.runtime.ttt import TTTConfig
from artifact.submission import check_out_dir, write_submission
from artifact.verify import VerifyResult, verify

DEFAULT_SEQ_LEN = 1024
PROBE_SEQS = 128
# probe forwards cost ~ seqs x seq_len x params: large models probe on fewer sequences (>= 2) so
# the ~1 probe per tensor stays about as cheap as 128 x 1025 tokens on a 600k-parameter model
PROBE_WORK = 128 * 1025 * 600_000
CALIBRATION_TOKENS = 64 * 1024
Log = Callable[[str], None]
StageProgress = Callable[[str], Progress]  # stage name ("calibrate", "pack", …) -> its progress callback


def probe_loss_fn(model: torch.nn.Module, batches: list[torch.Tensor]) -> Callable[[dict], float]:
    """probe_loss(replaced) → mean loss on `batches` with the `replaced` tensors swapped in."""
    params = dict(model.named_parameters())

    @torch.no_grad()
    def probe(replaced: dict) -> float:
        saved = {n: params[n].detach().clone() for n in replaced}
        try:
            for n, w in replaced.items():
                params[n].copy_(w)
            total = 0.0
            for b in batches:
                total += float(model.loss(b[:, :-1], b[:, 1:])) * b.shape[0]
            return total / sum(b.shape[0] for b in batches)
        finally:
            for n, w in saved.items():
                params[n].copy_(w)
    return probe


def probe_seqs(n_params: int, seq_len: int) -> int:
    """Probe sequences for a model of `n_params` at `seq_len` (PROBE_WORK, 2..PROBE_SEQS)."""
    return max(2, min(PROBE_SEQS, PROBE_WORK // max(1, n_params * (seq_len + 1))))


def _cached_hessians(path: Path | None, compute: Callable[[], dict]) -> dict:
    if path is not None and path.is_file():
        return torch.load(path, weights_only=True)
    hessians = compute()
    if path is not None:
        with atomic_writer(path) as f:
            torch.save(hessians, f)
    return hessians


def prepare(checkpoint, data, cache: str | Path | None = None, grid: Grid | None = None,
            progress: Callable[[str], Progress] | None = None, jobs: int | None = 1) -> dict[str, Any]:
    """Load the checkpoint, calibrate (Hessians cached) and measure (`jobs` worker processes,
    None: `measure.default_jobs()`). `progress(stage)` gives the progress callback of a stage
    ("calibrate", "measure"). Returns a dict with model, cfg, meta, state, hessians,
    calibration, measurement, data (paths) and seq_len (the training seq_len)."""
    model, cfg, meta = load_checkpoint(checkpoint)
    model.eval()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    paths = resolve_data(data, vocab_size=cfg.vocab_size)
    tokens = load_tokens(paths.require_train(), cfg.vocab_size)
    seq_len = train_seq_len(meta) or DEFAULT_SEQ_LEN
    # calibrate at the length the model was trained on (its activations beyond it are not the
    # ones it will be scored with), on as many tokens as the recipes' 64 x 1024
    cal = CalibrationConfig(seq_len=seq_len, n_seqs=max(1, CALIBRATION_TOKENS // seq_len))
    used = np.asarray(tokens[cal.offset: cal.offset + cal.n_seqs * cal.seq_len])
    calibration = {**{k: getattr(cal, k) for k in cal.__dataclass_fields__},
                   "tokens_sha": hashlib.sha256(used.astype(np.int64).tobytes()).hexdigest()}
    cache_dir = Path(cache) if cache else None
    ckpt_hash = state_hash(state)
    h_path = cache_dir / f"hessians-{cache_key(ckpt_hash, calibration)}.pt" if cache_dir else None
    recipe = parse_recipe({"name": "fit", "calibration": {k: v for k, v in calibration.items() if k != "tokens_sha"}})
    hessians = _cached_hessians(h_path, lambda: calibrate_for_recipe(
        model, recipe, tokens, model.hidden, progress=progress("calibrate") if progress else None))
    n_probe = probe_seqs(sum(t.numel() for t in state.values()), seq_len)
    probe_batches = batches_from_tokens(tokens, n_probe, seq_len + 1, n_probe, cal.offset)
    measurement = measure(state, hessians, grid, probe_loss_fn(model, probe_batches),
                          calibration={**calibration, "probe": [n_probe, seq_len + 1]}, cache_dir=cache_dir,
                          progress=progress("measure") if progress else None,
                          jobs=default_jobs() if jobs is None else jobs)
    return {"model": model, "cfg": cfg, "meta": meta, "state": state, "hessians": hessians,
            "calibration": calibration, "measurement": measurement, "data": paths, "seq_len": seq_len}


def recipe_hessians(model: torch.nn.Module, cfg, recipe: Recipe, data,
                    progress: Progress | None = None) -> tuple[dict | None, str | None]:
    """Hessians when the recipe needs them (train tokens from the data folder `data` for a
    "train" calibration source), else (None, None). Returns (hessians, calibration source)."""
    if not recipe_needs_hessians(recipe):
        return None, None
    tokens, source = None, "self-generated"
    if recipe.calibration.source == "train":
        paths = resolve_data(data, vocab_size=cfg.vocab_size)
        tokens = load_tokens(paths.require_train(), cfg.vocab_size)
        source = paths.dataset_dir.name
    return calibrate_for_recipe(model, recipe, tokens, model.hidden, progress=progress), source


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


def fit_checkpoint(prepared: dict, budget: Budget, out: str | Path, val_data, pins: dict[str, str] | None = None,
                   dry_run: bool = False, compact: bool = True, max_tokens: int | None = None,
                   budget_label: str | None = None, log: Log | None = None) -> FitRun:
    """Solve, pack and repair under `budget` (code counted as shipped), write the submission to
    OUT/submission and the fit's recipe to OUT/recipe.toml, and verify it in a fresh process on
    `val_data`'s val shards (the first `max_tokens` tokens when given)."""
    out = Path(out)
    sub_dir = out / "submission"
    if not dry_run:
        check_out_dir(sub_dir)  # refuse before minutes of packing, not after
    cfg, m = prepared["cfg"], prepared["measurement"]
    eval_defaults = {"seq_len": prepared["seq_len"]}
    code = counted_code_bytes(cfg.to_dict(), eval_defaults, budget, compact)
    res = fit(prepared["state"], m, budget, code, prepared["hessians"], pins, dry_run, prepared["calibration"],
              log=log)
    run = FitRun(res, code, eval_defaults)
    if dry_run:
        return run
    info = {"recipe": "fit", "budget": budget_label or budget.name,
            "fit": {"choices": res.choices, "predicted_total": res.predicted_total}}
    write_submission(sub_dir, res.packed.entries, cfg.to_dict(), eval_defaults, compact=compact, info=info)
    count = count_submission(sub_dir, budget)
    if count.total > budget.bytes:  # fit() checked the same bytes; this must never happen
        raise ArtifactError(f"fit: written submission is {count.total:,} bytes, over {budget.bytes:,}")
    run.submission, run.real_total = sub_dir, count.total
    run.recipe_file = out / "recipe.toml"
    atomic_write(run.recipe_file, recipe_toml(recipe_data(res.choices, prepared["calibration"], m.grid.lqer_codec,
                                                          m.grid.scales_codec, streams=res.streams)))
    if log is not None:
        log("fit: verifying in a fresh process")
    run.verify = verify(sub_dir, budget, val_data, max_tokens=max_tokens, device="cpu")
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


def pack_checkpoint(checkpoint, recipe: str | Path | Recipe, out: str | Path, data, budget=None,
                    compact: bool = True, seq_len: int | None = None, ttt: TTTConfig | None = None,
                    progress: StageProgress | None = None) -> PackRun:
    """Pack `checkpoint` by `recipe` (a name, a .toml path or a Recipe) into the submission folder
    `out`, calibrating on `data`'s train tokens when the recipe needs Hessians. `seq_len` is the
    eval window recorded in config.json (default: the checkpoint's training seq_len, else 1024);
    `ttt` makes the submission score with test-time training. `budget` (a name or bytes; default
    demo) only labels the folder and counts it."""
    budget_obj = resolve_budget(budget)
    check_out_dir(out)  # refuse before minutes of packing, not after
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    model, cfg, meta = load_checkpoint(checkpoint)
    weights_file, _ = locate_checkpoint(Path(checkpoint))
    seq_len = seq_len or train_seq_len(meta) or DEFAULT_SEQ_LEN
    if seq_len < 1:
        raise ConfigError(f"seq_len {seq_len} must be >= 1")
    eval_defaults: dict = {"seq_len": seq_len}
    if ttt is not None:  # checked by the very TTTConfig the shipped run.py reads it back with
        ttt = TTTConfig.from_dict(ttt.to_dict())
        ttt.chunk_for(seq_len)  # a document-mode chunk longer than the eval window fails now
        eval_defaults["ttt"] = ttt.to_dict()
    stage = progress or (lambda name: None)
    hessians, calib_data = recipe_hessians(model, cfg, recipe, data, progress=stage("calibrate"))
    state = {k: v.detach() for k, v in model.state_dict().items()}
    packed = pack_state_dict(state, recipe, hessians, progress=stage("pack"))
    info = {
        "recipe": recipe.name,
        "budget": str(budget) if budget is not None else budget_obj.name,
        "checkpoint": {"path": str(checkpoint), "file": weights_file.name, "sha256": _file_sha256(weights_file)},
        "calibration_data": calib_data,
        "predicted_tensor_bytes": _predicted_bytes(packed.rows),
        "tensors": _plain(list(packed.rows)),
    }
    written = write_submission(out, packed.entries, cfg.to_dict(), eval_defaults, compact=compact, info=info)
    return PackRun(packed, written, count_submission(out, budget_obj), eval_defaults, info)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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


def eval_setup(checkpoint, data, seq_len: int | None = None, max_tokens: int | None = None) -> EvalSetup:
    """Load `checkpoint` and `data`'s val stream (cut to `max_tokens`); `seq_len` defaults to
    the checkpoint's training seq_len, else 1024."""
    model, cfg, meta = load_checkpoint(checkpoint)
    stream = val_stream(data, int(cfg.vocab_size), max_tokens)
    return EvalSetup(model, stream, seq_len or train_seq_len(meta) or DEFAULT_SEQ_LEN)


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
                        progress: Progress | None = None) -> EvalResult:
    """The exact val_bpb of `checkpoint` on `data`'s val shards (artifact/docs/val_bpb.md)."""
    return score(eval_setup(checkpoint, data, seq_len, max_tokens), stride, batch_seqs, device, progress)
