"""Optimisers and schedules of the challenge baseline (challenge.md §5).

- `Muon`: SGD with Nesterov momentum whose update is orthogonalised by 5 Newton–Schulz steps
  (coefficients 3.4445, −4.7750, 2.0315) and scaled by sqrt(max(1, rows/cols)); used for the
  2-D matrices inside the blocks. Under torch.distributed each rank orthogonalises the
  parameters i with i % world == rank and one all-reduce of the flat update shares the work.
- `build_optimizers`: the baseline's parameter groups — Adam for the token embedding (and the
  untied head), Muon for block matrices, Adam for vectors, scalars and control tensors.
- `lr_multiplier` / `muon_momentum_at`: the linear warm-down (by steps, or estimated from the
  wall clock under a time cap) and the Muon momentum warm-up.
Every param group keeps its `base_lr`; the loop sets `lr = base_lr * lr_multiplier(...)`.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

NS_COEFFS = (3.4445, -4.7750, 2.0315)
# Substrings that mark a block parameter as a control tensor (Adam, never Muon), as in the baseline.
CONTROL_TENSOR_PATTERNS = (
    "attn_scale", "attn_scales", "mlp_scale", "mlp_scales", "resid_mix", "resid_mixes",
    "q_gain", "skip_weight", "skip_weights",
)


def newton_schulz5(grad: Tensor, steps: int = 5, eps: float = 1e-7) -> Tensor:
    """Approximately orthogonalise a 2-D update: normalise, then `steps` quintic Newton–Schulz
    iterations. bf16 on CUDA (as the baseline); fp32 elsewhere (CPU bf16 matmuls lose accuracy
    and, for the small matrices trained on CPU, no speed)."""
    a, b, c = NS_COEFFS
    x = grad.bfloat16() if grad.is_cuda else grad.float()
    x = x / (x.norm() + eps)
    transposed = grad.size(0) > grad.size(1)
    if transposed:
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        poly = b * gram + c * gram @ gram
        x = a * x + poly @ x
    return x.T if transposed else x


class Muon(torch.optim.Optimizer):
    """Momentum + Newton–Schulz orthogonalised updates for 2-D parameters."""

    def __init__(self, params, lr: float, momentum: float, backend_steps: int = 5, nesterov: bool = True):
        super().__init__(params, dict(lr=lr, momentum=momentum, backend_steps=backend_steps, nesterov=nesterov))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        distributed = dist.is_available() and dist.is_initialized()
        world = dist.get_world_size() if distributed else 1
        rank = dist.get_rank() if distributed else 0
        for group in self.param_groups:
            params = group["params"]
            if not params:
                continue
            update_dtype = torch.bfloat16 if params[0].is_cuda else torch.float32
            flat = torch.zeros(sum(p.numel() for p in params), device=params[0].device, dtype=update_dtype)
            offset = 0
            for i, p in enumerate(params):
                if i % world == rank and p.grad is not None:
                    flat[offset:offset + p.numel()] = self._orthogonal_update(p, group).reshape(-1)
                offset += p.numel()
            if distributed:
                # Each rank filled only its own slices; the sum is every rank's update.
                dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            offset = 0
            for p in params:
                p.add_(flat[offset:offset + p.numel()].view_as(p).to(p.dtype), alpha=-group["lr"])
                offset += p.numel()
        return loss

    def _orthogonal_update(self, p: Tensor, group: dict) -> Tensor:
        g = p.grad
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(g)
        buf = state["momentum_buffer"]
        buf.mul_(group["momentum"]).add_(g)
        if group["nesterov"]:
            g = g.add(buf, alpha=group["momentum"])
        update = newton_schulz5(g, steps=group["backend_steps"])
        return update * max(1.0, update.size(0) / update.size(1)) ** 0.5


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain GPT under DDP (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def is_control_tensor(name: str) -> bool:
    return any(pattern in name for pattern in CONTROL_TENSOR_PATTERNS)


def split_parameters(model: nn.Module) -> dict[str, list[Tensor]]:
    """Group the GPT's parameters as the baseline does: embedding, head, Muon matrices, scalars."""
    model = unwrap_model(model)
    block_params = list(model.blocks.named_parameters())
    groups = {
        "embed": [model.tok_emb.weight],
        "head": [] if model.lm_head is None else [model.lm_head.weight],
        "matrix": [p for n, p in block_params if p.ndim == 2 and not is_control_tensor(n)],
        "scalar": [p for n, p in block_params if p.ndim < 2 or is_control_tensor(n)],
    }
    if model.skip_weights.numel() > 0:
        groups["scalar"].append(model.skip_weights)
    return groups


def _adam(params: list[Tensor], lr: float, cfg) -> torch.optim.Adam:
    fused = bool(params) and params[0].is_cuda
    return torch.optim.Adam(
        [{"params": params, "lr": lr, "base_lr": lr}],
        betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps, fused=fused or None,
    )


def build_optimizers(model: nn.Module, cfg) -> list[torch.optim.Optimizer]:
    """[Adam(embedding), (Adam(head) when untied), Muon(block matrices), Adam(scalars)].

    `cfg` needs: tied_embed_lr, embed_lr, head_lr, matrix_lr, scalar_lr, muon_momentum,
    muon_backend_steps, beta1, beta2, adam_eps (a `train.loop.TrainConfig`)."""
    groups = split_parameters(model)
    tied = not groups["head"]
    optimizers: list[torch.optim.Optimizer] = [
        _adam(groups["embed"], cfg.tied_embed_lr if tied else cfg.embed_lr, cfg)
    ]
    if not tied:
        optimizers.append(_adam(groups["head"], cfg.head_lr, cfg))
    muon = Muon(groups["matrix"], lr=cfg.matrix_lr, momentum=cfg.muon_momentum, backend_steps=cfg.muon_backend_steps)
    for group in muon.param_groups:
        group["base_lr"] = cfg.matrix_lr
    optimizers.append(muon)
    optimizers.append(_adam(groups["scalar"], cfg.scalar_lr, cfg))
    return optimizers


def muon_momentum_at(step: int, cfg) -> float:
    """Linear warm-up of Muon's momentum from `muon_momentum_warmup_start` to `muon_momentum`
    over `muon_momentum_warmup_steps` steps."""
    if cfg.muon_momentum_warmup_steps <= 0:
        return cfg.muon_momentum
    frac = min(step / cfg.muon_momentum_warmup_steps, 1.0)
    return (1 - frac) * cfg.muon_momentum_warmup_start + frac * cfg.muon_momentum


def lr_multiplier(step: int, elapsed_ms: float, iterations: int, warmdown_iters: int, max_wallclock_ms: float | None) -> float:
    """The baseline's learning-rate multiplier: 1, then a linear decay to 0 over the last
    `warmdown_iters` steps. Under a wall-clock cap the remaining steps are estimated from the
    mean step time so far, so the decay ends when the time runs out."""
    if warmdown_iters <= 0:
        return 1.0
    if max_wallclock_ms is None:
        start = max(iterations - warmdown_iters, 0)
        return max((iterations - step) / max(warmdown_iters, 1), 0.0) if start <= step < iterations else 1.0
    step_ms = elapsed_ms / max(step, 1)
    warmdown_ms = warmdown_iters * step_ms
    remaining_ms = max(max_wallclock_ms - elapsed_ms, 0.0)
    return remaining_ms / max(warmdown_ms, 1e-9) if remaining_ms <= warmdown_ms else 1.0


def set_learning_rates(optimizers: list[torch.optim.Optimizer], scale: float, muon_momentum: float | None = None) -> None:
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * scale
            if muon_momentum is not None and isinstance(opt, Muon):
                group["momentum"] = muon_momentum
