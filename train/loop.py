"""`golf train`: the challenge baseline's training loop on 1 CPU process, 1 GPU or N GPUs.

Flow (as `train_gpt.py`): preset → data (train shards, val shards, tokenizer, byte tables) →
seeded model and optimisers → optional compile warm-up steps that are then undone → steps of
`batch_tokens` tokens with the Muon momentum warm-up and the LR schedule (train/schedule.py:
warm-up, linear or cosine warm-down by steps or fraction, floor; time-based under a wall-clock
cap), `model.on_train_progress(step, fraction)` before each step, late QAT (train/qat.py) and
EMA/SWA (train/averaging.py) → periodic and final val_bpb (raw, and averaged when averaging is
on: the averaged weights are saved) → the unigram reference bpb → checkpoint (`model.pt` +
`config.json`) and `train_log.txt`. The command line is analysis/cmd_train.py.

CUDA runs use bf16 autocast and torch.compile; CPU runs stay fp32 and eager, and are bit-for-bit
reproducible for a seed. Under torchrun (RANK/WORLD_SIZE set) the process group is initialised
(nccl on CUDA, gloo on CPU), the model is wrapped in DDP and every rank reads its own span of
each batch; only rank 0 evaluates, logs and saves.
"""

from __future__ import annotations

import copy
import os
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from artifact.runtime.errors import CheckpointError, ConfigError, DataError, GolfError
from train.averaging import WeightAverager
from train.bundled import BUNDLED_DATA
from artifact.runtime.byte_count import ByteCounter
from artifact.runtime.checkpoint import save_checkpoint
from artifact.runtime.scoring import eval_flat, load_val
from train.unigram import unigram_bpb
from train.loader import make_loader, micro_batch_tokens
from artifact.runtime.model import GPT, ModelConfig, count_parameters
from train.optim import build_optimizers, set_learning_rates
from train.qat import QatSchedule, load_qat_recipe
from train.schedule import lr_scale_for, muon_momentum_at, training_fraction
from artifact.runtime.shards import read_shard, resolve_data
from artifact.runtime.tokenizer import load_tokenizer
from artifact.runtime.config import apply_overrides
from train.presets import load_preset
from train.train_config import TrainConfig

DEFAULT_PRESET = "baseline-cpu"
# Train tokens used for the unigram reference (a full FineWeb train split would not fit in memory).
UNIGRAM_TRAIN_TOKEN_CAP = 100_000_000


def grad_accum_for(cfg: TrainConfig, world_size: int) -> int:
    """Micro-steps per step: `grad_accum_steps`, or the baseline's 8 // world_size."""
    return cfg.grad_accum_steps or (8 // world_size if 8 % world_size == 0 else 1)


def check_batch_split(cfg: TrainConfig, world_size: int) -> int:
    """Global tokens per step; ConfigError (before any work) when `batch_tokens` does not split
    into whole sequences over the ranks and micro-steps."""
    accum = grad_accum_for(cfg, world_size)
    try:
        return micro_batch_tokens(cfg.batch_tokens, cfg.seq_len, world_size, accum) * world_size * accum
    except ConfigError as exc:
        raise ConfigError(f"train config: world size {world_size} does not fit the batch: {exc}") from None


# ----------------------------------------------------------------------------------- runtime

@dataclass
class Runtime:
    """Where this process runs and its place among the ranks."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_process_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(preference: str) -> str:
    if preference == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if preference == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda requested but no CUDA device is available (use --device cpu)")
    return preference


def setup_runtime(preference: str) -> Runtime:
    """Device and ranks; initialises torch.distributed when launched by torchrun."""
    kind = resolve_device(preference)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if "RANK" not in os.environ or world <= 1:
        return Runtime(torch.device(kind))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if kind == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend="nccl" if kind == "cuda" else "gloo")
    return Runtime(device, rank, world, local_rank, owns)


def autocast_for(device: torch.device):
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class RunLog:
    """Challenge-style log lines, printed (stderr under --json) and appended to train_log.txt."""

    def __init__(self, path: Path | None, enabled: bool, stream=None):
        self.enabled, self.stream = enabled, stream or sys.stdout
        self.file = open(path, "w") if (enabled and path is not None) else None

    def __call__(self, line: str) -> None:
        if not self.enabled:
            return
        print(line, file=self.stream, flush=True)
        if self.file is not None:
            self.file.write(line + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


class LossModel(nn.Module):
    """forward(x, y) → mean loss, so DDP and torch.compile see the whole step's graph."""

    def __init__(self, gpt: GPT):
        super().__init__()
        self.gpt = gpt

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.gpt.loss(x, y)


# ------------------------------------------------------------------------------------- data

@dataclass
class TrainData:
    train_files: list[Path]
    val_tokens: np.ndarray
    counter: ByteCounter
    tokenizer: Path
    dataset_dir: Path
    bos_id: int = 1
    val_sidecar: np.ndarray | None = None  # original bytes per val token (case-transformed data)


def prepare_data(data_dir: str | Path | None, vocab_size: int) -> TrainData:
    """Resolve shards and tokenizer and check they agree with the model's vocabulary."""
    if data_dir is None:
        data_dir = BUNDLED_DATA
    paths = resolve_data(data_dir, vocab_size=vocab_size)
    if paths.vocab_size is not None and paths.vocab_size != vocab_size:
        raise DataError(f"{paths.dataset_dir}: dataset is for vocab {paths.vocab_size} but the model has vocab_size {vocab_size}")
    tokenizer = paths.require_tokenizer()
    sp = load_tokenizer(tokenizer)
    pieces = int(sp.vocab_size())
    if pieces != vocab_size:
        raise DataError(f"{tokenizer}: tokenizer has {pieces} pieces but the model has vocab_size {vocab_size}; "
                        f"pick a preset (or [model] vocab_size) that matches the data")
    train_files = paths.require_train()
    val_tokens, sidecar = load_val(paths, vocab_size)  # the side-car, when shipped, replaces the byte table
    counter = ByteCounter.from_sentencepiece(tokenizer, vocab_size)
    return TrainData(train_files, val_tokens, counter, tokenizer, paths.dataset_dir, int(sp.bos_id()), sidecar)


def unigram_train_tokens(files: list[Path], cap: int = UNIGRAM_TRAIN_TOKEN_CAP) -> np.ndarray:
    """Train tokens for the unigram reference: the shards in order, at most `cap` tokens."""
    parts, total = [], 0
    for f in files:
        tokens = read_shard(f)
        take = min(tokens.size, cap - total)
        parts.append(np.asarray(tokens[:take]))
        total += take
        if total >= cap:
            break
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


# ------------------------------------------------------------------------------------- steps

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def zero_grads(optimizers) -> None:
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)


def forward_backward(step_model, loader, cfg: TrainConfig, accum: int, device: torch.device) -> torch.Tensor:
    """One optimiser step's forward/backward over `accum` micro-batches; returns the mean loss."""
    total = torch.zeros((), device=device)
    for micro in range(accum):
        x, y = loader.next_batch(cfg.batch_tokens, cfg.seq_len, accum)
        # Under DDP, gradients are all-reduced only on the last micro-step.
        no_sync = isinstance(step_model, nn.parallel.DistributedDataParallel) and micro < accum - 1
        with step_model.no_sync() if no_sync else nullcontext():
            with autocast_for(device):
                loss = step_model(x, y)
            total += loss.detach()
            (loss / accum).backward()
    return total / accum


def apply_step(model: GPT, optimizers, cfg: TrainConfig, step: int, scale: float) -> None:
    set_learning_rates(optimizers, scale, muon_momentum_at(step, cfg))
    if cfg.grad_clip_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip_norm)
    for opt in optimizers:
        opt.step()
    zero_grads(optimizers)


def compile_warmup(model: GPT, step_model, optimizers, loader, cfg: TrainConfig, accum: int, device) -> None:
    """Run `warmup_steps` real steps so kernels compile, then restore the initial weights and
    optimiser states (the baseline's semantics: warm-up never changes the trained model)."""
    initial_model = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    initial_opts = [copy.deepcopy(opt.state_dict()) for opt in optimizers]
    for step in range(cfg.warmup_steps):
        forward_backward(step_model, loader, cfg, accum, device)
        apply_step(model, optimizers, cfg, step, 1.0)
    model.load_state_dict(initial_model, strict=True)
    for opt, state in zip(optimizers, initial_opts):
        opt.load_state_dict(state)
    zero_grads(optimizers)


def evaluate(model: GPT, data: TrainData, cfg: TrainConfig, device: torch.device, limit: int = 0):
    """val figures on all val tokens, or on the first `limit` targets."""
    tokens = data.val_tokens if limit <= 0 else data.val_tokens[:limit + 1]
    sidecar = None if data.val_sidecar is None else data.val_sidecar[:tokens.size]
    batch_seqs = max(1, cfg.val_batch_tokens // cfg.seq_len)
    try:
        return eval_flat(model, tokens, data.counter, cfg.seq_len, batch_seqs, device, sidecar=sidecar)
    except CheckpointError as exc:  # non-finite loss: here that means the run diverged
        raise GolfError(f"validation failed during training ({exc}); the run diverged: lower the learning rates") from None


@dataclass
class Trainer:
    """The model and what steps it: optimisers, the (compiled / DDP) loss module, QAT, averaging."""

    model: GPT
    optimizers: list
    step_model: nn.Module
    qat: QatSchedule
    averager: WeightAverager


def build_trainer(mcfg: ModelConfig, cfg: TrainConfig, rt: Runtime) -> Trainer:
    """Seeded model on the device, its optimisers, and the step module (compiled on CUDA when
    `compile`, wrapped in DDP when distributed)."""
    device = rt.device
    seed_everything(cfg.seed)
    model = GPT(mcfg).to(device)  # built on CPU by the seeded generator, then moved
    optimizers = build_optimizers(model, cfg)
    step_model: nn.Module = LossModel(model)
    if device.type == "cuda" and cfg.compile:
        step_model = torch.compile(step_model, dynamic=False)
    if rt.distributed:
        step_model = nn.parallel.DistributedDataParallel(
            step_model, device_ids=[rt.local_rank] if device.type == "cuda" else None, broadcast_buffers=False)
    return Trainer(model, optimizers, step_model, QatSchedule(model, cfg), WeightAverager(model, cfg))


def train_step(tr: Trainer, loader, cfg: TrainConfig, accum: int, device, step: int, elapsed_ms: float,
               max_ms: float | None) -> torch.Tensor:
    """One optimiser step at `step` (0-based): progress hook, LR schedule, QAT swap around
    forward/backward, optimiser step; returns the mean train loss."""
    fraction = training_fraction(step, elapsed_ms, cfg.iterations, max_ms)
    if hasattr(tr.model, "on_train_progress"):
        tr.model.on_train_progress(step, fraction)
    scale = lr_scale_for(step, elapsed_ms, cfg, max_ms)
    quantizer = tr.qat.quantizer if tr.qat.active(step, fraction) else None
    if quantizer is not None:
        quantizer.swap_in()
    try:
        loss = forward_backward(tr.step_model, loader, cfg, accum, device)
    finally:
        if quantizer is not None:
            quantizer.restore()  # gradients of the decoded weights now act on the masters
    apply_step(tr.model, tr.optimizers, cfg, step, scale)
    return loss


# -------------------------------------------------------------------------------------- train

def train(preset: str | Path = DEFAULT_PRESET, data_dir: str | Path | None = None, out_dir: str | Path = "runs/train",
          overrides: dict | None = None, log_stream=None) -> dict:
    """Train a preset (with TrainConfig `overrides`) on `data_dir`; save the checkpoint in
    `out_dir`; return the run's figures (val_bpb, unigram_bpb, steps, seconds, ...)."""
    started = time.perf_counter()
    spec = load_preset(preset)
    cfg = apply_overrides(spec.train, overrides)
    # Bad configurations fail here, before any process group, data or model work.
    check_batch_split(cfg, int(os.environ.get("WORLD_SIZE", "1")) if "RANK" in os.environ else 1)
    if cfg.qat_recipe:
        load_qat_recipe(cfg.qat_recipe)
    runtime = setup_runtime(cfg.device)
    try:
        figures = _train(spec, spec.model, cfg, runtime, data_dir, Path(out_dir), log_stream)
        figures["wall_seconds"] = round(time.perf_counter() - started, 3)  # data, evals and saving included
        return figures
    finally:
        if runtime.owns_process_group and dist.is_initialized():
            dist.destroy_process_group()


def _train(spec, mcfg: ModelConfig, cfg: TrainConfig, rt: Runtime, data_dir, out_dir: Path, log_stream) -> dict:
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    accum = grad_accum_for(cfg, rt.world_size)
    tokens_per_step = check_batch_split(cfg, rt.world_size)
    data = prepare_data(data_dir, mcfg.vocab_size)
    if rt.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    log = RunLog(out_dir / "train_log.txt", rt.is_main, log_stream)
    try:
        return _run(spec, mcfg, cfg, rt, data, out_dir, log, accum, tokens_per_step)
    finally:
        log.close()


def _loader(cfg: TrainConfig, data: TrainData, rt: Runtime, vocab_size: int):
    bos = cfg.bos_id if cfg.bos_id >= 0 else data.bos_id
    return make_loader(cfg.loader, data.train_files, rt.rank, rt.world_size, rt.device, vocab_size, bos)


def _run(spec, mcfg, cfg: TrainConfig, rt: Runtime, data: TrainData, out_dir: Path, log: RunLog, accum: int, tokens_per_step: int) -> dict:
    device = rt.device
    tr = build_trainer(mcfg, cfg, rt)
    model = tr.model
    params = count_parameters(model)
    max_ms = 1000.0 * cfg.max_wallclock_seconds if cfg.max_wallclock_seconds > 0 else None

    log(f"preset:{spec.name} device:{device} world_size:{rt.world_size} grad_accum_steps:{accum} threads:{torch.get_num_threads()}")
    log(f"model_params:{params} layers:{mcfg.num_layers} dim:{mcfg.model_dim} heads:{mcfg.num_heads}/{mcfg.num_kv_heads} vocab:{mcfg.vocab_size}")
    log(f"train_batch_tokens:{tokens_per_step} train_seq_len:{cfg.seq_len} iterations:{cfg.iterations} "
        f"warmup_steps:{cfg.warmup_steps} max_wallclock_seconds:{cfg.max_wallclock_seconds:.3f}")
    log(f"data:{data.dataset_dir} train_shards:{len(data.train_files)} val_tokens:{data.val_tokens.size} tokenizer:{data.tokenizer.name}")
    log(f"seed:{cfg.seed} loader:{cfg.loader} muon:{cfg.muon_orthogonalizer}/{cfg.muon_row_normalize} "
        f"averaging:{tr.averager.describe()} qat:{cfg.qat_recipe or 'off'}")
    if tr.qat.quantizer is not None:
        log(f"qat_tensors:{len(tr.qat.quantizer.targets)} qat_start_fraction:{cfg.qat_start_fraction}")

    if cfg.warmup_steps > 0:
        warm_loader = _loader(cfg, data, rt, mcfg.vocab_size)
        compile_warmup(model, tr.step_model, tr.optimizers, warm_loader, cfg, accum, device)
    loader = _loader(cfg, data, rt, mcfg.vocab_size)

    train_ms, stop_after, step, last_val = 0.0, None, 0, None
    synchronize(device)
    t0 = time.perf_counter()
    while True:
        last_step = step == cfg.iterations or (stop_after is not None and step >= stop_after)
        if last_step or (cfg.val_every > 0 and step % cfg.val_every == 0):
            synchronize(device)
            train_ms += 1000.0 * (time.perf_counter() - t0)
            if rt.is_main:
                last_val = evaluate(model, data, cfg, device, 0 if last_step else cfg.val_tokens)
                log(f"step:{step}/{cfg.iterations} val_loss:{last_val.val_loss:.4f} val_bpb:{last_val.val_bpb:.4f} "
                    f"train_time:{train_ms:.0f}ms step_avg:{train_ms / max(step, 1):.2f}ms")
            if rt.distributed:
                dist.barrier()
            synchronize(device)
            t0 = time.perf_counter()
        if last_step:
            if stop_after is not None and step < cfg.iterations:
                log(f"stopping_early: wallclock_cap train_time:{train_ms:.0f}ms step:{step}/{cfg.iterations}")
            break

        elapsed_ms = train_ms + 1000.0 * (time.perf_counter() - t0)
        if rt.distributed and max_ms is not None:
            # Time-based schedules and switches must agree across ranks: use the slowest clock.
            clock = torch.tensor(elapsed_ms, dtype=torch.float64, device=device)
            dist.all_reduce(clock, op=dist.ReduceOp.MAX)
            elapsed_ms = float(clock.item())
        qat_was_on = tr.qat.started_at is not None
        train_loss = train_step(tr, loader, cfg, accum, device, step, elapsed_ms, max_ms)
        if not qat_was_on and tr.qat.started_at is not None:
            log(f"qat:on step:{step} recipe:{cfg.qat_recipe}")
        step += 1

        approx_ms = train_ms + 1000.0 * (time.perf_counter() - t0)
        reached_cap = max_ms is not None and approx_ms >= max_ms
        if rt.distributed and max_ms is not None:
            flag = torch.tensor(int(reached_cap), device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            reached_cap = bool(flag.item())
        done_fraction = 1.0 if reached_cap else training_fraction(step, approx_ms, cfg.iterations, max_ms)
        tr.averager.step_done(model, step, done_fraction)
        if cfg.log_every > 0 and (step <= 10 or step % cfg.log_every == 0 or stop_after is not None):
            last_loss = train_loss.item()
            if not np.isfinite(last_loss):
                raise GolfError(f"train loss is {last_loss} at step {step}: training diverged (lower the learning rates)")
            log(f"step:{step}/{cfg.iterations} train_loss:{last_loss:.4f} train_time:{approx_ms:.0f}ms step_avg:{approx_ms / step:.2f}ms")
        if stop_after is None and reached_cap:
            stop_after = step

    if getattr(loader, "tokens_skipped", 0):
        log(f"loader tokens_taken:{loader.tokens_taken} tokens_skipped:{loader.tokens_skipped} "
            f"(document tails cut at sequence ends)")
    raw_val, val = last_val, last_val
    averaged = tr.averager.final_state(model)
    if averaged is not None:
        model.load_state_dict(averaged, strict=True)
        if rt.is_main:
            val = evaluate(model, data, cfg, device, 0)
            log(f"averaged ({tr.averager.describe()}) val_loss:{val.val_loss:.4f} val_bpb:{val.val_bpb:.4f} "
                f"raw_val_bpb:{raw_val.val_bpb:.4f}")
    figures = _finish(spec, mcfg, cfg, rt, data, model, out_dir, log, step, train_ms, val, tokens_per_step, params)
    if rt.is_main and averaged is not None:
        figures.update(raw_val_loss=raw_val.val_loss, raw_val_bpb=raw_val.val_bpb)
    if rt.distributed:
        dist.barrier()
    return figures


def _finish(spec, mcfg, cfg, rt, data, model, out_dir, log, step, train_ms, val, tokens_per_step, params) -> dict:
    """Unigram reference, checkpoint and the figures dict (rank 0 computes and saves)."""
    if not rt.is_main:
        return {"rank": rt.rank, "steps": step}
    uni = unigram_bpb(unigram_train_tokens(data.train_files), data.val_tokens, data.counter, cfg.seq_len,
                      sidecar=data.val_sidecar)
    seconds = train_ms / 1000.0
    tokens_seen = step * tokens_per_step
    log(f"final val_loss:{val.val_loss:.4f} val_bpb:{val.val_bpb:.4f} unigram_bpb:{uni:.4f} "
        f"steps:{step} tokens:{tokens_seen} train_time:{train_ms:.0f}ms tokens_per_s:{tokens_seen / max(seconds, 1e-9):.0f}")
    figures = {
        "preset": spec.name,
        "steps": step,
        "iterations": cfg.iterations,
        "tokens_seen": tokens_seen,
        "train_seconds": round(seconds, 3),
        "tokens_per_second": round(tokens_seen / max(seconds, 1e-9), 1),
        "step_avg_ms": round(train_ms / max(step, 1), 2),
        "val_loss": val.val_loss,
        "val_bpb": val.val_bpb,
        "val_tokens": val.tokens,
        "val_bytes": val.bytes,
        "unigram_bpb": uni,
        "params": params,
        "seed": cfg.seed,
        "seq_len": cfg.seq_len,
        "device": str(rt.device),
        "world_size": rt.world_size,
    }
    meta = dict(figures)
    meta.update({
        "preset_file": spec.path.name,
        "data": data.dataset_dir.name,
        "tokenizer": data.tokenizer.name,
        "train_config": asdict(cfg),
        "torch": torch.__version__,
    })
    ckpt = save_checkpoint(out_dir, model, mcfg, meta)
    log(f"saved checkpoint:{ckpt}")
    figures["checkpoint"] = str(ckpt)
    return figures
