"""The GPT against the challenge's published baseline (artifact/docs/baseline.md) and the checkpoint loader.

"Same loss as the baseline" is checked against an independent functional forward written here
from that description, not by re-running the module's own code.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from artifact.runtime.errors import CheckpointError
from artifact.runtime.checkpoint import load_checkpoint, save_checkpoint
from artifact.runtime.model import GPT, ModelConfig, baseline_state_dict_shapes, count_parameters


def published_shapes(layers=9, d=512, vocab=1024, heads=8, kv_dim=256, hidden=1024):
    """The state-dict table of artifact/docs/baseline.md, typed in independently of artifact.runtime.model."""
    shapes = {"tok_emb.weight": (vocab, d), "skip_weights": (min(layers // 2, layers - layers // 2), d)}
    for i in range(layers):
        shapes.update({
            f"blocks.{i}.attn_scale": (d,), f"blocks.{i}.mlp_scale": (d,), f"blocks.{i}.resid_mix": (2, d),
            f"blocks.{i}.attn.q_gain": (heads,), f"blocks.{i}.attn.c_q.weight": (d, d),
            f"blocks.{i}.attn.c_k.weight": (kv_dim, d), f"blocks.{i}.attn.c_v.weight": (kv_dim, d),
            f"blocks.{i}.attn.proj.weight": (d, d), f"blocks.{i}.mlp.fc.weight": (hidden, d),
            f"blocks.{i}.mlp.proj.weight": (d, hidden),
        })
    return shapes


def random_state(shapes, seed=0, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=g) * scale for n, s in shapes.items()}


# ------------------------------------------------------------------------------ baseline layout

def test_default_model_matches_published_state_dict_and_param_count():
    model = GPT(ModelConfig())
    got = {n: tuple(t.shape) for n, t in model.state_dict().items()}
    assert got == published_shapes()
    assert got == baseline_state_dict_shapes()
    assert count_parameters(model) == 17_059_912
    assert all(t.dtype == torch.float32 for t in model.state_dict().values())


def test_published_state_dict_loads_strict():
    model = GPT(ModelConfig())
    state = random_state(published_shapes())
    model.load_state_dict(state, strict=True)
    assert torch.equal(model.blocks[8].mlp.proj.weight, state["blocks.8.mlp.proj.weight"])


# ------------------------------------------------------------------ independent functional forward

def rms(x):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + torch.finfo(x.dtype).eps)


def rope(x, base):
    """Rotate pairs (i, i + half) of the head dim by angle -t / base^(2i/hd) (the baseline's sign)."""
    t, hd = x.size(-2), x.size(-1)
    half = hd // 2
    angle = torch.arange(t, dtype=torch.float32)[:, None] / base ** (torch.arange(half, dtype=torch.float32) * 2 / hd)
    c, s = angle.cos(), angle.sin()
    a, b = x[..., :half], x[..., half:]
    return torch.cat((a * c + b * s, b * c - a * s), dim=-1)


def reference_loss(sd, cfg: ModelConfig, ids, targets):
    """The baseline written out: embed → rmsnorm = x0; U-Net of blocks (resid_mix, attn, relu² MLP, scales);
    final rmsnorm; tied/untied head; c·tanh(z/c) (c = cfg.logit_softcap, 30 in the baseline); mean
    cross-entropy."""
    h, kvh, hd = cfg.num_heads, cfg.num_kv_heads, cfg.model_dim // cfg.num_heads
    x = x0 = rms(sd["tok_emb.weight"][ids])
    bsz, t, _ = x.shape

    def block(i, x):
        p = lambda n: sd[f"blocks.{i}.{n}"]
        x = p("resid_mix")[0] * x + p("resid_mix")[1] * x0
        y = rms(x)
        q = (y @ p("attn.c_q.weight").T).view(bsz, t, h, hd).transpose(1, 2)
        k = (y @ p("attn.c_k.weight").T).view(bsz, t, kvh, hd).transpose(1, 2)
        v = (y @ p("attn.c_v.weight").T).view(bsz, t, kvh, hd).transpose(1, 2)
        q = rope(rms(q), cfg.rope_base) * p("attn.q_gain")[None, :, None, None]
        k = rope(rms(k), cfg.rope_base)
        group = h // kvh  # query head j reads KV head j // group
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
        scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
        att = (scores.softmax(-1) @ v).transpose(1, 2).reshape(bsz, t, h * hd)
        x = x + p("attn_scale") * (att @ p("attn.proj.weight").T)
        m = torch.relu(rms(x) @ p("mlp.fc.weight").T) ** 2
        return x + p("mlp_scale") * (m @ p("mlp.proj.weight").T)

    n_enc = cfg.num_layers // 2
    skips = []
    for i in range(n_enc):
        x = block(i, x)
        skips.append(x)
    for j in range(cfg.num_layers - n_enc):
        if skips:
            x = x + sd["skip_weights"][j] * skips.pop()
        x = block(n_enc + j, x)
    head = sd.get("lm_head.weight", sd["tok_emb.weight"])
    logits = rms(x) @ head.T
    cap = cfg.logit_softcap
    logits = cap * torch.tanh(logits / cap)
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


def perturbed_state(model: GPT, seed: int):
    """The model's weights with every tensor (control tensors too) pushed off its init."""
    g = torch.Generator().manual_seed(seed)
    return {n: t + 0.1 * torch.randn(t.shape, generator=g) for n, t in model.state_dict().items()}


@pytest.mark.parametrize("layers,tied", [(4, True), (5, False)])
def test_loss_matches_independent_reference(layers, tied):
    cfg = ModelConfig(vocab_size=97, num_layers=layers, model_dim=64, num_heads=4, num_kv_heads=2,
                      mlp_mult=3, tie_embeddings=tied)
    torch.manual_seed(0)
    model = GPT(cfg)
    state = perturbed_state(model, 1)
    model.load_state_dict(state)
    ids = torch.randint(0, 97, (2, 33))
    targets = torch.randint(0, 97, (2, 33))
    with torch.no_grad():
        ours = model.loss(ids, targets).item()
        ref = reference_loss(state, cfg, ids, targets).item()
    assert ours == pytest.approx(ref, rel=1e-5, abs=1e-5)
    assert abs(ours - math.log(97)) > 0.05  # the weights are not a trivial uniform predictor


# ----------------------------------------------------------------------------- checkpoints

def test_challenge_final_model_pt_loads_without_flags(tmp_path):
    """A bare state dict with the published names (no config JSON) infers ModelConfig()."""
    path = tmp_path / "final_model.pt"
    torch.save(random_state(published_shapes()), path)
    model, cfg, meta = load_checkpoint(path)
    assert cfg == ModelConfig()
    assert meta.get("config_inferred") is True
    assert not model.training


def test_config_inferred_from_shapes_of_small_untied_model(tmp_path):
    cfg = ModelConfig(vocab_size=300, num_layers=3, model_dim=96, num_heads=3, num_kv_heads=1, mlp_mult=3,
                      tie_embeddings=False)
    torch.manual_seed(0)
    model = GPT(cfg)
    model.load_state_dict(perturbed_state(model, 2))
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    loaded, got_cfg, _ = load_checkpoint(tmp_path / "weights.pt")
    assert got_cfg == cfg
    ids = torch.randint(0, 300, (1, 20))
    with torch.no_grad():
        assert torch.equal(model.loss(ids, ids), loaded.loss(ids, ids))


def test_save_load_round_trip_and_deterministic_bytes(tmp_path):
    cfg = ModelConfig(vocab_size=128, num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1)
    torch.manual_seed(3)
    model = GPT(cfg)
    meta = {"preset": "unit", "step": 7, "val_bpb": 1.5}
    save_checkpoint(tmp_path / "a", model, cfg, meta)
    save_checkpoint(tmp_path / "b", model, cfg, meta)
    assert (tmp_path / "a/model.pt").read_bytes() == (tmp_path / "b/model.pt").read_bytes()
    loaded, got_cfg, got_meta = load_checkpoint(tmp_path / "a")
    assert got_cfg == cfg and got_meta == meta
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name])
    # A .pt file next to its config.json resolves the config too.
    assert load_checkpoint(tmp_path / "a" / "model.pt")[1] == cfg


SMALL = ModelConfig(vocab_size=64, num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1)


def _write_small(tmp_path, mutate, with_config=True):
    torch.manual_seed(0)
    model = GPT(SMALL)
    folder = save_checkpoint(tmp_path / "ckpt", model, SMALL, {})
    state = dict(model.state_dict())
    mutate(state)
    torch.save(state, folder / "model.pt")
    if not with_config:
        (folder / "config.json").unlink()
    return folder


def _set(name, value):
    def mutate(state):
        state[name] = value
    return mutate


BAD_STATES = {
    "missing": (lambda s: s.pop("blocks.1.mlp.fc.weight"), "blocks.1.mlp.fc.weight"),
    "extra": (_set("blocks.0.attn.extra_gate", torch.zeros(4)), "blocks.0.attn.extra_gate"),
    "misshapen": (_set("blocks.0.attn.c_k.weight", torch.zeros(8, 32)), "blocks.0.attn.c_k.weight"),
    "nan": (_set("blocks.1.attn_scale", torch.full((32,), float("nan"))), "blocks.1.attn_scale"),
    "inf": (_set("skip_weights", torch.full((1, 32), float("inf"))), "skip_weights"),
    "int_dtype": (_set("blocks.0.attn.q_gain", torch.ones(2, dtype=torch.int64)), "blocks.0.attn.q_gain"),
}


@pytest.mark.parametrize("case", sorted(BAD_STATES))
@pytest.mark.parametrize("with_config", [True, False])
def test_bad_tensors_raise_checkpoint_error_naming_file_and_tensor(tmp_path, case, with_config):
    mutate, tensor_name = BAD_STATES[case]
    folder = _write_small(tmp_path, mutate, with_config)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(folder)
    assert "model.pt" in str(err.value)
    assert tensor_name in str(err.value)


def test_misshapen_error_gives_expected_and_actual_shape(tmp_path):
    folder = _write_small(tmp_path, _set("blocks.0.mlp.fc.weight", torch.zeros(63, 32)))
    with pytest.raises(CheckpointError, match=r"\(63, 32\).*\(64, 32\)"):
        load_checkpoint(folder)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04garbage"])
def test_garbage_file_raises_checkpoint_error(tmp_path, content):
    path = tmp_path / "junk.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_checkpoint(path)


def test_non_state_dict_pickle_raises(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(CheckpointError, match="list.pt.*state dict"):
        load_checkpoint(path)


@pytest.mark.parametrize("text,needle", [
    ("{not json", "malformed"),
    (json.dumps({"model": {"num_layers": 2, "colour": "red"}}), "colour"),
    (json.dumps({"model": {}, "meta": {}, "extra": 1}), "extra"),
    (json.dumps([1, 2]), "JSON object"),
])
def test_bad_config_json_raises_checkpoint_error(tmp_path, text, needle):
    folder = _write_small(tmp_path, lambda s: None)
    (folder / "config.json").write_text(text)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(folder)
    assert "config.json" in str(err.value) and needle in str(err.value)


def test_missing_checkpoint_path(tmp_path):
    with pytest.raises(CheckpointError, match="no such"):
        load_checkpoint(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="model.pt"):
        load_checkpoint(tmp_path / "empty")
