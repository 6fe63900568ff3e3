"""Faithful loading of the challenge's own `final_model.pt`: baseline names, a bf16 `tok_emb`
(train_gpt.py casts the model to bf16 and restores only the linear and control weights to fp32),
a non-default `logit_softcap`. golf says what it inferred and what it defaulted, takes the
missing values as overrides (`--set`, or a partial JSON beside the weights), and then scores the
model's own loss; packing keeps every tensor's dtype, so the int8 round trip of the bf16 table
is the challenge's to the bit, and float64 tensors pack."""

import json

import numpy as np
import pytest
import torch

from analysis.cli import main
from artifact.container import build_blob
from artifact.models import ModelSpec, load_model
from artifact.pack import pack_state_dict
from artifact.pipeline import eval_setup, model_digest, pack_checkpoint
from artifact.recipe import load_recipe
from artifact.runtime.decoder import decode_torch
from artifact.runtime.model import GPT, ModelConfig
from artifact.runtime.run import load_model as load_submission_model
from tests.test_model import reference_loss
from train.bundled import BUNDLED_DATA

SOFTCAP = 15.0
SHAPE = ModelConfig(num_layers=2, model_dim=64, num_heads=4, num_kv_heads=2, logit_softcap=SOFTCAP)
WINDOWS = 4  # flat windows of 1024 (the default seq_len of a bare state dict)


def challenge_int8_round_trip(w: torch.Tensor) -> torch.Tensor:
    """train_gpt.py's int8 export and reload of one 2-D, non-control tensor, from its
    description (artifact/docs/baseline.md): up to 65,536 elements kept as fp16; larger ones
    clipped per row at the 99.99984th percentile of |w|, scale = clip/127 floored at 1/127,
    codes rounded in fp32 and clamped to ±127, the scale stored fp16; reloaded as codes x scale
    in fp32. Either way cast back to the tensor's own dtype."""
    if w.numel() <= 65_536:
        return w.to(torch.float16).to(w.dtype)
    t = w.float()
    clip = torch.quantile(t.abs(), 0.9999984, dim=1)
    scale = (clip / 127.0).clamp_min(1.0 / 127.0)
    codes = torch.clamp(torch.round(torch.clamp(t, -clip[:, None], clip[:, None]) / scale[:, None]), -127, 127)
    return (codes * scale.half().float()[:, None]).to(w.dtype)


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """A final_model.pt as train_gpt.py saves it (weights pushed off their init), and its state."""
    torch.manual_seed(0)
    model = GPT(SHAPE)
    g = torch.Generator().manual_seed(1)
    state = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}
    # a table of unit scale, as trained ones grow: logits of several nats, where the cap matters
    state["tok_emb.weight"] = torch.randn(state["tok_emb.weight"].shape, generator=g).bfloat16()
    path = tmp_path_factory.mktemp("official") / "final_model.pt"
    torch.save(state, path)
    return path, state


def own_loss(state, windows) -> float:
    """The checkpoint's own mean loss on `windows`, by an independent forward (tests/test_model)
    with its true soft-cap, in float32 (bf16 -> fp32 is exact)."""
    sd = {k: v.float() for k, v in state.items()}
    with torch.no_grad():
        return reference_loss(sd, SHAPE, windows[:, :-1], windows[:, 1:]).item()


def test_the_bf16_embedding_round_trips_as_the_challenges_int8_does():
    g = torch.Generator().manual_seed(0)
    table = (0.05 * torch.randn(1024, 512, generator=g)).bfloat16()  # the baseline's 524,288 elements
    state = {"tok_emb.weight": table, "blocks.0.attn_scale": torch.rand(512, generator=g)}
    packed = pack_state_dict(state, load_recipe("baseline-int8-zlib"))
    decoded = decode_torch(build_blob(packed.entries))
    want = challenge_int8_round_trip(table)
    assert decoded["tok_emb.weight"].dtype == torch.bfloat16
    assert torch.equal(decoded["tok_emb.weight"], want)  # all 524,288 elements, bit for bit
    # the unrounded float32 values differ in most elements: the dtype is what makes it exact
    assert int((packed.dequantized["tok_emb.weight"] != want.float()).sum()) > 100_000
    assert decoded["blocks.0.attn_scale"].dtype == torch.float32


@pytest.mark.parametrize("recipe", ["baseline-int8-zlib", "seed-004"])
def test_float64_tensors_pack_and_come_back_float64(recipe):
    model = GPT(ModelConfig(vocab_size=1024, num_layers=1, model_dim=64, num_heads=2, num_kv_heads=1))
    state = {k: v.double() for k, v in model.state_dict().items()}
    hessians = {k: torch.eye(v.shape[1]) for k, v in state.items() if v.ndim == 2}
    packed = pack_state_dict(state, load_recipe(recipe), hessians)
    decoded = decode_torch(build_blob(packed.entries))
    assert {v.dtype for v in decoded.values()} == {torch.float64}
    small = "blocks.0.mlp_scale"  # kept float: fp32 values, the container's widest
    assert torch.equal(decoded[small], state[small].float().double())


def test_a_bare_final_model_says_what_was_inferred_and_defaulted(official, capsys):
    path, _ = official
    rc = main(["eval", str(path), "--max-tokens", "2049", "--device", "cpu", "--json"])
    out = capsys.readouterr()
    assert rc == 0
    notes = json.loads(out.out)["model"]["notes"]
    assert notes[0].startswith("inferred from the tensor shapes of final_model.pt: vocab_size=1024 num_layers=2 "
                               "model_dim=64 num_heads=4 num_kv_heads=2 mlp_mult=2 tie_embeddings=True")
    assert "defaulted (no tensor shows them: --set KEY=VALUE): logit_softcap=30.0; rope_base=10000.0" in notes[1]
    assert "defaulted: seq_len=1024" in notes[2]
    # --json keeps stderr silent off a terminal (the notes travel in the JSON); plain text says them there
    assert out.err == ""
    assert main(["eval", str(path), "--max-tokens", "2049", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    for note in notes:
        assert f"model: {note}" in err


def test_with_the_override_the_loss_is_the_models_own(official, tmp_path):
    path, state = official
    setups = {how: eval_setup(path, BUNDLED_DATA, None, WINDOWS * 1024 + 1, spec) for how, spec in {
        "defaulted": None, "set": ModelSpec(overrides={"logit_softcap": SOFTCAP})}.items()}
    windows = torch.from_numpy(np.asarray(setups["set"].stream.tokens, dtype=np.int64)).view(-1)
    windows = torch.stack([windows[i * 1024:(i + 1) * 1024 + 1] for i in range(WINDOWS)])
    own = own_loss(state, windows)
    losses = {how: s.model(windows[:, :-1], windows[:, 1:]).item() for how, s in setups.items()}
    # float32 kernels here and in the reference differ in summation order only
    assert losses["set"] == pytest.approx(own, rel=1e-5)
    assert abs(losses["defaulted"] - own) > 0.05 * own  # the silent default was far off
    assert "set: logit_softcap=15.0" in setups["set"].loaded.notes
    # a partial JSON beside the weights is merged over the inferred shape, and says so
    path.with_suffix(".json").write_text(json.dumps({"logit_softcap": SOFTCAP}))
    try:
        loaded = load_model(path)
        assert loaded.model(windows[:, :-1], windows[:, 1:]).item() == losses["set"]
        assert f"read from final_model.json: logit_softcap={SOFTCAP}" in loaded.notes
        assert loaded.cfg == SHAPE
    finally:
        path.with_suffix(".json").unlink()


def test_packing_keeps_the_override_and_the_dtype_through_the_submission_seam(official, tmp_path):
    path, state = official
    run = pack_checkpoint(path, "baseline-int8-zlib", tmp_path / "sub", BUNDLED_DATA, "track_10min_16mb",
                          model=ModelSpec(overrides={"logit_softcap": SOFTCAP}))
    config = json.loads((tmp_path / "sub" / "config.json").read_text())
    assert config["model"]["logit_softcap"] == SOFTCAP
    assert next(r for r in run.packed.rows if r["name"] == "tok_emb.weight")["dtype"] == "bfloat16"
    model, n, _ = load_submission_model(tmp_path / "sub", config)  # what run.py scores
    assert n == len(state)
    assert torch.equal(model.tok_emb.weight, challenge_int8_round_trip(state["tok_emb.weight"]).float())


def test_the_measurement_cache_keys_know_the_forward_not_just_the_weights(official):
    # prepare() keys calibration and measurement caches by the weights' hash and this digest: a
    # soft-cap given later must not reuse sensitivities probed with the default one
    path, _ = official
    capped = model_digest(load_model(path, ModelSpec(overrides={"logit_softcap": SOFTCAP})))
    assert capped == model_digest(load_model(path, ModelSpec(overrides={"logit_softcap": SOFTCAP})))
    assert capped != model_digest(load_model(path))
