"""LQER (low-rank correction of the quantization error) and pruning (magnitude, selective ±1
codes, fitting a size with a real compressor)."""

from __future__ import annotations

import functools
import zlib

import pytest
import torch

from artifact.runtime.errors import ConfigError
from artifact.gptq import gptq_quantize
from artifact.lqer import RECORD_FACTORS, lqer, quantization_errors, select_targets
from artifact.prune import magnitude_prune, pm1_candidates, prune_pm1, prune_pm1_many, prune_to_size
from artifact.quant import ClipRule, Quantized, QuantSpec, quantize_tensor, weighted_error
from test_gptq import bundled_model, real_matrices



pytestmark = pytest.mark.usefixtures("one_thread")
INT6 = QuantSpec(bits=6, clip=ClipRule("sdclip", k=12.85))
INT8_FACTORS = (QuantSpec(bits=8), QuantSpec(bits=8))


@functools.lru_cache(maxsize=1)
def _real_quantized():
    """(name, W, H, W_hat after int6 GPTQ) for a few real matrices of the bundled checkpoint."""
    model, _, hessians = bundled_model()
    state = model.state_dict()
    out = []
    for name in real_matrices(model):
        w, h = state[name], hessians[name]
        out.append((name, w, h, gptq_quantize(w, h, INT6, name=name).dequantize()))
    return out


# ----------------------------------------------------------------------------------------- LQER

def _errors_by_rank(w, w_hat, metric, factors, **kw):
    """[error without LQER, with rank 1, 4, 16] under `metric` (None: Frobenius)."""
    errs = [weighted_error(w, w_hat, metric)]
    for rank in (1, 4, 16):
        errs.append(weighted_error(w, w_hat + lqer(w, w_hat, rank, *factors, **kw).dequantize(), metric))
    return errs


def test_plain_lqer_lowers_the_frobenius_error_more_with_more_rank():
    for name, w, h, w_hat in _real_quantized():
        e = _errors_by_rank(w, w_hat, None, INT8_FACTORS, name=name)
        assert e[0] > e[1] > e[2] > e[3], f"{name}: {e}"
        # The records' packing (A int2, ONE scale): columns of A = U S with small singular values
        # round to zero, so rank beyond ~4 may add nothing — but never hurts.
        e = _errors_by_rank(w, w_hat, None, RECORD_FACTORS, name=name)
        assert e[0] > e[1] > e[2] >= e[3], f"{name}: {e}"


def test_activation_scaled_lqer_lowers_the_diagonal_weighted_error():
    for name, w, h, w_hat in _real_quantized():
        d = torch.diag(h.diagonal())
        e = _errors_by_rank(w, w_hat, d, INT8_FACTORS, hessian=h, scaling="diag", name=name)
        assert e[0] > e[1] > e[2] > e[3], f"{name}: {e}"
        # With the records' coarse factors (A int2, one scale) extra rank can cost as much as it
        # buys: the correction must still help at every rank, not necessarily monotonically.
        e = _errors_by_rank(w, w_hat, d, RECORD_FACTORS, hessian=h, scaling="diag", name=name)
        assert e[0] > max(e[1:]), f"{name}: {e}"


def test_hessian_scaled_lqer_lowers_the_hessian_weighted_error():
    for name, w, h, w_hat in _real_quantized():
        e = _errors_by_rank(w, w_hat, h, INT8_FACTORS, hessian=h, scaling="hessian", refit_b=True, name=name)
        assert e[0] > e[1] > e[2] > e[3], f"{name}: {e}"


def test_record_factor_packing_matches_the_records_rule():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(96, 128, generator=g)
    w_hat = quantize_tensor(w, QuantSpec(bits=3)).dequantize()
    c = lqer(w, w_hat, 4)  # defaults: the records' asymmetric A int2 / B int4 g64
    e = (w.double() - w_hat.double())
    u, s, vh = torch.linalg.svd(e, full_matrices=False)
    a, b = (u[:, :4] * s[:4]).float(), vh[:4].float()
    sa = (a.abs().max() / 1.5).half()
    assert c.a.scales.ndim == 0 and c.a.scales.dtype == torch.float16 and torch.equal(c.a.scales, sa)
    assert torch.equal(c.a.codes.abs(), torch.clamp(torch.round(a / sa.float()), -2, 1).to(torch.int8).abs())
    assert c.b.scales.shape == (4, 2) and c.b.scales.dtype == torch.float16
    assert int(c.b.codes.min()) >= -8 and int(c.b.codes.max()) <= 7 and int(c.a.codes.min()) >= -2
    sb = (b.abs().reshape(4, 2, 64).amax(-1) / 7.5).half()
    assert torch.equal(c.b.scales, sb)  # SVD signs may flip a factor pair, never the magnitudes


def test_lqer_target_selection_and_bad_input():
    errors = {"a": 3.0, "b": 5.0, "c": 5.0, "d": 1.0}
    assert select_targets(errors, top_k=2) == ["b", "c"]
    assert select_targets(errors, top_k=10) == ["b", "c", "a", "d"]
    assert select_targets(errors, names=["d"]) == ["d"]
    with pytest.raises(ConfigError, match="missing.weight"):
        select_targets(errors, names=["missing.weight"])
    w = torch.randn(8, 64)
    errs = quantization_errors({"w": w, "v": torch.randn(8)}, {"w": torch.zeros(8, 64)})
    assert list(errs) == ["w"] and errs["w"] == pytest.approx(float((w.double() ** 2).sum()))
    with pytest.raises(ConfigError, match="rank"):
        lqer(w, w, 9)
    with pytest.raises(ConfigError, match="needs a Hessian"):
        lqer(w, torch.zeros_like(w), 2, scaling="diag")


def test_lqer_top_k_on_real_errors():
    quantized = _real_quantized()
    plain = quantization_errors({n: w for n, w, _, _ in quantized}, {n: wh for n, _, _, wh in quantized})
    hess = quantization_errors({n: w for n, w, _, _ in quantized}, {n: wh for n, _, _, wh in quantized},
                               {n: h for n, _, h, _ in quantized})
    top = select_targets(plain, top_k=3)
    assert len(top) == 3 and all(plain[t] >= max(plain[n] for n in plain if n not in top) for t in top)
    assert set(hess) == set(plain)


# -------------------------------------------------------------------------------------- pruning

def test_magnitude_pruning_zeroes_exactly_the_fraction_of_smallest_weights():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(64, 100, generator=g)
    out = magnitude_prune(w, 0.03)
    zeroed = out == 0
    assert int(zeroed.sum()) == 192
    assert float(w.abs()[zeroed].max()) <= float(w.abs()[~zeroed].min())
    assert torch.equal(out[~zeroed], w[~zeroed]) and torch.equal(magnitude_prune(w, 0.0), w)
    ties = torch.tensor([0.5, -0.5, 0.5, 2.0])
    assert magnitude_prune(ties, 0.5).tolist() == [0.0, 0.0, 0.5, 2.0]  # ties: lower index first
    with pytest.raises(ConfigError):
        magnitude_prune(w, 1.5)


def _two_tensors():
    a = Quantized(torch.tensor([[1, -1, 31, 0], [1, 5, -1, 31]], dtype=torch.int8),
                  torch.tensor([0.1, 1.0]).half(), None, 6, "per_row")
    b = Quantized(torch.tensor([[1, -1, 31, 1]], dtype=torch.int8), torch.tensor([1.0]).half(), None, 6, "per_row")
    return a, b


def test_pm1_pruning_order_is_by_scale_squared_then_tensor_then_index():
    a, b = _two_tensors()
    t, f, cost = pm1_candidates([a, b])
    assert list(zip(t.tolist(), f.tolist())) == [(0, 0), (0, 1), (0, 4), (0, 6), (1, 0), (1, 1), (1, 3)]
    assert cost.tolist() == sorted(cost.tolist()) and cost[0] == pytest.approx(0.01, rel=1e-3)
    out = prune_pm1_many([a, b], 5)
    assert out[0].codes.tolist() == [[0, 0, 31, 0], [0, 5, 0, 31]]
    assert out[1].codes.tolist() == [[0, -1, 31, 1]]
    assert out[0].meta["pm1_pruned"] == 4 and out[1].meta["pm1_pruned"] == 1
    assert a.codes[0, 0] == 1  # inputs untouched
    assert prune_pm1(b, 2).codes.tolist() == [[0, 0, 31, 1]]
    with pytest.raises(ConfigError):
        prune_pm1(b, 4)


def test_prune_to_size_finds_the_fewest_codes_that_fit_a_real_compressor():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(64, 256, generator=g) * torch.linspace(0.2, 2.0, 64)[:, None]
    q = quantize_tensor(w, QuantSpec(bits=5, clip=ClipRule("sdclip", k=20.0)))

    def size(qs):
        return sum(len(zlib.compress(x.codes.numpy().tobytes(), 9)) for x in qs)

    full = size([q])
    target = full - 150
    res = prune_to_size([q], size, target)
    assert res.fits and res.size <= target and res.size == size(res.quantized)
    assert size(prune_pm1_many([q], res.count - 1)) > target
    assert res.cost == pytest.approx(float(pm1_candidates([q])[2][: res.count].sum()))
    assert prune_to_size([q], size, full).count == 0
    hopeless = prune_to_size([q], size, 10)
    assert not hopeless.fits and hopeless.count == int((q.codes.abs() == 1).sum())
