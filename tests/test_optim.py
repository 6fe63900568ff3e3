"""Optimiser knobs: Polar Express and Newton–Schulz orthogonalisation, row-normalised Muon,
decoupled weight decay (Muon and AdamW), and the parameter groups decided by name."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from artifact.runtime.errors import ConfigError
from train.train_config import TrainConfig
from train.optim import (
    POLAR_EXPRESS_COEFFS,
    Muon,
    build_optimizers,
    newton_schulz5,
    normalize_rows,
    polar_express,
    split_named_parameters,
)


def _grad(rows=96, cols=32, seed=0) -> torch.Tensor:
    g = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))
    g[:, :4] *= 1e-3  # a few tiny singular values: the hard case for orthogonalisation
    return g


def _distance_to_orthogonal(x: torch.Tensor) -> float:
    """mean |sigma - 1| of x scaled to unit spectral norm (scale-free)."""
    s = torch.linalg.svdvals(x.float())
    return float((s / s.max() - 1).abs().mean())


def test_polar_express_is_closer_to_orthogonal_than_its_input_and_than_ns5():
    g = _grad()
    pe, ns = polar_express(g), newton_schulz5(g)
    assert pe.shape == g.shape
    assert _distance_to_orthogonal(pe) < 0.5 * _distance_to_orthogonal(g)
    # the per-iteration schedule lifts the small singular values further than the fixed quintic
    assert torch.linalg.svdvals(pe).min() > 1.5 * torch.linalg.svdvals(ns).min()
    well_conditioned = torch.randn(64, 32, generator=torch.Generator().manual_seed(1))
    s = torch.linalg.svdvals(polar_express(well_conditioned))
    assert s.min() > 0.8 and s.max() < 1.2
    assert len(POLAR_EXPRESS_COEFFS) == 5


def test_muon_polar_express_option_uses_polar_express():
    g = _grad(32, 48)
    p = nn.Parameter(torch.zeros(32, 48))
    p.grad = g.clone()
    Muon([p], lr=1.0, momentum=0.0, nesterov=False, orthogonalizer="polar_express").step()
    assert torch.allclose(-p.detach(), polar_express(g), atol=1e-6)


def test_muon_weight_decay_is_decoupled_and_shrinks_weights():
    w0 = torch.randn(16, 8, generator=torch.Generator().manual_seed(2))
    plain, decayed = nn.Parameter(w0.clone()), nn.Parameter(w0.clone())
    for p, wd in ((plain, 0.0), (decayed, 0.5)):
        p.grad = torch.zeros_like(p)  # a zero gradient orthogonalises to a zero update
        Muon([p], lr=0.1, momentum=0.9, weight_decay=wd).step()
    assert torch.equal(plain.detach(), w0)
    assert torch.allclose(decayed.detach(), w0 * (1 - 0.1 * 0.5), atol=0, rtol=1e-7)
    assert decayed.detach().norm() < plain.detach().norm()


def test_row_normalised_muon_pre_ignores_row_scale_and_post_equalises_rows():
    g = _grad(24, 40, seed=3)
    scaled = g.clone()
    scaled[0] *= 100.0
    updates = {}
    for mode, grad in (("pre", g), ("pre_scaled", scaled), ("none", g), ("none_scaled", scaled), ("post", scaled)):
        p = nn.Parameter(torch.zeros_like(g))
        p.grad = grad.clone()
        Muon([p], lr=1.0, momentum=0.0, nesterov=False, row_normalize=mode.split("_")[0]).step()
        updates[mode] = -p.detach()
    assert torch.allclose(updates["pre"], updates["pre_scaled"], atol=1e-5)  # MuonEq-R: row scale is gone
    assert not torch.allclose(updates["none"], updates["none_scaled"], atol=1e-3)
    row_rms = updates["post"].pow(2).mean(dim=1).sqrt()
    assert torch.allclose(row_rms, row_rms.mean().expand_as(row_rms), rtol=1e-4)
    assert torch.allclose(normalize_rows(g).pow(2).mean(dim=1), torch.ones(24), rtol=1e-5)


def test_muon_rejects_unknown_modes():
    p = nn.Parameter(torch.zeros(4, 4))
    with pytest.raises(ConfigError, match="orthogonalizer"):
        Muon([p], lr=0.1, momentum=0.9, orthogonalizer="ns7")
    with pytest.raises(ConfigError, match="muon_row_normalize"):
        TrainConfig(muon_row_normalize="both")


class SeedLikeModel(nn.Module):
    """A module named like the seed architectures (bigram/trigram hashes, value embeddings,
    smear gate, attention gates, lambdas, skips, untied head) to check group membership."""

    def __init__(self):
        super().__init__()
        self.tok_emb = nn.Embedding(32, 8)
        self.bigram = nn.Module()
        self.bigram.embed = nn.Embedding(16, 4)
        self.bigram.proj = nn.Linear(4, 8, bias=False)
        self.value_embeds = nn.ModuleList([nn.Embedding(32, 8)])
        self.smear = nn.Module()
        self.smear.gate = nn.Parameter(torch.zeros(8))
        self.skip_weights = nn.Parameter(torch.ones(2, 8))
        self.skip_gates = nn.Parameter(torch.zeros(2, 8))
        self.blocks = nn.ModuleList([nn.Module()])
        blk = self.blocks[0]
        blk.attn = nn.Module()
        blk.attn.c_q = nn.Linear(8, 8, bias=False)
        blk.attn.gate_proj = nn.Linear(8, 2, bias=False)  # 2-D but a gate: Adam
        blk.attn.q_gain = nn.Parameter(torch.ones(2))
        blk.mlp = nn.Module()
        blk.mlp.fc = nn.Linear(8, 16, bias=False)
        blk.resid_mix = nn.Parameter(torch.ones(2, 8))
        blk.vr_lambda = nn.Parameter(torch.ones(2, 8))
        self.lm_head = nn.Linear(8, 32, bias=False)


def test_parameter_groups_follow_the_naming_contract():
    groups = {k: [n for n, _ in v] for k, v in split_named_parameters(SeedLikeModel()).items()}
    assert groups["embed"] == ["tok_emb.weight", "bigram.embed.weight", "value_embeds.0.weight"]
    assert groups["head"] == ["lm_head.weight"]
    assert groups["matrix"] == ["bigram.proj.weight", "blocks.0.attn.c_q.weight", "blocks.0.mlp.fc.weight"]
    assert sorted(groups["scalar"]) == sorted([
        "smear.gate", "skip_weights", "skip_gates", "blocks.0.attn.gate_proj.weight", "blocks.0.attn.q_gain",
        "blocks.0.resid_mix", "blocks.0.vr_lambda"])


def test_adam_groups_get_their_own_lr_and_decoupled_weight_decay():
    model = SeedLikeModel()
    cfg = dataclasses.replace(TrainConfig(), embed_lr=0.5, aux_embed_lr=0.2, head_lr=0.01, scalar_lr=0.03,
                              embed_weight_decay=0.1, head_weight_decay=0.0, scalar_weight_decay=0.02,
                              muon_weight_decay=0.05)
    opts = build_optimizers(model, cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    seen = {names[id(p)]: (type(o).__name__, g["lr"], g.get("weight_decay", 0.0))
            for o in opts for g in o.param_groups for p in g["params"]}
    assert len(seen) == len(names)
    assert seen["tok_emb.weight"] == ("AdamW", 0.5, 0.1)  # untied: embed_lr
    assert seen["bigram.embed.weight"] == ("AdamW", 0.2, 0.1)
    assert seen["lm_head.weight"] == ("Adam", 0.01, 0.0)
    assert seen["smear.gate"] == ("AdamW", 0.03, 0.02)
    assert seen["blocks.0.attn.c_q.weight"] == ("Muon", 0.04, 0.05)
    # A zero gradient leaves Adam's update at 0, so only the decay acts: w <- w (1 - lr wd).
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    for o in opts:
        o.step()
    after = dict(model.named_parameters())
    assert torch.allclose(after["tok_emb.weight"], before["tok_emb.weight"] * (1 - 0.5 * 0.1))
    assert torch.equal(after["lm_head.weight"].detach(), before["lm_head.weight"])
    assert torch.allclose(after["blocks.0.mlp.fc.weight"], before["blocks.0.mlp.fc.weight"] * (1 - 0.04 * 0.05))


def test_baseline_config_keeps_plain_adam_and_muon_without_decay():
    opts = build_optimizers(SeedLikeModel(), TrainConfig())
    assert [type(o).__name__ for o in opts] == ["Adam", "Adam", "Muon", "Adam"]
    assert all(g["weight_decay"] == 0.0 for o in opts for g in o.param_groups)
