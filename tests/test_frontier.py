"""The frontier's pieces that need no checkpoint: shared ANS streams for small tensors (the
blob decodes to the same weights and shrinks), and the lever configurations of bench-frontier."""

from __future__ import annotations

import numpy as np
import torch

from analysis.frontier import LEVERS, lever_configs, restrict
from artifact.container import build_blob
from artifact.fit import recipe_data, shared_streams
from artifact.measure import Grid, Measurement, TensorMeasure
from artifact.pack import pack_state_dict
from artifact.recipe import parse_recipe
from artifact.runtime.decoder import decode

CHOICES = {"a": "int5/sdclip:8/gptq/r0/p0/ans", "b": "int5/sdclip:8/rtn/r0/p0/rd0.15/ans",
           "c": "int6/sdclip:8/rtn/r0/p0/ans", "d": "int5/sdclip:8/rtn/r0/p0/brotli-11",
           "e": "int5/sdclip:8/rtn/r0/p0/ans"}


def test_small_ans_tensors_of_one_width_share_a_stream():
    numels = {"a": 4096, "b": 8192, "c": 4096, "d": 4096, "e": 1 << 20}
    # c is alone at int6, d is not ANS, e is too large: only a and b share
    assert shared_streams(CHOICES, numels) == {"a": "small-int5", "b": "small-int5"}
    rules = {r["match"][0]: r for r in recipe_data(CHOICES, streams={"a": "small-int5"})["rules"]}
    assert rules["a"]["stream"] == "small-int5" and "stream" not in rules["b"] and rules["b"]["rd"] == 0.15


def test_a_shared_stream_saves_a_table_and_decodes_to_the_same_weights():
    g = torch.Generator().manual_seed(1)
    state = {f"t{i}.weight": torch.randn(32, 64, generator=g) * 0.05 for i in range(4)}
    choices = {n: "int5/sdclip:8/rtn/r0/p0/ans" for n in state}
    streams = shared_streams(choices, {n: t.numel() for n, t in state.items()})
    alone = pack_state_dict(state, parse_recipe(recipe_data(choices)), None, predict_sizes=False)
    shared = pack_state_dict(state, parse_recipe(recipe_data(choices, streams=streams)), None, predict_sizes=False)
    a, b = build_blob(alone.entries), build_blob(shared.entries)
    assert len(b) < len(a)
    da, db = decode(a), decode(b)
    assert all(np.array_equal(da[n], db[n]) for n in state)


def test_lever_configs_switch_one_lever_off_at_a_time():
    cands = {"int5/sdclip:8/gptq/r0/p0/ans": {"bytes": 10, "distortion": 2.0},
             "int5/sdclip:8/gptq/r0/p0/rd0.15/ans": {"bytes": 8, "distortion": 3.0},
             "int5/sdclip:8/gptq/r0/p0/transpose+brotli-11": {"bytes": 9, "distortion": 2.0}}
    t = TensorMeasure("w", (64, 64), 1e-3, {"distortion": 50.0}, cands, exponent=1.3)
    m = Measurement({"w": t}, Grid(), "hash")
    configs = lever_configs(list(LEVERS))
    assert set(configs) == {"all", "none"} | {f"-{n}" for n in LEVERS}
    off_rd, _ = configs["-rd"]
    assert set(off_rd(m).tensors["w"].candidates) == set(cands) - {"int5/sdclip:8/gptq/r0/p0/rd0.15/ans"}
    assert configs["-curve"][0](m).tensors["w"].exponent == 1.0 and m.tensors["w"].exponent == 1.3
    assert configs["-share"][1] == {"share_streams": False}
    none_m, none_kw = configs["none"]
    assert list(none_m(m).tensors["w"].candidates) == ["int5/sdclip:8/gptq/r0/p0/ans"]
    assert none_kw == {"share_streams": False}
    # hiding everything a tensor has keeps it solvable
    assert restrict(m, lambda l: True).tensors["w"].candidates == cands
