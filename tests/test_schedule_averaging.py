"""LR schedules (warm-up, warm-down by steps or fraction, linear/cosine, floor, wall clock),
EMA and SWA (hand-computed averages; the final checkpoint holds the averaged weights), the
progress hook, and config validation."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from artifact.runtime.errors import ConfigError
from train.averaging import EMA, SWA, WeightAverager
from artifact.runtime.checkpoint import load_checkpoint
from train.loader import make_loader
from train.loop import LossModel, Trainer, prepare_data, train, train_step
from train.train_config import TrainConfig
from artifact.runtime.model import GPT
from train.optim import build_optimizers
from train.presets import load_preset
from train.qat import QatSchedule
from train.schedule import lr_multiplier, lr_scale_for, training_fraction


# ----------------------------------------------------------------------------------- schedules

def test_baseline_schedule_is_unchanged():
    assert lr_multiplier(50, 0.0, 100, 10, None) == 1.0
    assert lr_multiplier(90, 0.0, 100, 10, None) == 1.0
    assert lr_multiplier(95, 0.0, 100, 10, None) == pytest.approx(0.5)
    assert lr_multiplier(90, 900.0, 10_000, 20, 1000.0) == pytest.approx(0.5)


def test_warmup_warmdown_fraction_cosine_and_floor():
    cfg = dataclasses.replace(TrainConfig(), iterations=100, warmdown_fraction=0.5, warmdown_shape="cosine",
                              lr_floor=0.1, lr_warmup_steps=10, max_wallclock_seconds=0.0)
    at = [lr_scale_for(s, 0.0, cfg, None) for s in (0, 4, 9, 10, 50, 75, 100)]
    assert at[0] == pytest.approx(0.1) and at[1] == pytest.approx(0.5)  # linear warm-up (s+1)/10
    assert at[2] == pytest.approx(1.0) and at[3] == 1.0 and at[4] == 1.0
    # halfway through a cosine warm-down to a 0.1 floor: 0.1 + 0.9 * 0.5
    assert at[5] == pytest.approx(0.55)
    assert at[6] == pytest.approx(0.1)
    linear = dataclasses.replace(cfg, warmdown_shape="linear", lr_floor=0.0)
    assert lr_scale_for(80, 0.0, linear, None) == pytest.approx(0.4)
    cos = dataclasses.replace(cfg, lr_floor=0.0)
    assert lr_scale_for(60, 0.0, cos, None) == pytest.approx(0.5 * (1 - math.cos(math.pi * 0.8)))


def test_wallclock_cap_makes_fraction_schedules_time_based():
    cfg = dataclasses.replace(TrainConfig(), iterations=10_000, warmdown_fraction=0.25)
    # 1000 ms cap: the warm-down covers the last 250 ms whatever the step count
    assert lr_scale_for(10, 700.0, cfg, 1000.0) == 1.0
    assert lr_scale_for(10, 875.0, cfg, 1000.0) == pytest.approx(0.5)
    assert training_fraction(10, 875.0, 10_000, 1000.0) == pytest.approx(0.875)
    assert training_fraction(50, 0.0, 100, None) == 0.5
    assert training_fraction(500, 0.0, 100, None) == 1.0


@pytest.mark.parametrize("key,value", [
    ("warmdown_shape", "square"), ("warmdown_fraction", 1.5), ("lr_floor", -0.1), ("ema_decay", 1.0),
    ("muon_orthogonalizer", "ns7"), ("loader", "random"), ("swa_every", -1), ("muon_weight_decay", -0.1),
    ("qat_start_fraction", 2.0),
])
def test_bad_values_name_the_key(key, value):
    with pytest.raises(ConfigError, match=key):
        dataclasses.replace(TrainConfig(), **{key: value})


def test_swa_every_and_snapshots_are_exclusive():
    with pytest.raises(ConfigError, match="swa_every or swa_snapshots"):
        TrainConfig(swa_every=5, swa_snapshots=3)


# ----------------------------------------------------------------------------------- averaging

def _lin(w: float) -> nn.Linear:
    m = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(w)
    return m


def test_ema_equals_the_hand_computed_average():
    m = _lin(1.0)
    ema = EMA(m, decay=0.9)
    expected = 1.0
    for w in (2.0, 4.0, -1.0):
        with torch.no_grad():
            m.weight.fill_(w)
        ema.update(m)
        expected = 0.9 * expected + 0.1 * w
    assert ema.state()["weight"].item() == pytest.approx(expected, rel=1e-6)


def test_swa_is_the_mean_of_its_snapshots_and_snapshots_spread_by_fraction():
    swa = SWA()
    for w in (1.0, 2.0, 6.0):
        swa.add({"weight": torch.tensor([w])})
    assert swa.count == 3 and swa.mean["weight"].item() == pytest.approx(3.0)
    cfg = dataclasses.replace(TrainConfig(), swa_start_fraction=0.5, swa_snapshots=4)
    m = _lin(0.0)
    avg = WeightAverager(m, cfg)
    taken = []
    for step in range(1, 101):
        with torch.no_grad():
            m.weight.fill_(float(step))
        before = avg.swa.count
        avg.step_done(m, step, step / 100)
        if avg.swa.count > before:
            taken.append(step)
    assert taken == [63, 75, 88, 100]  # fractions 0.625, 0.75, 0.875, 1.0 (first step at or past each)
    assert avg.final_state(m)["weight"].item() == pytest.approx(sum(taken) / 4)
    every = WeightAverager(m, dataclasses.replace(TrainConfig(), swa_start_fraction=0.8, swa_every=5))
    for step in range(1, 101):
        every.step_done(m, step, step / 100)
    assert every.swa.count == 5  # steps 80, 85, 90, 95, 100


def test_training_with_ema_saves_the_averaged_weights_and_logs_both(tmp_path, small_data):
    figures = train("tiny-cpu", small_data, tmp_path / "ema",
                    {"iterations": 12, "val_every": 0, "ema_decay": 0.8, "val_tokens": 4096})
    assert figures["raw_val_bpb"] != figures["val_bpb"]
    log = (tmp_path / "ema/train_log.txt").read_text()
    assert "averaged (ema_decay:0.8)" in log and f"raw_val_bpb:{figures['raw_val_bpb']:.4f}" in log
    _, _, meta = load_checkpoint(tmp_path / "ema")
    assert meta["val_bpb"] == figures["val_bpb"]
    plain = train("tiny-cpu", small_data, tmp_path / "plain", {"iterations": 12, "val_every": 0})
    assert plain["val_bpb"] == pytest.approx(figures["raw_val_bpb"], rel=1e-12)  # EMA never touches training


# ------------------------------------------------------------------------------ progress hook

class RecordingGPT(GPT):
    """A GPT that records the loop's progress calls."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.calls: list[tuple[int, float]] = []

    def on_train_progress(self, step: int, fraction: float) -> None:
        self.calls.append((step, fraction))


def test_loop_calls_on_train_progress_before_every_step():
    spec = load_preset("tiny-cpu")
    cfg = dataclasses.replace(spec.train, iterations=4)
    model = RecordingGPT(spec.model)
    tr = Trainer(model, build_optimizers(model, cfg), LossModel(model), QatSchedule(model, cfg),
                 WeightAverager(model, cfg))
    data = prepare_data(None, spec.model.vocab_size)
    loader = make_loader("sequential", data.train_files, 0, 1, "cpu", spec.model.vocab_size)
    losses = [train_step(tr, loader, cfg, 1, torch.device("cpu"), s, 0.0, None).item() for s in range(4)]
    assert model.calls == [(0, 0.0), (1, 0.25), (2, 0.5), (3, 0.75)]
    assert all(math.isfinite(x) for x in losses)
