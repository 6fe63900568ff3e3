"""Rate-aware rounding (artifact/rdround.py) in round-to-nearest and GPTQ, its recipe key and
candidate label, the float32 GPTQ against the reference formulation, and the two-probe curve."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_gptq import bundled_model, real_matrices

from analysis.bench_gptq import reference_gptq
from artifact import codec
from artifact.container import build_blob
from artifact.gptq import gptq_quantize
from artifact.measure import Choice, Grid, TensorMeasure, curve_exponent
from artifact.pack import pack_state_dict
from artifact.quant import ClipRule, QuantSpec, quantize_tensor, weighted_error
from artifact.rdround import code_lengths, rd_round
from artifact.recipe import parse_recipe
from artifact.runtime.decoder import decode
from artifact.runtime.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")
SPEC = dict(bits=5, clip=ClipRule.from_config("sdclip:12.85"))


def test_rd_round_is_nearest_at_zero_rate_and_takes_the_cheap_code_under_a_high_one():
    x = torch.tensor([-2.4, -0.6, 0.2, 0.49, 0.51, 1.7, 3.9])
    lengths = torch.tensor([5.0, 3.0, 1.0, 3.0, 5.0])  # codes -2..2: 0 is the cheapest
    assert torch.equal(rd_round(x, torch.zeros(()), lengths, -2, 2), torch.tensor([-2.0, -1, 0, 0, 1, 2, 2]))
    # t = 1: 0.51 -> 0 (0.26 + 1 < 0.24 + 3), 1.7 -> 1 (0.49 + 3 < 0.09 + 5), -0.6 -> 0,
    # -2.4 -> -1 (1.96 + 3 < 0.16 + 5)
    assert torch.equal(rd_round(x, torch.ones(()), lengths, -2, 2), torch.tensor([-1.0, 0, 0, 0, 0, 1, 2]))
    # never more than one step from x, and inside the range
    got = rd_round(x * 3, torch.full((), 100.0), lengths, -2, 2)
    assert ((got - (x * 3).clamp(-2, 2)).abs() <= 1).all() and got.abs().max() <= 2


def test_code_lengths_follow_the_histogram():
    lengths = code_lengths(torch.tensor([0, 0, 0, 1, -1, 0]), -2, 2)
    assert lengths.shape == (5,) and int(torch.argmin(lengths)) == 2
    assert math.isclose(float((2.0 ** -lengths).sum()), 1.0, rel_tol=1e-6)


@pytest.mark.parametrize("use_gptq", [False, True])
def test_rate_aware_rounding_buys_bytes_with_distortion_on_real_weights(use_gptq):
    model, _, hessians = bundled_model()
    state = model.state_dict()
    for name in real_matrices(model):
        w, h = state[name], hessians[name]
        run = (lambda s: gptq_quantize(w, h, s)) if use_gptq else (lambda s: quantize_tensor(w, s, h))
        plain, rated = run(QuantSpec(**SPEC)), run(QuantSpec(**SPEC, rd=0.4))
        assert torch.equal(plain.scales, rated.scales)  # same grid, only the rounding moves
        assert ((plain.codes.int() - rated.codes.int()).abs() <= 1).all() if not use_gptq else True
        b0, b1 = (codec.predict_size("ans", q.codes.numpy()) for q in (plain, rated))
        e0, e1 = (weighted_error(w, q.dequantize(), h) for q in (plain, rated))
        assert b1 < b0 and e1 > e0, f"{name}: {b0} -> {b1} bytes, {e0:.4g} -> {e1:.4g}"


def test_rd_is_refused_outside_per_row():
    with pytest.raises(ConfigError, match="rd"):
        QuantSpec("per_tensor", bits=6, rd=0.1)
    with pytest.raises(ConfigError, match="rd"):
        QuantSpec(bits=6, rd=-1.0)
    with pytest.raises(ConfigError, match="rd"):
        parse_recipe({"name": "x", "rules": [{"match": "*", "scheme": "fp16", "rd": 0.1}]})


def test_rd_labels_round_trip_and_old_labels_keep_their_form():
    old = "int5/sdclip:8/gptq/r0/p0.03/ans"
    assert Choice.parse(old).rd == 0 and Choice.parse(old).label == old
    c = Choice.parse("int5/sdclip:8/gptq/r0/p0/rd0.15/ans")
    assert c.rd == 0.15 and c.label == "int5/sdclip:8/gptq/r0/p0/rd0.15/ans"
    for bad in ("int5/sdclip:8/gptq/r0/p0/rdx/ans", "int5/sdclip:8/gptq/r0/p0/rd0/ans"):
        with pytest.raises(ConfigError):
            Choice.parse(bad)
    first = [c for c in Grid().choices() if Grid().first_stage(c)]
    assert all(not c.rd and c.lqer_rank == 0 and c.codec == "ans" for c in first)
    assert any(c.rd for c in Grid().choices()) and any(c.codec == "transpose+brotli-11" for c in Grid().choices())


def test_an_rd_recipe_packs_and_round_trips_through_the_container():
    g = torch.Generator().manual_seed(0)
    state = {"a.weight": torch.randn(64, 128, generator=g) * 0.05, "b.weight": torch.randn(32, 64, generator=g)}
    recipe = parse_recipe({"name": "rd", "codec": "ans", "rules": [
        {"match": "a.weight", "bits": 5, "clip": "sdclip:8", "rd": 0.15},
        {"match": "b.weight", "bits": 4, "clip": "sdclip:8", "rd": 0.4, "codec": "transpose+brotli-11"}]})
    packed = pack_state_dict(state, recipe, None, predict_sizes=False)
    out = decode(build_blob(packed.entries))
    for name in state:
        assert np.array_equal(out[name], packed.dequantized[name].numpy())
    plain = pack_state_dict(state, parse_recipe({"name": "p", "codec": "ans", "rules": [
        {"match": "*", "bits": 5, "clip": "sdclip:8"}]}), None, predict_sizes=False)
    assert not torch.equal(plain.dequantized["a.weight"], packed.dequantized["a.weight"])


def test_float32_gptq_gives_the_reference_formulations_codes():
    model, _, hessians = bundled_model()
    state = model.state_dict()
    spec = QuantSpec(bits=6, clip=ClipRule.from_config("sdclip:12.85"))
    for name in real_matrices(model):
        ours = gptq_quantize(state[name], hessians[name], spec)
        ref = reference_gptq(state[name], hessians[name], ours.scales, -31, 31)
        # same float32 algorithm, other summation order: rare ties may flip (measured: none)
        assert float((ours.codes == ref).float().mean()) > 0.999, name


def test_curve_exponent_through_two_probes():
    p1 = {"dloss": 0.04, "distortion": 100.0}
    assert curve_exponent(p1, None) == 1.0
    assert curve_exponent(p1, {"dloss": 0.004, "distortion": 10.0}) == pytest.approx(1.0)
    assert curve_exponent(p1, {"dloss": 0.001, "distortion": 10.0}) == 1.5  # clamped (true 1.6)
    assert curve_exponent(p1, {"dloss": -1e-6, "distortion": 10.0}) == 1.0  # lost in noise
    t = TensorMeasure("w", (4, 4), 4e-4, {"distortion": 100.0}, {"x": {"distortion": 10.0}}, exponent=1.2)
    assert t.predicted_dloss("x") == pytest.approx(4e-4 * 100.0 * 0.1 ** 1.2)


def test_method_matched_probes_set_each_candidates_sensitivity():
    from artifact.measure import _set_sensitivities

    g = Grid()
    gptq, rated, plain = ("int5/sdclip:8/gptq/r0/p0/ans", "int5/sdclip:8/gptq/r0/p0/rd0.15/ans",
                          "int5/sdclip:8/rtn/r0/p0/ans")
    assert [g.method_probe(Choice.parse(l)) for l in (gptq, rated, plain)] == [g.probe_gptq, g.probe_rd, g.probe]
    cands = {l: {"distortion": 1.0} for l in (gptq, rated, plain)}
    t = TensorMeasure("w", (4, 4), 0.0, {"raw_sensitivity": 2.0}, cands,
                      method_of={l: g.method_probe(Choice.parse(l)) for l in cands},
                      probes={g.probe_gptq: {"raw_sensitivity": 10.0}, g.probe_rd: {"raw_sensitivity": -1.0}})
    _set_sensitivities({"w": t}, g)
    # GPTQ from its own probe; a probe lost in noise is floored (5% of the median plain one)
    assert [t.predicted_dloss(l) for l in (gptq, rated, plain)] == pytest.approx([10.0, 0.1, 2.0])
