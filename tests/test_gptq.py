"""GPTQ and calibration: Hessians from forward hooks, self-generated calibration, and GPTQ
beating round-to-nearest on real weights with real activations (the bundled checkpoint and its
train shard), checked against an independent unblocked re-statement of the algorithm."""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
from torch import nn

from artifact.calibrate import batches_from_tokens, collect_hessians, generate_calibration
from artifact.runtime.errors import ConfigError, DataError
from artifact.gptq import GPTQConfig, gptq_quantize
from artifact.quant import ClipRule, QuantSpec, quantize_tensor, weighted_error
from helpers import bundled_model_and_tokens
from artifact.runtime.model import GPT, ModelConfig



pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------- the bundled checkpoint (shared)

@functools.lru_cache(maxsize=1)
def _bundled():
    got = bundled_model_and_tokens()
    if got is None:
        return None
    model, tokens = got
    batches = batches_from_tokens(tokens, n_seqs=16, seq_len=256, batch_size=8)
    return model, tokens, collect_hessians(model, batches, output_input_fn=model.hidden)


def bundled_model():
    """(model, train tokens, Hessians of 16 x 256 train tokens), or skip the test."""
    got = _bundled()
    if got is None:
        pytest.skip("bundled checkpoint train/bundled/checkpoint/model.pt is absent "
                    "(it is produced by the bundling step before landing)")
    return got


def real_matrices(model):
    """A few matrices of different roles, the tied embedding (output layer) among them."""
    last = model.config.num_layers - 1
    return ["blocks.0.attn.c_q.weight", "blocks.0.attn.c_v.weight", f"blocks.{last}.mlp.fc.weight",
            f"blocks.{last}.mlp.proj.weight", "tok_emb.weight"]


# ------------------------------------------------------------------------------ calibration

def test_hooks_give_exact_xtx_on_a_toy_linear():
    torch.manual_seed(0)
    lin = nn.Linear(6, 3, bias=False)
    model = nn.Sequential(lin)
    xs = [torch.randn(2, 5, 6), torch.randn(3, 4, 6)]
    h = collect_hessians(model, xs, matmul_dtype=torch.float64)
    x = torch.cat([t.reshape(-1, 6) for t in xs]).double()
    assert torch.allclose(h["0.weight"].double(), x.T @ x, rtol=1e-6, atol=1e-6)
    assert h.rows["0.weight"] == 10 + 12
    assert h["0.weight"].dtype == torch.float32


def _tiny_gpt(seed=0):
    torch.manual_seed(seed)
    model = GPT(ModelConfig(vocab_size=64, num_layers=2, model_dim=32, num_heads=4, num_kv_heads=2))
    with torch.no_grad():
        for p in model.parameters():  # no zero-initialised projections: every layer matters
            p.add_(0.1 * torch.randn_like(p))
    return model


def test_qkv_share_one_hessian_object_and_tied_embedding_gets_hidden():
    model = _tiny_gpt()
    ids = torch.randint(0, 64, (3, 16), generator=torch.Generator().manual_seed(1))
    h = collect_hessians(model, [ids[:2], ids[2:]], output_input_fn=model.hidden)
    q, k, v = (h[f"blocks.1.attn.c_{x}.weight"] for x in "qkv")
    assert q is k and k is v
    assert h["blocks.1.mlp.fc.weight"] is not q
    assert not torch.equal(h["blocks.1.mlp.fc.weight"], q)
    with torch.no_grad():
        hid = model.hidden(ids).reshape(-1, 32).double()
    assert torch.allclose(h["tok_emb.weight"].double(), hid.T @ hid, rtol=1e-4, atol=1e-4)
    assert h.n_samples == 48 and h.n_sequences == 3
    assert h.rows["blocks.0.mlp.proj.weight"] == 48
    assert ["blocks.0.attn.c_q.weight", "blocks.0.attn.c_k.weight", "blocks.0.attn.c_v.weight"] in h.groups


def test_self_generated_calibration_is_deterministic_with_a_seed():
    model = _tiny_gpt()
    a = generate_calibration(model, n_seqs=3, seq_len=12, temperature=0.8, seed=7, batch_size=2)
    b = generate_calibration(model, n_seqs=3, seq_len=12, temperature=0.8, seed=7, batch_size=2)
    c = generate_calibration(model, n_seqs=3, seq_len=12, temperature=0.8, seed=8, batch_size=2)
    assert a.shape == (3, 12) and torch.equal(a, b) and not torch.equal(a, c)
    assert (a[:, 0] == 1).all() and int(a.max()) < 64
    with pytest.raises(ConfigError):
        generate_calibration(model, 1, 4, temperature=0.0)


def test_calibration_windows_from_tokens():
    toks = torch.arange(100).numpy()
    batches = batches_from_tokens(toks, n_seqs=5, seq_len=10, batch_size=2, offset=3)
    assert [tuple(b.shape) for b in batches] == [(2, 10), (2, 10), (1, 10)]
    assert batches[0][0, 0] == 3 and batches[-1][0, -1] == 52
    with pytest.raises(DataError):
        batches_from_tokens(toks, n_seqs=20, seq_len=10)


# ------------------------------------------------------------------------------------ GPTQ

def _reference_gptq(w, h, scale, r, damp=0.01):
    """Unblocked GPTQ in natural column order from the explicit inverse (Schur-complement
    updates after each column): the textbook algorithm, for checking the blocked Cholesky one."""
    w = w.double().clone()
    h = h.double() + damp * h.diagonal().mean() * torch.eye(h.shape[0], dtype=torch.float64)
    hinv = torch.linalg.inv(h)
    s = scale.double()[:, None]
    codes = torch.zeros_like(w)
    for j in range(w.shape[1]):
        codes[:, j] = torch.clamp(torch.round(w[:, j] / s[:, 0]), -r, r)
        err = (w[:, j] - codes[:, j] * s[:, 0]) / hinv[j, j]
        w[:, j + 1:] -= err[:, None] * hinv[j, j + 1:][None, :]
        hinv = hinv - torch.outer(hinv[:, j], hinv[j, :]) / hinv[j, j]
    return codes.to(torch.int8)


def test_blocked_gptq_matches_an_unblocked_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 12, generator=g) @ torch.randn(12, 12, generator=g)
    h = x.T @ x
    w = torch.randn(5, 12, generator=g)
    spec = QuantSpec(bits=3)
    got = gptq_quantize(w, h, spec, GPTQConfig(block_size=4, act_order=False))
    ref = _reference_gptq(w, h, got.scales.float(), r=3)
    assert torch.equal(got.codes, ref)


def test_diagonal_hessian_makes_gptq_round_to_nearest():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(16, 40, generator=g)
    h = torch.diag(torch.rand(40, generator=g) + 0.1)
    spec = QuantSpec(bits=4, clip=ClipRule("sdclip", k=3.0))
    assert torch.equal(gptq_quantize(w, h, spec).codes, quantize_tensor(w, spec, h).codes)


def test_dead_columns_are_zeroed_and_codes_stay_in_range():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(200, 24, generator=g)
    x[:, [3, 17]] = 0
    w = torch.randn(8, 24, generator=g)
    q = gptq_quantize(w, x.T @ x, QuantSpec(bits=2))
    assert (q.codes[:, [3, 17]] == 0).all()
    assert int(q.codes.abs().max()) <= 1 and q.meta["dead_columns"] == 2


def test_cholesky_fallback_on_singular_and_indefinite_hessians():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(6, 10, generator=g)
    v = torch.randn(10, 1, generator=g)
    singular = v @ v.T  # rank 1: damping alone makes it positive definite
    q = gptq_quantize(w, singular, QuantSpec(bits=4))
    assert q.meta["gptq"] == "ok" and q.meta["damp"] == 0.01
    mild = torch.eye(10) - 0.15 * torch.ones(10, 10)  # one eigenvalue -0.5: needs damping x100
    q = gptq_quantize(w, mild, QuantSpec(bits=4))
    assert q.meta["gptq"] == "ok" and q.meta["damp"] > 0.01
    indefinite = torch.eye(10) + 50.0 * (torch.ones(10, 10) - torch.eye(10))  # eigenvalues -49
    with pytest.warns(RuntimeWarning, match="round-to-nearest"):
        q = gptq_quantize(w, indefinite, QuantSpec(bits=4), name="blocks.0.x")
    assert q.meta["gptq"] == "fallback_rtn"
    assert torch.equal(q.codes, quantize_tensor(w, QuantSpec(bits=4)).codes)


def test_gptq_rejects_bad_input():
    w = torch.randn(4, 8)
    with pytest.raises(ConfigError, match="needs a Hessian"):
        gptq_quantize(w, None, QuantSpec())
    with pytest.raises(ConfigError, match="Hessian shape"):
        gptq_quantize(w, torch.eye(7), QuantSpec(), name="blocks.0.attn.c_q.weight")
    with pytest.raises(ConfigError, match="NaN"):
        gptq_quantize(w, torch.full((8, 8), float("nan")), QuantSpec())
    with pytest.raises(ConfigError, match="2-D"):
        gptq_quantize(torch.randn(8), torch.eye(8), QuantSpec())


@pytest.mark.parametrize("spec", [
    QuantSpec(bits=4, clip=ClipRule("search")),
    QuantSpec(bits=6, clip=ClipRule("sdclip", k=12.85)),
    QuantSpec(bits=5, group_size=32),
], ids=["int4-search", "int6-sdclip", "int5-g32"])
def test_gptq_beats_round_to_nearest_on_real_weights_and_activations(spec):
    model, _, hessians = bundled_model()
    state = model.state_dict()
    for name in real_matrices(model):
        w, h = state[name], hessians[name]
        rtn = quantize_tensor(w, spec, h, name)
        got = gptq_quantize(w, h, spec, name=name)
        assert torch.equal(got.scales, rtn.scales)  # same grid: only the rounding differs
        assert got.codes.abs().max() <= (1 << (spec.bits - 1)) - 1
        e_rtn, e_gptq = weighted_error(w, rtn.dequantize(), h), weighted_error(w, got.dequantize(), h)
        assert e_gptq < 0.9 * e_rtn, f"{name}: GPTQ {e_gptq:.4g} vs RTN {e_rtn:.4g}"


def test_gptq_is_deterministic():
    model, _, hessians = bundled_model()
    name = "blocks.0.mlp.fc.weight"
    w = model.state_dict()[name]
    a = gptq_quantize(w, hessians[name], QuantSpec(bits=6))
    b = gptq_quantize(w.clone(), hessians[name].clone(), QuantSpec(bits=6))
    assert torch.equal(a.codes, b.codes) and torch.equal(a.scales, b.scales)


def test_warnings_do_not_fire_on_real_weights():
    model, _, hessians = bundled_model()
    name = real_matrices(model)[-1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert gptq_quantize(model.state_dict()[name], hessians[name], QuantSpec(bits=6)).meta["gptq"] == "ok"
