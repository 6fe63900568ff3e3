"""The seed presets: every seed 000–004 exists at full scale and as a CPU twin; the full presets
describe record-sized models with the seed's switches on; each CPU twin trains a few steps on real
text (the small sample build) and its checkpoint reloads with the same switches."""

from __future__ import annotations

import math

import pytest
import torch

from artifact.runtime.checkpoint import load_checkpoint
from train.loop import train
from artifact.runtime.model import ModelConfig, state_dict_shapes
from train.presets import list_presets, load_preset

SEEDS = [f"seed-{i:03d}" for i in range(5)]
CPU_PRESETS = ["baseline-cpu"] + [f"{s}-cpu" for s in SEEDS]


def _params(cfg: ModelConfig) -> int:
    return sum(math.prod(s) for s in state_dict_shapes(cfg).values())


def test_every_seed_has_a_full_preset_and_a_cpu_twin():
    names = set(list_presets())
    for seed in SEEDS:
        assert seed in names and f"{seed}-cpu" in names


@pytest.mark.parametrize("seed", SEEDS)
def test_full_presets_are_record_sized_and_switch_something_on(seed):
    spec = load_preset(seed)
    params = _params(spec.model)
    assert 15e6 < params < 40e6, params
    assert spec.model != ModelConfig(vocab_size=spec.model.vocab_size, num_layers=spec.model.num_layers,
                                      mlp_mult=spec.model.mlp_mult)  # not a plain baseline
    twin = load_preset(f"{seed}-cpu")
    assert _params(twin.model) < 2e6 and twin.train.device == "cpu"
    # the twin turns on the same switches (sizes and layer indices are scaled, not the set of switches)
    for key in ("smear", "ln_scale", "value_residual", "trigram", "skip_gates", "mlp_act", "attn_gate", "init"):
        assert getattr(twin.model, key) == getattr(spec.model, key), key
    for key in ("rope_dims", "bigram_buckets", "xsa_last", "recur_layers", "ve_layers"):
        assert bool(getattr(twin.model, key)) == bool(getattr(spec.model, key)), key
    for key in ("ema_decay", "swa_every", "swa_snapshots", "qat_recipe", "muon_weight_decay", "muon_row_normalize"):
        assert bool(getattr(twin.train, key)) == bool(getattr(spec.train, key)), key


@pytest.mark.slow
@pytest.mark.parametrize("name", CPU_PRESETS)
def test_cpu_twin_trains_and_round_trips(name, sample_data, tmp_path, one_thread):
    overrides = {"iterations": 4, "val_every": 0, "val_tokens": 4096, "log_every": 1, "seq_len": 64,
                 "batch_tokens": 1024}
    figures = train(name, sample_data, tmp_path / name, overrides=overrides)
    assert figures["steps"] == 4 and math.isfinite(figures["val_bpb"])
    model, cfg, _ = load_checkpoint(tmp_path / name)
    assert cfg == load_preset(name).model
    x = torch.randint(0, cfg.vocab_size, (1, 33), generator=torch.Generator().manual_seed(0))
    again, _, _ = load_checkpoint(tmp_path / name)
    assert torch.equal(model.eval()(x), again.eval()(x))
