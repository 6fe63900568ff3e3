"""`golf bench-train`: training speed of presets on this machine (the GPU check script).

For each preset: the model, optimisers and step module exactly as `golf train` builds them
(bf16 autocast + torch.compile on CUDA), `--warmup` untimed steps (compilation), then `--steps`
timed optimiser steps; prints ms/step and tokens/s (and peak GPU memory). On a GPU the preset
runs at its own batch; on CPU a small override (`--cpu-seq-len`, `--cpu-batch-seqs`, one
micro-step) keeps a full-size model benchable. Tokens are synthetic (seeded uniform ids with a
BOS every few hundred tokens) unless `--data` is given, so any preset's vocabulary works.

    golf bench-train --presets baseline,seed-004 --steps 50 [--json]
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from artifact.runtime.config import apply_overrides
from artifact.runtime.model import count_parameters
from artifact.runtime.shards import resolve_data
from train.loader import make_loader
from train.loop import Runtime, build_trainer, check_batch_split, grad_accum_for, resolve_device, synchronize, train_step
from train.presets import load_preset
from train.shard_writer import write_shard

DOC_LEN = 400  # synthetic documents: a BOS every DOC_LEN tokens


def synthetic_shards(folder: Path, vocab_size: int, tokens: int, seed: int = 0, bos_id: int = 1) -> list[Path]:
    """One train shard of seeded uniform token ids with a BOS every DOC_LEN tokens."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab_size, size=tokens, dtype=np.int64)
    ids[ids == bos_id] = (bos_id + 1) % vocab_size
    ids[::DOC_LEN] = bos_id
    return [write_shard(folder / f"bench_train_{0:06d}.bin", ids.astype(np.uint16))]


def cpu_override(cfg, seq_len: int, batch_seqs: int):
    """A copy of `cfg` small enough to step on a CPU."""
    seq = min(cfg.seq_len, seq_len)
    return dataclasses.replace(cfg, seq_len=seq, batch_tokens=seq * batch_seqs, grad_accum_steps=1, compile=False)


def bench_preset(name: str, steps: int, warmup: int, device: str, data_dir: str | None, overrides: dict,
                 cpu_seq_len: int, cpu_batch_seqs: int, start_step: int = 0) -> dict:
    """Time `steps` optimiser steps of preset `name` (after `warmup` untimed steps), numbered
    from `start_step` (so late-training switches such as QAT or depth recurrence can be timed)."""
    spec = load_preset(name)
    cfg = apply_overrides(spec.train, {**overrides, "device": device})
    kind = resolve_device(cfg.device)
    if kind == "cpu":
        cfg = cpu_override(cfg, cpu_seq_len, cpu_batch_seqs)
    rt = Runtime(torch.device(kind))
    tokens_per_step = check_batch_split(cfg, 1)
    accum = grad_accum_for(cfg, 1)
    tr = build_trainer(spec.model, cfg, rt)
    with tempfile.TemporaryDirectory() as tmp:
        if data_dir is None:
            files = synthetic_shards(Path(tmp), spec.model.vocab_size, tokens_per_step * 4 + 1, cfg.seed)
        else:
            files = resolve_data(data_dir, vocab_size=spec.model.vocab_size).require_train()
        bos = cfg.bos_id if cfg.bos_id >= 0 else 1
        loader = make_loader(cfg.loader, files, 0, 1, rt.device, spec.model.vocab_size, bos)
        for i in range(warmup):
            train_step(tr, loader, cfg, accum, rt.device, start_step + i, 0.0, None)
        if rt.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(rt.device)
        synchronize(rt.device)
        t0 = time.perf_counter()
        for i in range(steps):
            loss = train_step(tr, loader, cfg, accum, rt.device, start_step + warmup + i, 0.0, None)
        synchronize(rt.device)
        seconds = time.perf_counter() - t0
    result = {
        "preset": name,
        "device": torch.cuda.get_device_name(rt.device) if rt.device.type == "cuda" else "cpu",
        "steps": steps,
        "warmup_steps": warmup,
        "start_step": start_step,
        "qat_active": tr.qat.started_at is not None,
        "ms_per_step": round(1000.0 * seconds / steps, 3),
        "tokens_per_step": tokens_per_step,
        "tokens_per_second": round(tokens_per_step * steps / seconds, 1),
        "params": count_parameters(tr.model),
        "seq_len": cfg.seq_len,
        "grad_accum_steps": accum,
        "compiled": rt.device.type == "cuda" and cfg.compile,
        "final_loss": round(float(loss.item()), 4),
    }
    if rt.device.type == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(rt.device) / 2**30, 2)
    return result
