"""Quantizers: every scheme's dequantize(quantize(w)) within half a step, the stored-scale
rule, clip rules, the challenge baseline's exact int8 packing (against an independent
re-statement of the published algorithm), and clear errors on bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from artifact.runtime.decoder import dequantize
from artifact.runtime.errors import CheckpointError, ConfigError
from artifact.quant import (ClipRule, QuantSpec, baseline_int8_state_dict,
                            quantize_tensor, weighted_error)



pytestmark = pytest.mark.usefixtures("one_thread")


def heavy_tailed(rows=48, cols=128, seed=0, scale=0.02):
    """Student-t-like weights (outliers, like trained matrices), deterministic."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(rows, cols, generator=g)
    chi = torch.randn(rows, cols, 3, generator=g).pow(2).mean(-1)
    row_gain = torch.exp(0.5 * torch.randn(rows, 1, generator=g))
    return scale * row_gain * z / chi.sqrt()


def matrices():
    """Synthetic heavy-tailed weights, plus the bundled checkpoint's when it is present."""
    out = {"synthetic": heavy_tailed()}
    from test_gptq import _bundled  # the shared loader; None when the bundle is absent
    got = _bundled()
    if got is not None:
        state = got[0].state_dict()
        out.update({n: state[n] for n in ("blocks.0.attn.c_q.weight", "tok_emb.weight")})
    return out


def per_element_scale(q):
    return dequantize(torch.ones_like(q.codes), q.scales, q.group_size)


def assert_within_half_step(w, q, lo, hi):
    """Inside the grid's reach every weight is within s/2 of its code; beyond it, the weight
    lands on the nearest end of the grid."""
    w = w.float()
    s = per_element_scale(q)
    w_hat = q.dequantize()
    x = w / s
    inside = (x >= lo - 0.5) & (x <= hi + 0.5)
    err = (w - w_hat).abs()
    slack = 1e-6 * w.abs() + 1e-12
    assert bool((err[inside] <= 0.5 * s[inside] + slack[inside]).all())
    assert torch.equal(w_hat[x > hi + 0.5], (hi * s)[x > hi + 0.5])
    assert torch.equal(w_hat[x < lo - 0.5], (lo * s)[x < lo - 0.5])
    assert int(q.codes.min()) >= lo and int(q.codes.max()) <= hi


RULES = [ClipRule(), ClipRule("percentile", q=0.999), ClipRule("search"), ClipRule("search", per="matrix"),
         ClipRule("sdclip", k=3.0), ClipRule("sdclip", k=12.85), ClipRule("hsdclip", k=4.0)]


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
def test_per_row_every_bit_width_and_clip_rule_within_half_step(bits):
    for name, w in matrices().items():
        h = torch.diag(torch.rand(w.shape[1], generator=torch.Generator().manual_seed(bits)) + 0.5)
        for rule in RULES:
            r = (1 << (bits - 1)) - 1
            q = quantize_tensor(w, QuantSpec(bits=bits, clip=rule), h, name)
            assert q.codes.dtype == torch.int8 and q.scales.dtype == torch.float16
            assert q.scales.shape == (w.shape[0],) and q.scheme == "per_row"
            assert_within_half_step(w, q, -r, r)


@pytest.mark.parametrize("spec,lo,hi", [
    (QuantSpec(bits=4, group_size=64), -7, 7),
    (QuantSpec(bits=4, group_size=64, asymmetric=True), -8, 7),
    (QuantSpec(bits=6, group_size=32, clip=ClipRule("search")), -31, 31),
    (QuantSpec("per_tensor", bits=8), -127, 127),
    (QuantSpec("per_tensor", bits=2, asymmetric=True, scale_dtype="fp16"), -2, 1),
    (QuantSpec("per_tensor", bits=5, clip=ClipRule("search", per="matrix")), -15, 15),
    (QuantSpec("ternary", group_size=64), -1, 1),
    (QuantSpec("ternary"), -1, 1),
], ids=["int4-g64", "int4-g64-asym", "int6-g32-search", "tensor-int8", "tensor-int2-asym",
        "tensor-int5-search", "ternary-g64", "ternary-row"])
def test_grouped_tensor_and_ternary_schemes_within_half_step(spec, lo, hi):
    for name, w in matrices().items():
        q = quantize_tensor(w, spec, name=name)
        assert_within_half_step(w, q, lo, hi)
        if spec.group_size:
            assert q.scales.shape == (w.shape[0], w.shape[1] // spec.group_size)
        if spec.scheme == "per_tensor":
            assert q.scales.ndim == 0
            assert q.scales.dtype == (torch.float16 if spec.scale_dtype == "fp16" else torch.float32)


def test_ternary_uses_the_absmean_scale_and_binary_the_sign():
    w = heavy_tailed(8, 64)
    t = quantize_tensor(w, QuantSpec("ternary", group_size=16))
    assert torch.equal(t.scales, w.abs().reshape(8, 4, 16).mean(-1).half())
    assert set(t.codes.unique().tolist()) == {-1, 0, 1}
    b = quantize_tensor(w, QuantSpec("binary", group_size=16))
    assert torch.equal(b.codes, torch.where(w < 0, -1, 1).to(torch.int8))
    assert torch.equal(b.dequantize().abs(), per_element_scale(b))


def test_one_dimensional_and_passthrough_tensors():
    v = heavy_tailed(1, 300).reshape(300)
    q = quantize_tensor(v, QuantSpec(bits=8))  # a vector is one row: one fp16 scale
    assert q.scales.shape == (1,) and q.codes.shape == (300,)
    assert_within_half_step(v, q, -127, 127)
    p16 = quantize_tensor(v, QuantSpec("fp16"))
    assert p16.codes.dtype == torch.float16 and torch.equal(p16.dequantize(), v.half().float())
    p32 = quantize_tensor(v, QuantSpec("fp32"))
    assert torch.equal(p32.dequantize(), v)


def test_codes_divide_by_the_scale_as_stored_and_numpy_decodes_the_same():
    w = heavy_tailed()
    q = quantize_tensor(w, QuantSpec(bits=6, clip=ClipRule("sdclip", k=12.85)))
    s = q.scales.float()[:, None]
    assert torch.equal(q.codes, torch.clamp(torch.round(w / s), -31, 31).to(torch.int8))
    via_numpy = dequantize(q.codes.numpy(), q.scales.numpy(), None)
    assert np.array_equal(via_numpy, q.dequantize().numpy())


# ---------------------------------------------------------------------------------- clip rules

def test_fixed_percentile_and_absmax_clip_values():
    w = heavy_tailed()
    q = quantize_tensor(w, QuantSpec(bits=5, clip=ClipRule("percentile", q=0.99)))
    assert torch.equal(q.scales, (torch.quantile(w.abs(), 0.99, dim=1) / 15).half())
    a = quantize_tensor(w, QuantSpec(bits=5))
    assert torch.equal(a.scales, (w.abs().amax(1) / 15).half())


def test_sdclip_large_k_clips_nothing_and_absmax_is_the_tightest_clip_that_clips_nothing():
    w = heavy_tailed()
    std = w.std(dim=1)
    k = float((w.abs().amax(1) / std).max()) * 1.01  # k * std >= max|w| on every row
    sd = quantize_tensor(w, QuantSpec(bits=6, clip=ClipRule("sdclip", k=k)))
    assert torch.equal(sd.scales, (k * std / 31).half())
    absmax = quantize_tensor(w, QuantSpec(bits=6, clip=ClipRule.from_config("absmax")))
    assert (sd.scales >= absmax.scales).all()
    assert (sd.codes.abs() <= 31).all() and (absmax.codes.abs().amax(1) == 31).all()
    s = per_element_scale(sd)
    assert bool(((w - sd.dequantize()).abs() <= 0.5 * s + 1e-9).all())  # nothing clipped
    assert weighted_error(w, absmax.dequantize()) < weighted_error(w, sd.dequantize())


def test_hessian_aware_sdclip_scales_rows_by_their_activation_weight():
    w = heavy_tailed()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(500, w.shape[1], generator=g) * torch.linspace(0.2, 3.0, w.shape[1])
    h = x.T @ x
    plain = quantize_tensor(w, QuantSpec(bits=6, clip=ClipRule("sdclip", k=12.0)))
    same = quantize_tensor(w, QuantSpec(bits=6, clip=ClipRule("hsdclip", k=12.0, lam=0.0)), h)
    assert torch.equal(plain.scales, same.scales)
    got = quantize_tensor(w, QuantSpec(bits=6, clip=ClipRule("hsdclip", k=12.0, lam=0.175)), h)
    d = h.diagonal()
    r = (w.abs() * d / d.mean()).mean(1)
    r = r / r.mean()
    expect = (12.0 * w.std(dim=1) * (1 + 0.175 * (r - 1)) / 31).half()
    assert torch.allclose(got.scales.float(), expect.float(), rtol=2e-3)
    # rows whose weights meet the strongly-excited inputs widen, the others narrow
    assert bool((got.scales.float()[r > 1.01] > plain.scales.float()[r > 1.01]).all())
    with pytest.raises(ConfigError, match="needs a Hessian"):
        quantize_tensor(w, QuantSpec(bits=6, clip=ClipRule("hsdclip", k=12.0)))


def test_percentile_search_picks_the_lowest_error_candidate():
    w = heavy_tailed(seed=3)
    spec = QuantSpec(bits=4, clip=ClipRule("search", per="matrix"))
    cands = spec.clip.candidates
    each = [quantize_tensor(w, QuantSpec(bits=4, clip=ClipRule("percentile", q=c) if c < 1 else ClipRule()))
            for c in cands]
    errs = [weighted_error(w, q.dequantize()) for q in each]
    got = quantize_tensor(w, spec)
    assert got.meta["chosen_q"] == cands[int(np.argmin(errs))]
    assert math.isclose(weighted_error(w, got.dequantize()), min(errs), rel_tol=1e-12)
    # per row: every row reaches the best of the candidates for that row
    rows = quantize_tensor(w, QuantSpec(bits=4, clip=ClipRule("search", per="row")))
    row_err = ((w - rows.dequantize()).double() ** 2).sum(1)
    best = torch.stack([((w - q.dequantize()).double() ** 2).sum(1) for q in each]).min(0).values
    assert torch.allclose(row_err, best, rtol=1e-12, atol=0)
    assert weighted_error(w, rows.dequantize()) <= min(errs)
    # with a Hessian, the choice follows the Hessian-weighted error
    g = torch.Generator().manual_seed(4)
    x = torch.randn(300, w.shape[1], generator=g)
    x[:, :8] *= 20
    h = x.T @ x
    hq = quantize_tensor(w, spec, h)
    herrs = [weighted_error(w, q.dequantize(), h) for q in each]
    assert hq.meta["chosen_q"] == cands[int(np.argmin(herrs))]


def test_weighted_error_is_the_trace_formula():
    w, w_hat = heavy_tailed(6, 10, seed=1), heavy_tailed(6, 10, seed=2)
    x = torch.randn(40, 10, generator=torch.Generator().manual_seed(0)).double()
    h = x.T @ x
    e = w.double() - w_hat.double()
    assert math.isclose(weighted_error(w, w_hat, h), float(torch.trace(e @ h.double() @ e.T)), rel_tol=1e-10)
    assert math.isclose(weighted_error(w, w_hat, h), float(((x @ e.T) ** 2).sum()), rel_tol=1e-10)
    assert math.isclose(weighted_error(w, w_hat), float((e ** 2).mean() * e.numel()), rel_tol=1e-12)


def test_clip_rules_round_trip_through_config():
    for text in ("absmax", "percentile:0.9999", "search:row", "search:matrix", "sdclip:12.85", "hsdclip:13,0.2"):
        rule = ClipRule.from_config(text)
        assert ClipRule.from_config(rule.to_dict()) == rule
    for bad in ("sdclip", "sdclip:-1", "percentile:1.5", "median", {"kind": "sdclip", "kk": 1}, 3):
        with pytest.raises(ConfigError):
            ClipRule.from_config(bad)


def test_bad_input_raises_clear_errors():
    w = heavy_tailed(4, 30)
    bad = w.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(CheckpointError, match="blocks.3.mlp.fc.weight: 1 NaN/Inf"):
        quantize_tensor(bad, QuantSpec(), name="blocks.3.mlp.fc.weight")
    with pytest.raises(ConfigError, match="not a multiple of group_size"):
        quantize_tensor(w, QuantSpec(bits=4, group_size=64), name="x")
    with pytest.raises(ConfigError):
        QuantSpec(bits=9)
    with pytest.raises(ConfigError):
        QuantSpec("ternary", asymmetric=True)
    with pytest.raises(CheckpointError, match="fp16 range"):
        quantize_tensor(torch.tensor([1e6, 1.0]), QuantSpec("fp16"), name="big")
    with pytest.raises(CheckpointError, match="dtype"):
        quantize_tensor(torch.arange(6), QuantSpec(), name="ints")


# ------------------------------------------------------------------------- the baseline's rule

def _published_baseline(name, t):
    """The challenge baseline's quantize_state_dict_int8 step for one tensor, re-stated from its
    published description (artifact/docs/baseline.md, train_gpt.py): returns (kind, codes/tensor, scale)."""
    control = ("attn_scale", "attn_scales", "mlp_scale", "mlp_scales", "resid_mix", "resid_mixes",
               "q_gain", "skip_weight", "skip_weights")
    if not t.is_floating_point():
        return "raw", t, None
    if t.numel() <= 65536:
        if any(p in name for p in control):
            return "fp32", t.float(), None
        if t.dtype in (torch.float32, torch.bfloat16):
            return "fp16", t.half(), None
        return ("fp16" if t.dtype == torch.float16 else "raw"), t, None  # other floats: unchanged
    x = t.float()
    if x.ndim == 2:
        clip = torch.quantile(x.abs(), 99.99984 / 100.0, dim=1)
        clipped = torch.maximum(torch.minimum(x, clip[:, None]), -clip[:, None])
        scale = (clip / 127.0).clamp_min(1.0 / 127.0)
        q = torch.clamp(torch.round(clipped / scale[:, None]), -127, 127).to(torch.int8)
        return "per_row", q, scale.to(torch.float16)
    clip = float(torch.quantile(x.abs().flatten(), 99.99984 / 100.0).item())
    scale = torch.tensor(clip / 127.0 if clip > 0 else 1.0, dtype=torch.float32)
    q = torch.clamp(torch.round(torch.clamp(x, -clip, clip) / scale), -127, 127).to(torch.int8)
    return "per_tensor", q, scale


def test_baseline_int8_equals_the_published_algorithm():
    g = torch.Generator().manual_seed(11)
    state = {
        "tok_emb.weight": heavy_tailed(1024, 512, seed=1),
        "blocks.0.attn.c_k.weight": heavy_tailed(256, 512, seed=2),
        "blocks.0.mlp.fc.weight": torch.randn(1024, 512, generator=g) * 1e-3,  # clamp_min(1/127) fires
        "blocks.0.attn_scale": torch.rand(512, generator=g),
        "blocks.0.resid_mix": torch.rand(2, 512, generator=g),
        "skip_weights": torch.rand(4, 512, generator=g),
        "blocks.0.attn.q_gain": torch.full((8,), 1.5),
        "small.weight": torch.randn(64, 64, generator=g),
        "small_bf16": torch.randn(100, generator=g).bfloat16(),
        "small_f64": torch.randn(10, generator=g).double(),
        "small_f16": torch.randn(10, generator=g).half(),
        "big_vector": torch.randn(70000, generator=g) * 0.1,
        "zero_vector": torch.zeros(70000),
        "cube": torch.randn(20, 60, 60, generator=g),
        "steps": torch.arange(5),
    }
    if (got := _maybe_bundled_state()) is not None:
        state.update({f"bundled.{k}": v for k, v in got.items()})
    out = baseline_int8_state_dict(state)
    for name, t in state.items():
        kind, ref, scale = _published_baseline(name, t)
        q = out[name]
        assert q.scheme == kind, name
        assert q.codes.dtype == ref.dtype and torch.equal(q.codes, ref), name
        if scale is None:
            assert q.scales is None
        else:
            assert q.scales.dtype == scale.dtype and torch.equal(q.scales, scale), name
    assert out["blocks.0.mlp.fc.weight"].scales.eq(torch.tensor(1 / 127).half()).all()  # the quirk
    assert out["tok_emb.weight"].meta["rule"] == "baseline_int8"
    assert quantize_tensor(state["tok_emb.weight"], QuantSpec("baseline_int8"), name="tok_emb.weight").codes.equal(
        out["tok_emb.weight"].codes)


def _maybe_bundled_state():
    from test_gptq import _bundled
    got = _bundled()
    return None if got is None else got[0].state_dict()
