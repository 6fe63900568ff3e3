"""Optimisers of the challenge baseline (artifact/docs/baseline.md) and of the seed submissions.

- `Muon`: SGD with Nesterov momentum whose update is orthogonalised — 5 Newton–Schulz steps
  (coefficients 3.4445, −4.7750, 2.0315: the baseline) or Polar Express (per-iteration
  coefficients) — optionally row-normalised (MuonEq-R before, or per-row RMS after), scaled by
  sqrt(max(1, rows/cols)), with optional decoupled weight decay. Under torch.distributed each
  rank orthogonalises the parameters i with i % world == rank and one all-reduce of the flat
  update shares the work.
- `build_optimizers`: groups decided by parameter name (`parameter_group`) — Adam/
  AdamW for the embeddings, the untied head and the scalars/control tensors, each with its own
  lr and weight decay; Muon for every other 2-D matrix.
- `lr_multiplier` / `muon_momentum_at` live in `train.schedule` (re-exported here).
Every param group keeps its `base_lr`; the loop sets `lr = base_lr * lr_multiplier(...)`.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from artifact.runtime.errors import ConfigError
from train.schedule import lr_multiplier, muon_momentum_at  # noqa: F401  (re-exported)

NS_COEFFS = (3.4445, -4.7750, 2.0315)
# Polar Express (Amsel, Persson, Musco, Gower 2025, arXiv:2505.16932): a different quintic per
# iteration, each the minimax-optimal one for the singular-value interval left by the previous
# step, so small singular values grow fast and all converge towards 1 in 5 steps. These are the
# published 5-step coefficients with the paper's 2% safety margin (as used by modded-nanogpt's
# train_gpt.py); the input is normalised by 1.02 * its Frobenius norm.
POLAR_EXPRESS_COEFFS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
POLAR_EXPRESS_SAFETY = 1.02
ORTHOGONALIZERS = ("ns5", "polar_express")
ROW_NORMALIZE = ("none", "pre", "post")
# Substrings that mark a parameter as a control tensor (Adam "scalar" group, never Muon): the
# baseline's, plus the gates, smear, lambdas and skips of the seed architectures.
CONTROL_TENSOR_PATTERNS = (
    "attn_scale", "attn_scales", "mlp_scale", "mlp_scales", "resid_mix", "resid_mixes",
    "q_gain", "skip_weight", "skip_weights", "gate", "smear", "lambda", "skip",
)


def _orth_input(grad: Tensor) -> Tensor:
    # bf16 on CUDA (as the baseline); fp32 elsewhere (CPU bf16 matmuls lose accuracy and, for
    # the small matrices trained on CPU, gain no speed).
    return grad.bfloat16() if grad.is_cuda else grad.float()


def _quintic_steps(x: Tensor, coeffs) -> Tensor:
    transposed = x.size(0) > x.size(1)
    if transposed:
        x = x.T
    for a, b, c in coeffs:
        gram = x @ x.T
        poly = b * gram + c * gram @ gram
        x = a * x + poly @ x
    return x.T if transposed else x


def newton_schulz5(grad: Tensor, steps: int = 5, eps: float = 1e-7) -> Tensor:
    """Approximately orthogonalise a 2-D update: normalise, then `steps` quintic Newton–Schulz
    iterations with the baseline's fixed coefficients."""
    x = _orth_input(grad)
    x = x / (x.norm() + eps)
    return _quintic_steps(x, [NS_COEFFS] * steps)


def polar_express(grad: Tensor, steps: int = 5, eps: float = 1e-7) -> Tensor:
    """Polar Express orthogonalisation: `steps` (<= 5) quintic iterations, each with its own
    coefficients (POLAR_EXPRESS_COEFFS); beyond the table the last triple repeats."""
    x = _orth_input(grad)
    x = x / (x.norm() * POLAR_EXPRESS_SAFETY + eps)
    coeffs = [POLAR_EXPRESS_COEFFS[min(i, len(POLAR_EXPRESS_COEFFS) - 1)] for i in range(steps)]
    return _quintic_steps(x, coeffs)


def normalize_rows(x: Tensor, eps: float = 1e-7) -> Tensor:
    """Each row scaled to unit RMS (MuonEq-R style row equilibration)."""
    rms = x.float().pow(2).mean(dim=1, keepdim=True).sqrt()
    return (x.float() / (rms + eps)).to(x.dtype)


class Muon(torch.optim.Optimizer):
    """Momentum + orthogonalised updates for 2-D parameters.

    orthogonalizer: "ns5" (baseline) or "polar_express"; row_normalize: "none", "pre" (rows of
    the momentum gradient equilibrated before orthogonalising: MuonEq-R) or "post" (rows of the
    orthogonalised update scaled to unit RMS, then back to the update's overall RMS);
    weight_decay: decoupled, p <- p * (1 - lr * wd) before the update (0 = none: baseline)."""

    def __init__(self, params, lr: float, momentum: float, backend_steps: int = 5, nesterov: bool = True,
                 weight_decay: float = 0.0, orthogonalizer: str = "ns5", row_normalize: str = "none"):
        if orthogonalizer not in ORTHOGONALIZERS:
            raise ConfigError(f"muon orthogonalizer {orthogonalizer!r}: one of {', '.join(ORTHOGONALIZERS)}")
        if row_normalize not in ROW_NORMALIZE:
            raise ConfigError(f"muon row_normalize {row_normalize!r}: one of {', '.join(ROW_NORMALIZE)}")
        super().__init__(params, dict(lr=lr, momentum=momentum, backend_steps=backend_steps, nesterov=nesterov,
                                      weight_decay=weight_decay, orthogonalizer=orthogonalizer,
                                      row_normalize=row_normalize))

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
            wd = group.get("weight_decay", 0.0)
            for p in params:
                if wd > 0:
                    p.mul_(1.0 - group["lr"] * wd)
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
        mode = group.get("row_normalize", "none")
        if mode == "pre":
            g = normalize_rows(g)
        orth = polar_express if group.get("orthogonalizer", "ns5") == "polar_express" else newton_schulz5
        update = orth(g, steps=group["backend_steps"])
        if mode == "post":
            overall = update.float().pow(2).mean().sqrt()
            update = (normalize_rows(update).float() * overall).to(update.dtype)
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


def parameter_group(name: str, p: Tensor, head: Tensor | None) -> str:
    """The optimiser group of one named parameter: "head" (the untied output
    matrix), "embed" (name contains "embed", and the token embedding), "scalar" (ndim != 2 or a
    control tensor), else "matrix" (Muon)."""
    if head is not None and p is head:
        return "head"
    if "embed" in name or name.startswith("tok_emb."):
        return "embed"
    if p.ndim != 2 or is_control_tensor(name):
        return "scalar"
    return "matrix"


def split_named_parameters(model: nn.Module) -> dict[str, list[tuple[str, Tensor]]]:
    """(name, parameter) pairs by group, in `named_parameters` order: the token embedding
    first in "embed" (its own lr when tied), then any other embedding tables."""
    model = unwrap_model(model)
    head = model.lm_head.weight if getattr(model, "lm_head", None) is not None else None
    groups: dict[str, list[tuple[str, Tensor]]] = {"embed": [], "head": [], "matrix": [], "scalar": []}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups[parameter_group(name, p, head)].append((name, p))
    groups["embed"].sort(key=lambda item: item[0] != "tok_emb.weight")  # stable: token embedding first
    return groups


def split_parameters(model: nn.Module) -> dict[str, list[Tensor]]:
    """The parameters by group: embed, head, matrix (Muon), scalar (see `parameter_group`)."""
    return {k: [p for _, p in v] for k, v in split_named_parameters(model).items()}


def _adam(param_groups: list[dict], cfg, weight_decay: float) -> torch.optim.Optimizer:
    """Adam (AdamW when `weight_decay` > 0: decoupled decay p <- p * (1 - lr * wd))."""
    params = [p for g in param_groups for p in g["params"]]
    fused = bool(params) and params[0].is_cuda
    for g in param_groups:
        g["base_lr"] = g["lr"]
    if weight_decay > 0:
        return torch.optim.AdamW(param_groups, betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps,
                                 weight_decay=weight_decay, fused=fused or None)
    return torch.optim.Adam(param_groups, betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps, fused=fused or None)


def build_optimizers(model: nn.Module, cfg) -> list[torch.optim.Optimizer]:
    """[Adam(embeddings), (Adam(head) when untied), Muon(matrices), Adam(scalars)].

    The token embedding's lr is `tied_embed_lr` when tied (it is also the output matrix), else
    `embed_lr`; other embedding tables use `aux_embed_lr` (0 = the token embedding's lr).
    Decoupled weight decay: `embed_weight_decay`, `head_weight_decay`, `scalar_weight_decay`
    (AdamW), `muon_weight_decay`. `cfg` is a `train.loop.TrainConfig`."""
    groups = split_named_parameters(model)
    tied = not groups["head"]
    tok_lr = cfg.tied_embed_lr if tied else cfg.embed_lr
    tok = [p for n, p in groups["embed"] if n == "tok_emb.weight"]
    aux = [p for n, p in groups["embed"] if n != "tok_emb.weight"]
    embed_groups = [{"params": tok, "lr": tok_lr}]
    if aux:
        embed_groups.append({"params": aux, "lr": cfg.aux_embed_lr or tok_lr})
    optimizers: list[torch.optim.Optimizer] = [_adam(embed_groups, cfg, cfg.embed_weight_decay)]
    if not tied:
        optimizers.append(_adam([{"params": [p for _, p in groups["head"]], "lr": cfg.head_lr}], cfg,
                                cfg.head_weight_decay))
    muon = Muon([p for _, p in groups["matrix"]], lr=cfg.matrix_lr, momentum=cfg.muon_momentum,
                backend_steps=cfg.muon_backend_steps, weight_decay=cfg.muon_weight_decay,
                orthogonalizer=cfg.muon_orthogonalizer, row_normalize=cfg.muon_row_normalize)
    for group in muon.param_groups:
        group["base_lr"] = cfg.matrix_lr
    optimizers.append(muon)
    optimizers.append(_adam([{"params": [p for _, p in groups["scalar"]], "lr": cfg.scalar_lr}], cfg,
                            cfg.scalar_weight_decay))
    return optimizers


def set_learning_rates(optimizers: list[torch.optim.Optimizer], scale: float, muon_momentum: float | None = None) -> None:
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * scale
            if muon_momentum is not None and isinstance(opt, Muon):
                group["momentum"] = muon_momentum
