"""Weight averaging during training: EMA and SWA.

- EMA (`ema_decay` > 0): after every optimiser step, avg <- decay * avg + (1 - decay) * w, for
  every floating tensor of the state dict, kept in fp32 beside the model (started from the
  initial weights, as the records do).
- SWA (`swa_every` > 0 or `swa_snapshots` > 0): from `swa_start_fraction` of training, the
  running mean of snapshots taken every `swa_every` steps, or `swa_snapshots` snapshots spread
  evenly over the rest of training by progress fraction (time-based under a wall-clock cap;
  the last one is the final weights). When EMA is on too, SWA snapshots the EMA weights.

`WeightAverager.final_state()` is what the loop evaluates and saves when averaging is on; the
raw weights are evaluated too, so both val_bpb figures are logged.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class EMA:
    """Exponential moving average of a model's floating state (fp32 shadow copies)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.names = [n for n, t in model.state_dict().items() if t.is_floating_point()]
        state = model.state_dict()
        self.shadow = [state[n].detach().float().clone() for n in self.names]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        state = model.state_dict()
        current = [state[n].detach().float() for n in self.names]
        # lerp: avg + (1 - decay) * (w - avg) == decay * avg + (1 - decay) * w
        torch._foreach_lerp_(self.shadow, current, 1.0 - self.decay)

    def state(self) -> dict[str, Tensor]:
        return dict(zip(self.names, self.shadow))


class SWA:
    """Running mean of weight snapshots (fp32)."""

    def __init__(self):
        self.count = 0
        self.mean: dict[str, Tensor] = {}

    @torch.no_grad()
    def add(self, state: dict[str, Tensor]) -> None:
        self.count += 1
        if not self.mean:
            self.mean = {n: t.detach().float().clone() for n, t in state.items() if t.is_floating_point()}
            return
        for n, avg in self.mean.items():
            avg.add_(state[n].detach().float() - avg, alpha=1.0 / self.count)


class WeightAverager:
    """EMA and/or SWA as configured by a TrainConfig; `step_done(model, step, fraction)` after
    every optimiser step."""

    def __init__(self, model: nn.Module, cfg):
        self.cfg = cfg
        self.ema = EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.swa = SWA() if (cfg.swa_every > 0 or cfg.swa_snapshots > 0) else None
        self._next_snapshot = 1  # index of the next evenly spread SWA snapshot

    @property
    def enabled(self) -> bool:
        return self.ema is not None or self.swa is not None

    def _source(self, model: nn.Module) -> dict[str, Tensor]:
        return self.ema.state() if self.ema is not None else model.state_dict()

    def _snapshot_due(self, step: int, fraction: float) -> bool:
        start = self.cfg.swa_start_fraction
        if fraction < start:
            return False
        if self.cfg.swa_snapshots > 0:
            n = self.cfg.swa_snapshots
            due = fraction >= start + (1.0 - start) * self._next_snapshot / n - 1e-12
            if due:
                # several thresholds crossed in one step (a slow step) count as one snapshot
                while self._next_snapshot <= n and fraction >= start + (1.0 - start) * self._next_snapshot / n - 1e-12:
                    self._next_snapshot += 1
            return due
        return step % self.cfg.swa_every == 0

    def step_done(self, model: nn.Module, step: int, fraction: float) -> None:
        """Call after optimiser step `step` (1-based count of steps done) at progress `fraction`."""
        if self.ema is not None:
            self.ema.update(model)
        if self.swa is not None and self._snapshot_due(step, fraction):
            self.swa.add(self._source(model))

    def final_state(self, model: nn.Module) -> dict[str, Tensor] | None:
        """The averaged weights (model dtypes), or None when averaging is off. SWA wins when it
        took any snapshot; otherwise EMA."""
        if self.swa is not None and self.swa.count > 0:
            avg = self.swa.mean
        elif self.ema is not None:
            avg = self.ema.state()
        else:
            return None
        state = model.state_dict()
        return {n: (avg[n].to(t.dtype) if n in avg else t.detach().clone()) for n, t in state.items()}

    def describe(self) -> str:
        parts = []
        if self.ema is not None:
            parts.append(f"ema_decay:{self.ema.decay}")
        if self.swa is not None:
            every = f"every:{self.cfg.swa_every}" if self.cfg.swa_every else f"snapshots:{self.cfg.swa_snapshots}"
            parts.append(f"swa_from:{self.cfg.swa_start_fraction} swa_{every} swa_taken:{self.swa.count}")
        return " ".join(parts) or "none"
