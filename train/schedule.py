"""Learning-rate and momentum schedules, and the training-progress fraction.

All schedules are multipliers of each param group's `base_lr`:

    lr(step) = base_lr * warmup(step) * warmdown(progress)

- warm-up: linear from 1/N to 1 over the first `lr_warmup_steps` steps (0 = none: the baseline);
- warm-down: over the last `warmdown_iters` steps, or the last `warmdown_fraction` of training
  (a fraction wins when > 0), the multiplier goes from 1 to `lr_floor` with a `linear` (the
  baseline) or `cosine` shape. Under a wall-clock cap, progress is time: a fraction is a
  fraction of the cap, and a step count is converted to time with the mean step time so far
  (the baseline's estimate), so the decay ends when the time runs out.
- Muon momentum: linear warm-up from `muon_momentum_warmup_start` to `muon_momentum`.

`cfg` is any object with the `TrainConfig` fields used here.
"""

from __future__ import annotations

import math

WARMDOWN_SHAPES = ("linear", "cosine")


def training_fraction(step: int, elapsed_ms: float, iterations: int, max_wallclock_ms: float | None) -> float:
    """How far training is, in [0, 1]: step / iterations, or elapsed / cap under a wall-clock
    cap (whichever is further, since either ends the run)."""
    frac = step / max(iterations, 1)
    if max_wallclock_ms is not None and max_wallclock_ms > 0:
        frac = max(frac, elapsed_ms / max_wallclock_ms)
    return min(max(frac, 0.0), 1.0)


def _shape(remaining: float, shape: str) -> float:
    """Warm-down curve: `remaining` is 1 at the start of the warm-down, 0 at its end."""
    remaining = min(max(remaining, 0.0), 1.0)
    if shape == "cosine":
        return 0.5 * (1.0 - math.cos(math.pi * remaining))
    return remaining


def warmdown_remaining(step: int, elapsed_ms: float, iterations: int, warmdown_iters: int,
                       max_wallclock_ms: float | None, warmdown_fraction: float = 0.0) -> float:
    """The part of the warm-down still ahead, in [0, 1] (1 = not started, 0 = finished)."""
    if warmdown_fraction > 0:
        progress = training_fraction(step, elapsed_ms, iterations, max_wallclock_ms)
        return min((1.0 - progress) / warmdown_fraction, 1.0)
    if warmdown_iters <= 0:
        return 1.0
    if max_wallclock_ms is None:
        start = max(iterations - warmdown_iters, 0)
        return max((iterations - step) / max(warmdown_iters, 1), 0.0) if start <= step < iterations else (
            1.0 if step < start else 0.0)
    step_ms = elapsed_ms / max(step, 1)
    warmdown_ms = warmdown_iters * step_ms
    remaining_ms = max(max_wallclock_ms - elapsed_ms, 0.0)
    return remaining_ms / max(warmdown_ms, 1e-9) if remaining_ms <= warmdown_ms else 1.0


def lr_multiplier(step: int, elapsed_ms: float, iterations: int, warmdown_iters: int, max_wallclock_ms: float | None,
                  warmdown_fraction: float = 0.0, shape: str = "linear", floor: float = 0.0,
                  warmup_steps: int = 0) -> float:
    """The LR multiplier at `step` (see the module docstring). With only the first five
    arguments it is the challenge baseline's linear warm-down to 0."""
    remaining = warmdown_remaining(step, elapsed_ms, iterations, warmdown_iters, max_wallclock_ms, warmdown_fraction)
    if remaining >= 1.0:
        scale = 1.0
    else:
        scale = floor + (1.0 - floor) * _shape(remaining, shape)
    if warmup_steps > 0 and step < warmup_steps:
        scale *= (step + 1) / warmup_steps
    return scale


def lr_scale_for(step: int, elapsed_ms: float, cfg, max_wallclock_ms: float | None) -> float:
    """`lr_multiplier` with every knob read from a TrainConfig."""
    return lr_multiplier(step, elapsed_ms, cfg.iterations, cfg.warmdown_iters, max_wallclock_ms,
                         cfg.warmdown_fraction, cfg.warmdown_shape, cfg.lr_floor, cfg.lr_warmup_steps)


def muon_momentum_at(step: int, cfg) -> float:
    """Linear warm-up of Muon's momentum from `muon_momentum_warmup_start` to `muon_momentum`
    over `muon_momentum_warmup_steps` steps."""
    if cfg.muon_momentum_warmup_steps <= 0:
        return cfg.muon_momentum
    frac = min(step / cfg.muon_momentum_warmup_steps, 1.0)
    return (1 - frac) * cfg.muon_momentum_warmup_start + frac * cfg.muon_momentum
