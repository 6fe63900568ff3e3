"""Recipes (TOML presets, validation) and the packer (state dict + recipe → container entries):
every named recipe packs a real trained model into an artifact that the shipped decoder turns
back into exactly `PackResult.dequantized`; the baseline recipe gives the baseline's codes;
bad recipes and bad checkpoints fail with one clear error.

Real models: the bundled checkpoint (skipped with a reason while absent) and a small model
trained here in seconds on real English text (tests/data/sample) with the project's trainer."""

from __future__ import annotations

import functools
import io
from pathlib import Path

import numpy as np
import pytest
from helpers import bundled_model_and_tokens
import torch

from artifact.runtime import decoder
from artifact.container import build_blob, write_artifact
from artifact.runtime.errors import CheckpointError, ConfigError, DataError, GolfError
from artifact.lqer import RECORD_FACTORS
from artifact.pack import calibrate_for_recipe, pack_state_dict, recipe_needs_hessians
from artifact.quant import baseline_int8, weighted_error
from artifact.recipe import list_recipes, load_recipe

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "tests" / "data" / "sample"
NAMED = ["baseline-int8-zlib", "record-1855", "seed-000", "seed-001", "seed-002", "seed-003", "seed-004"]
SMALL_CALIBRATION = {"calibration": {"n_seqs": 16, "seq_len": 128}}


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------ real models

@functools.lru_cache(maxsize=1)
def _trained_small(tmp: str):
    """A 2-layer, 128-wide GPT trained for 40 steps on the sample text (its embedding, 131,072
    elements, is above the baseline's fp16 threshold), with its train tokens."""
    from artifact.runtime.checkpoint import load_checkpoint
    from train.data_build import build_dataset
    from train.loop import train
    from artifact.runtime.shards import load_tokens, resolve_data

    tmp = Path(tmp)
    data = tmp / "sample"
    build_dataset(SAMPLE, data, vocab_size=1024, val_docs=12, name="sample", shard_tokens=40_000)
    preset = (REPO / "train" / "presets" / "tiny-cpu.toml").read_text().replace("model_dim = 64", "model_dim = 128")
    assert "model_dim = 128" in preset
    (tmp / "small.toml").write_text(preset)
    train(tmp / "small.toml", data, tmp / "run", log_stream=io.StringIO())
    model, _, _ = load_checkpoint(tmp / "run")
    tokens = load_tokens(resolve_data(data).train_files)
    return model, tokens




@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """(model, train tokens) of the small model trained here."""
    return _trained_small(str(tmp_path_factory.mktemp("small")))


@pytest.fixture(scope="module", params=["small", "bundled"])
def real(request, small):
    """(label, model, train tokens, Hessians of 16 x 128 train tokens)."""
    if request.param == "bundled":
        got = bundled_model_and_tokens()
        if got is None:
            pytest.skip("bundled checkpoint train/bundled/checkpoint/model.pt is absent "
                        "(it is produced by the bundling step before landing)")
    else:
        got = small
    model, tokens = got
    hessians = calibrate_for_recipe(model, load_recipe("record-1855", SMALL_CALIBRATION), tokens, model.hidden)
    return request.param, model, tokens, hessians


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------ recipes as data

def test_every_named_recipe_loads_with_the_table_choices():
    assert sorted(NAMED) == [n for n in list_recipes() if n in NAMED]
    recipes = {n: load_recipe(n) for n in NAMED}
    for name, r in recipes.items():
        assert r.name == name and len(r.description) > 80, name
    by_rule = lambda r, i: (r.rules[i].spec.bits, r.rules[i].spec.clip.kind, r.rules[i].gptq is not None, r.rules[i].prune)
    assert recipes["baseline-int8-zlib"].rules[0].spec.scheme == "baseline_int8"
    assert recipes["baseline-int8-zlib"].codec == "zlib-9"
    assert by_rule(recipes["seed-000"], 0) == (5, "absmax", False, 0.0) and recipes["seed-000"].codec == "zstd-22"
    assert by_rule(recipes["seed-001"], 0) == (6, "search", True, 0.0) and recipes["seed-001"].codec == "brotli-11"
    s2 = recipes["seed-002"]
    assert by_rule(s2, 0) == (5, "search", False, 0.03) and by_rule(s2, 1) == (6, "search", False, 0.03)
    assert s2.rules[0].spec.clip.per == "matrix" and s2.rules[2].spec.scheme == "fp16"
    assert by_rule(recipes["seed-003"], 1)[0] == 8 and recipes["seed-003"].codec == "zstd-22"
    s4 = recipes["seed-004"]
    assert s4.lqer.rank == 4 and s4.lqer.top_k == 3 and s4.lqer.factor_a.bits == s4.lqer.factor_b.bits == 4
    rec = recipes["record-1855"]
    assert [(r.spec.bits, r.spec.clip.k) for r in rec.rules[:3]] == [(6, 13.0), (6, 11.5), (7, 14.0)]
    assert all(r.gptq is not None for r in rec.rules[:3]) and rec.codec == "brotli-11"
    assert (rec.lqer.factor_a, rec.lqer.factor_b) == RECORD_FACTORS and rec.lqer.top_k == 3
    assert "lrzip" in rec.description and "brotli" in rec.description
    assert [recipe_needs_hessians(recipes[n]) for n in NAMED] == [False, True, False, True, False, False, True]


@pytest.mark.parametrize("body, needles", [
    ('bitz = 6\n', ["bitz", "top level"]),
    ('[[rules]]\nmatch = "*"\nbitz = 6\n', ["bitz", "[[rules]][0]"]),
    ('[[rules]]\nmatch = "*"\nbits = 9\n', ["bits", "9", "2..8"]),
    ('[[rules]]\nmatch = "*"\nbits = "six"\n', ["bits", "int"]),
    ('[[rules]]\nmatch = "*"\nclip = "sdclip:-1"\n', ["clip", "positive"]),
    ('[[rules]]\nmatch = "*"\nscheme = "fp16"\ngptq = true\n', ["gptq", "fp16"]),
    ('[[rules]]\nmatch = "*"\nprune = 1.5\n', ["prune"]),
    ('codec = "gzip-9"\n', ["codec", "gzip"]),
    ('[lqer]\nrank = 4\nfactors = "int3"\n', ["[lqer]", "factors"]),
    ('[calibration]\nsource = "web"\n', ["[calibration]", "source"]),
    ('[prune_pm1]\ntarget = 5\n', ["[prune_pm1]", "target"]),
    ('[[rules]]\nbits = 6\n', ["match"]),
    ('[[rules]\n', ["malformed TOML"]),
])
def test_bad_recipes_name_the_file_and_key(tmp_path, body, needles):
    path = tmp_path / "mine.toml"
    path.write_text(body)
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    assert str(path) in str(err.value)
    for needle in needles:
        assert needle in str(err.value)


def test_unknown_recipe_name_lists_the_known_ones():
    with pytest.raises(ConfigError, match="seed-000"):
        load_recipe("seed-999")


def test_user_recipe_extends_a_preset_and_overrides_merge(tmp_path):
    path = tmp_path / "record-ans.toml"
    path.write_text('extends = "record-1855"\nname = "record-ans"\ncodec = "ans"\n[lqer]\ntop_k = 2\n')
    r = load_recipe(path)
    assert (r.name, r.codec, r.lqer.top_k, r.lqer.rank, len(r.rules)) == ("record-ans", "ans", 2, 4, 5)
    assert load_recipe("seed-004", {"lqer": {"rank": 0}}).lqer is None
    assert load_recipe("seed-000", {"codec": "ans"}).codec == "ans"


# ------------------------------------------------------------------------------ packing

def _pack(real, name, **overrides):
    _, model, _, hessians = real
    recipe = load_recipe(name, overrides or None)
    return pack_state_dict(_state(model), recipe, hessians if recipe_needs_hessians(recipe) else None)


@pytest.mark.parametrize("name", NAMED)
def test_pack_write_decode_is_bit_exact_for_every_recipe(real, name, tmp_path):
    res = _pack(real, name)
    path = tmp_path / "model.blob"
    size = write_artifact(res.entries, path)
    decoded = decoder.decode(str(path))
    assert list(decoded) == [e.name for e in res.entries] == list(real[1].state_dict())
    for n, w in decoded.items():
        assert w.dtype == np.float32 and np.array_equal(w, res.dequantized[n].numpy()), n
    # the rows account for every tensor, and the predicted bytes are near what was written
    assert [r["name"] for r in res.rows] == list(decoded)
    predicted = sum(r["bytes"] for r in res.rows)
    assert abs(predicted - size) < 0.05 * size + 3000, (predicted, size)
    # the decoded model is close to the original (no tensor lost or scrambled)
    state = real[1].state_dict()
    for r in res.rows:
        w = state[r["name"]].float()
        rel = float(((w - res.dequantized[r["name"]]) ** 2).sum() / (w ** 2).sum().clamp_min(1e-30))
        assert rel < 0.2, (name, r["name"], rel)


def test_baseline_recipe_gives_the_baselines_codes_and_scales(real):
    res = _pack(real, "baseline-int8-zlib")
    state = real[1].state_dict()
    quantized = 0
    for e in res.entries:
        ref = baseline_int8(e.name, state[e.name])
        if ref.is_passthrough:
            assert e.codes is None and np.array_equal(e.passthrough, ref.codes.numpy()), e.name
            assert e.passthrough.dtype == (np.float32 if ref.scheme == "fp32" else np.float16)
        else:
            quantized += 1
            assert np.array_equal(e.codes, ref.codes.numpy()) and np.array_equal(e.scales, ref.scales.numpy()), e.name
            assert e.codec == "zlib-9" and e.scales_codec == "zlib-9"
    assert quantized >= 1  # the embedding (> 65,536 elements) is int8 per row
    control = [e for e in res.entries if "resid_mix" in e.name or "q_gain" in e.name]
    assert control and all(e.passthrough.dtype == np.float32 for e in control)


def test_two_packs_give_byte_identical_blobs(real):
    for name in ("record-1855", "seed-002"):
        a, b = build_blob(_pack(real, name).entries), build_blob(_pack(real, name).entries)
        assert a == b, name
    calls = []
    pack_state_dict(_state(real[1]), load_recipe("seed-000"), None, progress=lambda *a: calls.append(a))
    n = len(real[1].state_dict())
    assert [c[:2] for c in calls] == [(i + 1, n) for i in range(n)] and calls[-1][2] in real[1].state_dict()


def test_lqer_goes_to_exactly_the_top_k_errors(real):
    _, model, _, hessians = real
    state = _state(model)
    plain = pack_state_dict(state, load_recipe("record-1855", {"lqer": {"rank": 0}}), hessians)
    errors = {r["name"]: r["error"] for r in plain.rows if r["scheme"] == "per_row" and len(r["shape"]) == 2
              and r["shape"][1] % 64 == 0}
    sse = {n: weighted_error(state[n], plain.dequantized[n]) for n in errors}
    for k in (1, 3):
        res = pack_state_dict(state, load_recipe("record-1855", {"lqer": {"top_k": k}}), hessians)
        with_lqer = [e.name for e in res.entries if e.lqer is not None]
        assert len(with_lqer) == k and set(with_lqer) == set(sorted(sse, key=lambda n: -sse[n])[:k])
        assert set(res.lqer_targets) == set(with_lqer)
        for e in res.entries:
            a, b = e.lqer or (None, None)
            if a is not None:  # the records' packing: A int2 one scale, B int4 groups of 64
                assert a.scales.size == 1 and a.codes.min() >= -2 and a.codes.max() <= 1
                assert b.group_size == 64 and b.codes.min() >= -8 and b.codes.max() <= 7
                assert next(r for r in res.rows if r["name"] == e.name)["lqer_rank"] == 4
    with pytest.raises(ConfigError, match="top_k or names"):
        load_recipe("record-1855", {"lqer": {"names": ["blocks.1.mlp.*"]}})
    named = pack_state_dict(state, _names_recipe(load_recipe("record-1855")), hessians)
    assert sorted(e.name for e in named.entries if e.lqer) == ["blocks.1.mlp.fc.weight", "blocks.1.mlp.proj.weight"]


def _names_recipe(base):
    """record-1855 with LQER on named tensors instead of the top k."""
    from dataclasses import replace

    return replace(base, lqer=replace(base.lqer, top_k=None, names=("blocks.1.mlp.*",), rank=2))


def test_magnitude_pruning_and_gptq_show_in_codes_and_rows(real):
    res = _pack(real, "seed-002")
    for e in res.entries:
        if ".mlp." in e.name and e.codes is not None:
            assert (e.codes == 0).mean() >= 0.03, e.name
            row = next(r for r in res.rows if r["name"] == e.name)
            assert row["prune"] == 0.03 and row["bits"] == 5 and row["clip"] == "search:matrix"
    rows = {r["name"]: r for r in _pack(real, "seed-001").rows}
    assert rows["tok_emb.weight"]["gptq"] and rows["tok_emb.weight"]["error_kind"] == "hessian"
    assert all(r["gptq"] for n, r in rows.items() if n.endswith(".weight"))


def test_pm1_pruning_fits_a_byte_target(real):
    full = len(build_blob(_pack(real, "seed-000").entries))
    target = full - 1500
    res = _pack(real, "seed-000", prune_pm1={"target_bytes": target})
    assert res.pm1_pruned > 0 and len(build_blob(res.entries)) <= target
    decoded = decoder.decode(build_blob(res.entries))
    assert all(np.array_equal(decoded[n], res.dequantized[n].numpy()) for n in decoded)


# ------------------------------------------------------------------------------ bad input

def test_recipe_naming_a_missing_tensor_is_a_clear_error(small, tmp_path):
    path = tmp_path / "typo.toml"
    path.write_text('[[rules]]\nmatch = ["tok_emb.weight", "blocks.0.mlp.fc.weigth"]\nbits = 6\n')
    with pytest.raises(ConfigError, match=r"doesn't exist.*blocks\.0\.mlp\.fc\.weigth"):
        pack_state_dict(_state(small[0]), load_recipe(path), None)


def test_nan_tensor_is_named(small):
    state = _state(small[0])
    state["blocks.1.mlp.proj.weight"][3, 5] = float("nan")
    with pytest.raises(GolfError, match=r"blocks\.1\.mlp\.proj\.weight.*NaN"):
        pack_state_dict(state, load_recipe("seed-000"), None)
    state = _state(small[0])
    state["blocks.0.attn_scale"][0] = float("inf")
    with pytest.raises(GolfError, match=r"blocks\.0\.attn_scale"):
        pack_state_dict(state, load_recipe("seed-000"), None)


def test_gptq_recipe_without_hessians_names_a_tensor(small):
    with pytest.raises(ConfigError, match=r"tok_emb\.weight.*Hessian"):
        pack_state_dict(_state(small[0]), load_recipe("seed-001"), None)
    with pytest.raises(ConfigError, match=r"blocks\.0\.attn\.c_q\.weight.*Hessian"):
        pack_state_dict(_state(small[0]), load_recipe("seed-001"), {"tok_emb.weight": torch.eye(128)})


def test_uncovered_tensors_and_bad_dtypes_are_clear_errors(small, tmp_path):
    state = _state(small[0])
    off = tmp_path / "off.toml"
    off.write_text('[[rules]]\nmatch = "blocks.*.weight"\nbits = 6\n[default]\nenabled = false\n')
    with pytest.raises(ConfigError, match=r"no rule covers tensor skip_weights.*disabled"):
        load_recipe(off).plan(state)
    big = tmp_path / "big.toml"
    big.write_text('[[rules]]\nmatch = "blocks.*.weight"\nbits = 6\n')
    with pytest.raises(ConfigError, match=r"tok_emb\.weight.*131,072 elements"):
        load_recipe(big).plan(state)
    assert load_recipe(big, {"default": {"large": "baseline_int8"}}).plan(state)["tok_emb.weight"].spec.scheme == "baseline_int8"
    state["step"] = torch.tensor(7)
    with pytest.raises(CheckpointError, match=r"step.*int64"):
        load_recipe("seed-000").plan(state)


def test_calibration_sources(small):
    model, tokens = small
    recipe = load_recipe("seed-001", {"calibration": {"source": "self", "n_seqs": 2, "seq_len": 12, "seed": 3}})
    a = calibrate_for_recipe(model, recipe, None, model.hidden)
    b = calibrate_for_recipe(model, recipe, None, model.hidden)
    assert "tok_emb.weight" in a and "blocks.0.mlp.fc.weight" in a
    assert a.keys() == b.keys() and all(a[k] is b[k] is None or torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(DataError, match="train tokens"):
        calibrate_for_recipe(model, load_recipe("seed-001"), None, model.hidden)


def test_a_one_layer_model_with_empty_skip_weights_packs():
    from artifact.runtime.model import GPT, ModelConfig

    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=512, num_layers=1, model_dim=64, num_heads=2, num_kv_heads=1))
    state = model.state_dict()
    assert state["skip_weights"].numel() == 0
    packed = pack_state_dict(state, load_recipe("seed-003"))
    assert packed.dequantized["skip_weights"].shape == state["skip_weights"].shape


def test_lqer_rank_table_is_validated():
    from artifact.recipe import parse_recipe

    r = parse_recipe({"lqer": {"ranks": {"blocks.0.mlp.fc.weight": 2, "blocks.1.*": 8}}})
    assert r.lqer.ranks == (("blocks.0.mlp.fc.weight", 2), ("blocks.1.*", 8)) and r.lqer.rank == 8
    assert (r.lqer.rank_for("blocks.1.attn.c_q.weight"), r.lqer.rank_for("blocks.2.mlp.fc.weight")) == (8, None)
    assert parse_recipe({"lqer": {"ranks": {}}}).lqer is None
    assert parse_recipe({"lqer": {"ranks": {"x": 2}, "rank": 0}}).lqer is None  # rank 0 still switches it off
    for bad, words in [({"ranks": {"x": 2}, "top_k": 3}, "not both"), ({"ranks": {"x": 0}}, ">= 1"),
                       ({"ranks": {"x": True}}, ">= 1"), ({"ranks": [2]}, "table")]:
        with pytest.raises(ConfigError, match=words):
            parse_recipe({"lqer": bad})


def test_lqer_rank_table_naming_no_tensor_is_an_error():
    from artifact.recipe import parse_recipe

    got = bundled_model_and_tokens()
    if got is None:
        pytest.skip("bundled checkpoint absent")
    data = {"rules": [{"match": ["*"], "ndim": 2, "bits": 6}], "default": {"large": "baseline_int8"}}
    ok = pack_state_dict(got[0].state_dict(), parse_recipe({**data, "lqer": {"ranks": {"blocks.0.*": 2}}}))
    assert {e.name: e.lqer[0].codes.shape[1] for e in ok.entries if e.lqer} == {
        n: 2 for n, t in got[0].state_dict().items() if n.startswith("blocks.0.") and t.ndim == 2}
    with pytest.raises(ConfigError, match=r"ranks \['nope.weight'\] match no quantized"):
        pack_state_dict(got[0].state_dict(), parse_recipe({**data, "lqer": {"ranks": {"nope.weight": 2}}}))
