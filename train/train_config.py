"""Training hyper-parameters (`TrainConfig`), validated; presets fill it from TOML, the loop reads it."""

from __future__ import annotations

from dataclasses import dataclass

from artifact.runtime.errors import ConfigError
from train.optim import ORTHOGONALIZERS, ROW_NORMALIZE
from train.schedule import WARMDOWN_SHAPES


@dataclass
class TrainConfig:
    """Training hyper-parameters. Defaults = the challenge baseline (`train_gpt.py`); every knob
    added for the seeds defaults to "off"."""

    seq_len: int = 1024
    batch_tokens: int = 524_288           # global tokens per optimiser step
    grad_accum_steps: int = 0             # micro-steps per step; 0 = the baseline's 8 // world_size
    iterations: int = 20_000
    warmup_steps: int = 20                # compile warm-up steps, run and then undone
    warmdown_iters: int = 1200            # LR warm-down over the last N steps
    warmdown_fraction: float = 0.0        # > 0: warm-down over this fraction of training instead
    warmdown_shape: str = "linear"        # linear | cosine
    lr_floor: float = 0.0                 # LR multiplier at the end of the warm-down
    lr_warmup_steps: int = 0              # linear LR warm-up over the first N steps
    max_wallclock_seconds: float = 600.0  # 0 = no cap; a cap also makes the warm-down time-based
    val_every: int = 1000                 # 0 = only at the end
    val_tokens: int = 0                   # val tokens for periodic evals (0 = all); the final eval uses all
    val_batch_tokens: int = 524_288
    log_every: int = 200
    seed: int = 1337
    tied_embed_lr: float = 0.05
    embed_lr: float = 0.6
    aux_embed_lr: float = 0.0             # other embedding tables (bigram, value embeds); 0 = token embedding's lr
    head_lr: float = 0.008
    matrix_lr: float = 0.04
    scalar_lr: float = 0.04
    embed_weight_decay: float = 0.0       # AdamW decoupled decay of the embedding group
    head_weight_decay: float = 0.0
    scalar_weight_decay: float = 0.0
    muon_weight_decay: float = 0.0        # decoupled: p *= 1 - lr * wd
    muon_momentum: float = 0.95
    muon_momentum_warmup_start: float = 0.85
    muon_momentum_warmup_steps: int = 500
    muon_backend_steps: int = 5
    muon_orthogonalizer: str = "ns5"      # ns5 | polar_express
    muon_row_normalize: str = "none"      # none | pre (MuonEq-R) | post
    beta1: float = 0.9
    beta2: float = 0.95
    adam_eps: float = 1e-8
    grad_clip_norm: float = 0.0           # 0 = no clipping
    ema_decay: float = 0.0                # 0 = no EMA
    swa_start_fraction: float = 0.6       # SWA window start (fraction of training)
    swa_every: int = 0                    # SWA snapshot every N steps in the window (0 = off)
    swa_snapshots: int = 0                # or: N snapshots spread evenly over the window (0 = off)
    qat_recipe: str = ""                  # packing recipe QAT matches ("" = no QAT)
    qat_start_fraction: float = 0.9       # QAT on from this fraction of training
    loader: str = "sequential"            # sequential | bos_aligned
    bos_id: int = -1                      # BOS id for bos_aligned; -1 = the tokenizer's
    device: str = "auto"                  # auto | cpu | cuda
    compile: bool = True                  # torch.compile on CUDA (never on CPU)
    threads: int = 0                      # CPU threads for torch; 0 = torch's default

    def __post_init__(self) -> None:
        def fail(msg: str) -> None:
            raise ConfigError(f"train config: {msg}")

        positive = ("seq_len", "batch_tokens", "iterations", "val_batch_tokens", "muon_backend_steps")
        for name in positive:
            if getattr(self, name) <= 0:
                fail(f"{name} must be positive, got {getattr(self, name)}")
        non_negative = ("grad_accum_steps", "warmup_steps", "warmdown_iters", "max_wallclock_seconds", "val_every",
                        "val_tokens", "log_every", "muon_momentum_warmup_steps", "grad_clip_norm", "threads",
                        "lr_warmup_steps", "aux_embed_lr", "embed_weight_decay", "head_weight_decay",
                        "scalar_weight_decay", "muon_weight_decay", "swa_every", "swa_snapshots")
        for name in non_negative:
            if getattr(self, name) < 0:
                fail(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("warmdown_fraction", "lr_floor", "swa_start_fraction", "qat_start_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                fail(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.ema_decay < 1.0:
            fail(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.swa_every > 0 and self.swa_snapshots > 0:
            fail("set swa_every or swa_snapshots, not both")
        choices = {"device": ("auto", "cpu", "cuda"), "warmdown_shape": WARMDOWN_SHAPES,
                   "muon_orthogonalizer": ORTHOGONALIZERS, "muon_row_normalize": ROW_NORMALIZE,
                   "loader": ("sequential", "bos_aligned")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                fail(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.bos_id < -1:
            fail(f"bos_id must be a token id or -1 (the tokenizer's), got {self.bos_id}")
