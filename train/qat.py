"""Quantization-aware training: straight-through fake quantization with the packer's own code.

For a named packing recipe (`qat_recipe`, e.g. "seed-003"), `artifact.recipe.Recipe.plan` says
which tensors of the state dict are quantized and how (scheme, bits, clip rule, pruning). QAT
runs each training step's forward and backward on the weights the artifact would decode:

    masters = W                          (kept; the optimiser updates these)
    W <- dequantize(quantize(W))         (artifact.quant.quantize_tensor + decoder.dequantize,
                                          i.e. `Quantized.dequantize`, as artifact/pack.py does)
    forward + backward                   (gradients w.r.t. the decoded weights ...)
    W <- masters                         (... are applied to the masters: straight-through)

The swap is done in place on the parameters, so the model needs no change, and DDP and
torch.compile see ordinary parameters. Differences from packing, by necessity: GPTQ rules
fake-quantize with plain round-to-nearest at the same bits/clip (GPTQ needs calibration
Hessians, too slow per step); `hsdclip` (Hessian-scaled SDClip) uses plain `sdclip` with the
same k; LQER corrections and size-targeted pruning (`prune_pm1`) are post-hoc and not modelled.
Only 2-D tensors whose plan is an integer scheme (or the baseline's int8 rule on a large
matrix) are fake-quantized; passthrough tensors train as usual.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from artifact.runtime.errors import ConfigError
from artifact.prune import magnitude_prune
from artifact.quant import ClipRule, QuantSpec, quantize_tensor
from artifact.recipe import Recipe, TensorPlan, load_recipe

FAKE_QUANT_SCHEMES = ("per_row", "per_tensor", "ternary", "binary", "baseline_int8")


@dataclass
class QatTarget:
    name: str
    param: nn.Parameter
    spec: QuantSpec
    prune: float


def load_qat_recipe(name: str) -> Recipe:
    """The packing recipe QAT matches; a ConfigError naming `qat_recipe` when it doesn't load."""
    try:
        return load_recipe(name)
    except ConfigError as exc:
        raise ConfigError(f"train config: qat_recipe {name!r}: {exc}") from None


def qat_spec(plan: TensorPlan) -> QuantSpec:
    """The spec fake quantization uses for a tensor the recipe plans (see module docstring)."""
    spec = plan.spec
    if spec.clip.kind == "hsdclip":
        spec = replace(spec, clip=ClipRule("sdclip", k=spec.clip.k))
    return spec


def fake_quantize(w: Tensor, spec: QuantSpec, prune: float = 0.0, name: str = "") -> Tensor:
    """The weights the artifact decodes for `w` under `spec` (round-to-nearest), in w's dtype."""
    x = w.detach().float()
    if prune > 0:
        x = magnitude_prune(x, prune)
    q = quantize_tensor(x, spec, name=name)
    if q.is_passthrough:
        return w.detach().clone()
    return q.dequantize().to(device=w.device, dtype=w.dtype)


class FakeQuantizer:
    """Swaps the recipe's quantized tensors for their decoded values around forward/backward."""

    def __init__(self, model: nn.Module, recipe: Recipe):
        self.recipe = recipe
        params = dict(model.named_parameters())
        plans = recipe.plan({n: t for n, t in model.state_dict().items()})
        self.targets: list[QatTarget] = []
        for name, plan in plans.items():
            p = params.get(name)
            if p is None or p.ndim != 2 or plan.spec.scheme not in FAKE_QUANT_SCHEMES:
                continue
            if plan.spec.scheme == "baseline_int8" and p.numel() <= 65_536:
                continue  # the baseline keeps small tensors float
            self.targets.append(QatTarget(name, p, qat_spec(plan), plan.prune))
        self._masters: list[Tensor] | None = None

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.targets]

    @torch.no_grad()
    def swap_in(self) -> None:
        """Masters saved; parameters now hold the decoded (fake-quantized) weights."""
        if self._masters is not None:
            raise RuntimeError("FakeQuantizer.swap_in called twice without restore")
        self._masters = []
        for t in self.targets:
            self._masters.append(t.param.detach().clone())
            t.param.copy_(fake_quantize(t.param, t.spec, t.prune, t.name))

    @torch.no_grad()
    def restore(self) -> None:
        """Parameters back to the master weights (their .grad untouched: straight-through)."""
        if self._masters is None:
            return
        for t, master in zip(self.targets, self._masters):
            t.param.copy_(master)
        self._masters = None

    @torch.no_grad()
    def quantization_error(self) -> float:
        """Sum over targets of ||W - decode(quantize(W))||² (a figure for logs and tests)."""
        total = 0.0
        for t in self.targets:
            w = t.param.detach().float()
            total += float((w - fake_quantize(t.param, t.spec, t.prune, t.name).float()).pow(2).sum())
        return total


class QatSchedule:
    """When QAT is on: from `qat_start_fraction` of training on (TrainConfig `qat_recipe` set)."""

    def __init__(self, model: nn.Module, cfg):
        self.quantizer = FakeQuantizer(model, load_qat_recipe(cfg.qat_recipe)) if cfg.qat_recipe else None
        self.start = cfg.qat_start_fraction
        self.started_at: int | None = None

    def active(self, step: int, fraction: float) -> bool:
        if self.quantizer is None or fraction < self.start:
            return False
        if self.started_at is None:
            self.started_at = step
        return True
