"""Every model switch of ModelConfig : shapes, parameter names (which decide the
optimiser group), a few training steps on real tokens, checkpoint round trip, and a behavioural
check per switch that would fail if the switch did nothing or the wrong thing."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from artifact.runtime.errors import CheckpointError, ConfigError
from train.bundled import BUNDLED_DATA
from artifact.runtime.checkpoint import load_checkpoint, save_checkpoint
from artifact.runtime.embeddings import HashEmbedding
from artifact.runtime.layers import MLP, apply_partial_rotary, apply_rotary, exclusive_attention
from artifact.runtime.model import GPT, ModelConfig, baseline_state_dict_shapes, state_dict_shapes
from artifact.runtime.shards import load_tokens, resolve_data

pytestmark = pytest.mark.usefixtures("one_thread")

BOS = 1
TINY = dict(vocab_size=1024, num_layers=2, model_dim=64, num_heads=4, num_kv_heads=2)
DEEP = dict(num_layers=4)
EVERYTHING = dict(  # seed-004-like, with every other switch on too
    num_layers=6, mlp_mult=3, rope_dims=8, smear=True, smear_window=12, bigram_buckets=128, bigram_dim=16,
    trigram=True, skip_gates=True, mlp_act="leaky_relu2", ln_scale=True, xsa_last=-1, value_residual=True,
    attn_gate="sparse", ve_layers=[4, 5], ve_dim=16, recur_layers=[2, 3], recur_loops=2, recur_start_frac=0.5,
    parallel_from=4, init="orthogonal", mup_proj_scale=True, doc_mask=True,
)

# switch -> (ModelConfig overrides on TINY, names it adds to the baseline layout)
SWITCHES = {
    "partial_rope": (dict(rope_dims=8), set()),
    "smear": (dict(smear=True), {"smear.gate"}),
    "smear_window": (dict(smear=True, smear_window=12), {"smear.gate_weight", "smear.scale"}),
    "bigram": (dict(bigram_buckets=128, bigram_dim=16), {"bigram.embed.weight", "bigram.proj.weight"}),
    "trigram": (dict(bigram_buckets=128, bigram_dim=16, trigram=True), {"bigram.embed.weight", "bigram.proj.weight"}),
    "skip_gates": (dict(skip_gates=True), {"skip_gates"}),
    "mqa": (dict(num_kv_heads=1), set()),
    "mlp3_leaky_relu2": (dict(mlp_mult=3, mlp_act="leaky_relu2", mlp_leaky_slope=0.5), set()),
    "mlp4": (dict(mlp_mult=4), set()),
    "ln_scale": (dict(ln_scale=True), set()),
    "xsa_last2": (dict(DEEP, xsa_last=2), set()),
    "xsa_all": (dict(xsa_last=-1), set()),
    "value_residual": (dict(value_residual=True), {"blocks.1.attn.v_lambda"}),
    "attn_gate_full": (dict(attn_gate="full"), {"blocks.0.attn.gate_weight", "blocks.1.attn.gate_weight"}),
    "attn_gate_sparse": (dict(attn_gate="sparse"), {"blocks.0.attn.gate_weight", "blocks.1.attn.gate_weight"}),
    "value_embeddings": (dict(DEEP, ve_layers=[2, 3], ve_dim=16),
                         {"ve.embed.weight", "ve.proj.weight", "blocks.2.attn.ve_lambda", "blocks.3.attn.ve_lambda"}),
    "recurrence": (dict(DEEP, recur_layers=[1, 2], recur_loops=2, recur_start_step=4), set()),
    "parallel": (dict(DEEP, parallel_from=2), set()),
    "softcap_untied": (dict(logit_softcap=15.0, tie_embeddings=False), set()),
    "orthogonal_init": (dict(init="orthogonal"), set()),
    "orthogonal_mup": (dict(init="orthogonal", mup_proj_scale=True), set()),
    "q_gain": (dict(qk_gain_init=3.0), set()),
    "doc_mask": (dict(doc_mask=True), set()),
    "everything": (EVERYTHING, {
        "smear.gate_weight", "smear.scale", "bigram.embed.weight", "bigram.proj.weight", "skip_gates",
        "ve.embed.weight", "ve.proj.weight", "blocks.4.attn.ve_lambda", "blocks.5.attn.ve_lambda",
        *(f"blocks.{i}.attn.v_lambda" for i in range(1, 6)), *(f"blocks.{i}.attn.gate_weight" for i in range(6)),
    }),
}
PARAMETERLESS = [name for name, (_, added) in SWITCHES.items()
                 if not added and name not in ("mqa", "mlp4", "softcap_untied", "orthogonal_init", "orthogonal_mup", "q_gain")]


def config(**overrides) -> ModelConfig:
    return ModelConfig(**{**TINY, **overrides})


@pytest.fixture(scope="module")
def tokens() -> np.ndarray:
    data = resolve_data(BUNDLED_DATA)
    return load_tokens(data.train_files[:1]).astype(np.int64)


def batch(tokens, b=4, t=32, start=1000):
    """(inputs, targets) of b real windows of t tokens (the first ones hold a document start)."""
    rows = [tokens[start + i * 997: start + i * 997 + t + 1] for i in range(b)]
    x = torch.tensor(np.stack(rows))
    return x[:, :-1].contiguous(), x[:, 1:].contiguous()


def perturbed(model: GPT, seed: int = 1) -> GPT:
    """Every tensor pushed off its init (zero-initialised projections and gates included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


# ------------------------------------------------------------------ every switch: train + round trip

@pytest.mark.parametrize("name", sorted(SWITCHES))
def test_switch_shapes_names_training_and_round_trip(name, tokens, tmp_path):
    overrides, added = SWITCHES[name]
    cfg = config(**overrides)
    torch.manual_seed(0)
    model = GPT(cfg)
    shapes = {n: tuple(t.shape) for n, t in model.state_dict().items()}
    assert shapes == state_dict_shapes(cfg)
    assert set(shapes) - set(baseline_state_dict_shapes(cfg)) == added
    # Control tensors ("gate", "lambda", "smear", "skip": Adam scalar group) are not named like
    # the matrices that packing recipes quantize ("blocks.*.attn.*.weight").
    assert not [n for n in added if n.endswith(".weight") and any(c in n for c in ("gate", "lambda", "smear", "skip"))]
    for n in baseline_state_dict_shapes(cfg):  # the baseline tensors keep their shapes
        assert shapes[n] == baseline_state_dict_shapes(cfg)[n]

    x, y = batch(tokens)
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (4, 32, 1024) and bool(torch.isfinite(logits).all())
    assert float(logits.abs().max()) <= cfg.logit_softcap

    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    steps, first, touched = 12, None, set()
    params = dict(model.named_parameters())
    for step in range(steps):
        model.on_train_progress(step, step / steps)
        loss = model.loss(x, y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        touched |= {n for n, p in params.items() if p.grad is not None and bool(p.grad.abs().sum() > 0)}
        opt.step()
    model.on_train_progress(0, 1.0)
    model.eval()
    with torch.no_grad():
        last = model.loss(x, y).item()
    assert last < first - 0.3, f"{name}: loss {first:.3f} -> {last:.3f}"
    # Every parameter gets a gradient (DDP without find_unused_parameters needs that).
    assert touched == set(params), f"{name}: no gradient reached {sorted(set(params) - touched)}"

    save_checkpoint(tmp_path / "ckpt", model, cfg, {"switch": name})
    loaded, got_cfg, meta = load_checkpoint(tmp_path / "ckpt")
    assert got_cfg == cfg and meta == {"switch": name}
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("name", PARAMETERLESS)
def test_parameterless_switch_changes_the_function(name, tokens):
    """The same weights under the switch give different logits (so the switch is not a no-op)."""
    overrides, _ = SWITCHES[name]
    base_cfg = config(**{k: v for k, v in overrides.items() if k in ("num_layers", "mlp_mult")})
    torch.manual_seed(0)
    base = perturbed(GPT(base_cfg))
    switched = GPT(config(**overrides)).eval()
    switched.load_state_dict(base.state_dict(), strict=True)
    x = spliced(tokens) if name == "doc_mask" else batch(tokens)[0]
    with torch.no_grad():
        assert not torch.allclose(base(x), switched(x), atol=1e-4)


# ----------------------------------------------------------------------------- partial RoPE

def test_partial_rope_rotates_only_the_leading_dims():
    x = torch.randn(2, 4, 10, 16)
    freqs = torch.outer(torch.arange(10.0), 1.0 / 10000 ** (torch.arange(0, 8, 2) / 8))
    cos, sin = freqs.cos()[None, None], freqs.sin()[None, None]
    out = apply_partial_rotary(x, cos, sin, 8)
    assert torch.equal(out[..., 8:], x[..., 8:])
    assert torch.allclose(out[..., :8], apply_rotary(x[..., :8], cos, sin))
    assert not torch.allclose(out[..., :8], x[..., :8])


def test_rope_dims_equal_to_head_dim_is_the_baseline(tokens):
    torch.manual_seed(0)
    base = perturbed(GPT(config()))
    full = GPT(config(rope_dims=16)).eval()
    full.load_state_dict(base.state_dict())
    x, _ = batch(tokens)
    with torch.no_grad():
        assert torch.equal(base(x), full(x))


# ------------------------------------------------------------------------- documents and BOS

def bos_free(tokens, n, after):
    """n consecutive real tokens, from `after` on, holding no BOS."""
    start = after
    while BOS in tokens[start:start + n]:
        start += n
    return tokens[start:start + n]


def spliced(tokens, prefix_len=12, t=32):
    """A window: the tail of one real document, BOS, the start of another (real tokens)."""
    a = bos_free(tokens, prefix_len, 5000)
    b = bos_free(tokens, t - prefix_len - 1, 9000)
    return torch.tensor(np.concatenate([a, [BOS], b]))[None]


@pytest.mark.parametrize("window", [0, 12])
def test_smear_never_blends_a_bos_with_the_previous_document(window, tokens):
    torch.manual_seed(0)
    model = perturbed(GPT(config(smear=True, smear_window=window)))
    ids = spliced(tokens)  # BOS at position 12
    other = ids.clone()
    other[0, 11] = (other[0, 11] + 7) % 1024  # the previous document's last token
    with torch.no_grad():
        x0, x0_other = model.embed(ids), model.embed(other)
    assert torch.equal(x0[0, 12], x0_other[0, 12])  # BOS position: untouched by the fix
    assert not torch.allclose(x0[0, 11], x0_other[0, 11])
    # Sensitivity: a position that is not a document start does read its predecessor.
    other2 = ids.clone()
    other2[0, 12] = 5  # no longer a BOS: position 13 now smears in a changed token
    other2_prev = other2.clone()
    other2_prev[0, 12] = 6
    with torch.no_grad():
        assert not torch.allclose(model.embed(other2)[0, 13], model.embed(other2_prev)[0, 13])


def test_hash_embedding_uses_the_reserved_row_at_document_starts():
    table = HashEmbedding(buckets=64, dim=4, model_dim=8, trigram=True, bos_id=BOS)
    ids = torch.tensor([[7, 8, 9, BOS, 10, 11, 12]])
    bi, tri = table.bucket_ids(ids, 2), table.bucket_ids(ids, 3)
    reserved = 63
    assert bi[0].tolist()[0] == reserved and bi[0, 3] == reserved and (bi[0, [1, 2, 4, 5, 6]] < reserved).all()
    assert tri[0, :2].tolist() == [reserved, reserved] and tri[0, 3] == reserved and tri[0, 4] == reserved
    assert (tri[0, [2, 5, 6]] < reserved).all()
    # The n-gram at position 5 depends on its own document's tokens only.
    other = ids.clone()
    other[0, 2] = 99
    assert torch.equal(table.bucket_ids(other, 3)[0, 4:], tri[0, 4:])


DOC_SWITCHES = dict(doc_mask=True, smear=True, bigram_buckets=128, bigram_dim=16, trigram=True,
                    ve_layers=[1], ve_dim=16, value_residual=True)


@pytest.mark.parametrize("extra", [{}, DOC_SWITCHES], ids=["doc_mask", "doc_mask+context_switches"])
def test_doc_mask_isolates_documents(extra, tokens):
    cfg = config(**{"doc_mask": True, **extra})
    torch.manual_seed(0)
    model = perturbed(GPT(cfg))
    ids = spliced(tokens)
    other = ids.clone()
    other[0, :12] = torch.tensor(bos_free(tokens, 12, 20000))  # a different previous document
    alone = ids[:, 12:]  # the second document on its own
    with torch.no_grad():
        out, out_other, out_alone = model(ids), model(other), model(alone)
    assert torch.equal(out[0, 12:], out_other[0, 12:])
    assert not torch.allclose(out[0, :12], out_other[0, :12])
    # RoPE is relative, so the packed document scores as if it stood alone.
    assert torch.allclose(out[0, 12:], out_alone[0], atol=1e-4)
    # Control: without the mask the first document leaks into the second.
    leaky = GPT(ModelConfig(**{**cfg.to_dict(), "doc_mask": False})).eval()
    leaky.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert not torch.allclose(leaky(ids)[0, 12:], leaky(other)[0, 12:], atol=1e-4)


def test_doc_mask_without_bos_matches_the_causal_path(tokens):
    torch.manual_seed(0)
    base = perturbed(GPT(config()))
    masked = GPT(config(doc_mask=True)).eval()
    masked.load_state_dict(base.state_dict())
    x = torch.tensor(bos_free(tokens, 32, 5000))[None]
    with torch.no_grad():
        assert torch.allclose(base(x), masked(x), atol=1e-5)


# ---------------------------------------------------------------------------- depth recurrence

def block_calls(model, x):
    counts = [0] * len(model.blocks)
    hooks = [b.register_forward_hook(lambda m, i, o, k=k: counts.__setitem__(k, counts[k] + 1))
             for k, b in enumerate(model.blocks)]
    with torch.no_grad():
        out = model(x)
    for h in hooks:
        h.remove()
    return counts, out


def test_recurrence_schedule_and_toggle(tokens):
    cfg = config(num_layers=4, recur_layers=[1, 2], recur_loops=2, recur_start_step=10, recur_start_frac=0.25)
    assert cfg.layer_schedule() == [0, 1, 2, 1, 2, 1, 2, 3]
    assert cfg.layer_schedule(recurrence=False) == [0, 1, 2, 3]
    seed004 = ModelConfig(num_layers=11, recur_layers=[3, 4, 5], recur_loops=2)
    assert len(seed004.layer_schedule()) == 17
    torch.manual_seed(0)
    model = perturbed(GPT(cfg))
    x, _ = batch(tokens, b=1)
    assert model.recurrence_active  # a freshly built (evaluated, packed) model is in the final state
    active_calls, active_out = block_calls(model, x)
    assert active_calls == [1, 3, 3, 1]
    for step, frac, on in [(0, 0.0, False), (10, 0.2, False), (9, 0.5, False), (10, 0.25, True), (0, 1.0, True)]:
        model.on_train_progress(step, frac)
        assert model.recurrence_active is on, (step, frac)
    model.on_train_progress(3, 0.1)
    calls, out = block_calls(model, x)
    assert calls == [1, 1, 1, 1]
    assert not torch.allclose(out, active_out)
    model.on_train_progress(0, 1.0)
    assert torch.equal(block_calls(model, x)[1], active_out)


def test_on_train_progress_is_a_no_op_without_recurrence(tokens):
    torch.manual_seed(0)
    model = perturbed(GPT(config()))
    x, _ = batch(tokens, b=1)
    with torch.no_grad():
        before = model(x)
        model.on_train_progress(0, 0.0)
        assert torch.equal(model(x), before)


# ------------------------------------------------------------------------ attention and MLP parts

def test_xsa_output_is_orthogonal_to_the_own_value_vector():
    y, v = torch.randn(2, 4, 6, 8), torch.randn(2, 2, 6, 8)
    out = exclusive_attention(y, v)
    for h in range(4):  # query head h reads KV head h // 2
        dots = (out[:, h] * v[:, h // 2]).sum(-1)
        assert torch.allclose(dots, torch.zeros_like(dots), atol=1e-5)
    assert not torch.allclose(out, y)


def test_xsa_layers():
    cfg = config(num_layers=4, xsa_last=2)
    assert [cfg.xsa_layer(i) for i in range(4)] == [False, False, True, True]
    assert all(config(xsa_last=-1).xsa_layer(i) for i in range(2))
    assert not any(config().xsa_layer(i) for i in range(2))
    model = GPT(cfg)
    assert [b.attn.xsa for b in model.blocks] == [False, False, True, True]


def test_leaky_relu_squared_mlp():
    cfg = config(mlp_mult=3, mlp_act="leaky_relu2", mlp_leaky_slope=0.5)
    mlp = MLP(cfg)
    torch.nn.init.normal_(mlp.proj.weight)
    x = torch.randn(3, 64)
    h = x @ mlp.fc.weight.T
    expected = torch.where(h > 0, h, 0.5 * h).square() @ mlp.proj.weight.T
    assert mlp.fc.weight.shape == (192, 64)
    assert torch.allclose(mlp(x), expected, atol=1e-5)


def test_ln_scale_and_parallel_flags():
    model = GPT(config(num_layers=4, ln_scale=True, parallel_from=2))
    assert [b.ln_scale for b in model.blocks] == pytest.approx([1 / math.sqrt(i + 1) for i in range(4)])
    assert [b.parallel for b in model.blocks] == [False, False, True, True]
    assert all(b.ln_scale is None and not b.parallel for b in GPT(config()).blocks)


def test_orthogonal_and_mup_init():
    torch.manual_seed(0)
    model = GPT(config(init="orthogonal"))
    w = model.blocks[0].attn.c_q.weight
    assert torch.allclose(w @ w.T, torch.eye(64), atol=1e-4)
    assert torch.count_nonzero(model.blocks[0].attn.proj.weight) == 0  # still zero without muP
    model = GPT(config(num_layers=4, init="orthogonal", mup_proj_scale=True))
    s = torch.linalg.svdvals(model.blocks[1].mlp.proj.weight)
    assert torch.allclose(s, torch.full_like(s, 1 / math.sqrt(8)), atol=1e-4)


def test_gated_skip_blends_with_learned_gate(tokens):
    torch.manual_seed(0)
    model = perturbed(GPT(config(skip_gates=True)))
    x, _ = batch(tokens, b=1)
    with torch.no_grad():
        before = model(x)
        model.skip_gates.fill_(30.0)  # gate ~1: the skip is ignored
        no_skip = model(x)
        model.skip_weights.zero_()
        assert torch.allclose(model(x), no_skip, atol=1e-5)
        assert not torch.allclose(before, no_skip, atol=1e-4)


# -------------------------------------------------------------------------------- bad configs

BAD_CONFIGS = [
    (dict(rope_dims=7), "rope_dims"), (dict(rope_dims=18), "rope_dims"),
    (dict(smear_window=4), "smear_window"), (dict(smear=True, smear_window=65), "smear_window"),
    (dict(bigram_buckets=1), "bigram_buckets"), (dict(trigram=True), "trigram"),
    (dict(mlp_act="gelu"), "mlp_act"), (dict(mlp_leaky_slope=1.5), "mlp_leaky_slope"),
    (dict(xsa_last=3), "xsa_last"), (dict(xsa_last=-2), "xsa_last"),
    (dict(attn_gate="dense"), "attn_gate"), (dict(attn_gate="sparse", attn_gate_window=0), "attn_gate_window"),
    (dict(attn_gate="sparse", attn_gate_window=65), "attn_gate_window"),
    (dict(ve_layers=[2]), "ve_layers"), (dict(ve_layers=[1, 1]), "ve_layers"), (dict(ve_layers=["1"]), "ve_layers"),
    (dict(recur_layers=[1, 2]), "recur_layers"), (dict(num_layers=4, recur_layers=[1, 3]), "recur_layers"),
    (dict(num_layers=4, recur_layers=[1], recur_loops=0), "recur_loops"),
    (dict(num_layers=4, recur_layers=[1], recur_start_frac=1.5), "recur_start_frac"),
    (dict(recur_start_step=100), "recur_start_step"),
    (dict(parallel_from=2), "parallel_from"), (dict(init="xavier"), "init"),
    (dict(mup_proj_scale=True), "mup_proj_scale"), (dict(bos_id=1024), "bos_id"),
    (dict(num_layers=1, value_residual=True), "value_residual"), (dict(num_kv_heads=3), "num_kv_heads"),
]


def test_unused_switch_settings_do_not_constrain_small_models():
    cfg = ModelConfig(vocab_size=64, num_layers=1, model_dim=8, num_heads=2, num_kv_heads=1)
    assert cfg.attn_gate_window > cfg.model_dim  # only checked when the sparse gate is on
    assert GPT(cfg)(torch.zeros(1, 4, dtype=torch.long)).shape == (1, 4, 64)


@pytest.mark.parametrize("overrides,key", BAD_CONFIGS, ids=[k for _, k in BAD_CONFIGS])
def test_bad_combinations_raise_config_error_naming_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key):
        config(**overrides)


# -------------------------------------------------------------------------------- checkpoints

def test_config_json_round_trip_keeps_lists_and_switches(tmp_path):
    cfg = config(**EVERYTHING)
    assert cfg.recur_layers == (2, 3) and cfg.ve_layers == (4, 5)
    again = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "c", GPT(cfg), cfg, {})
    saved = json.loads((tmp_path / "c" / "config.json").read_text())["model"]
    assert saved["recur_layers"] == [2, 3] and saved["attn_gate"] == "sparse"
    assert load_checkpoint(tmp_path / "c")[1] == cfg


def test_switch_checkpoint_without_config_asks_for_it(tmp_path):
    cfg = config(bigram_buckets=64, bigram_dim=8)
    torch.manual_seed(0)
    torch.save(GPT(cfg).state_dict(), tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match=r"bare\.pt.*bigram\.embed\.weight.*config\.json"):
        load_checkpoint(tmp_path / "bare.pt")


def test_switch_tensors_must_match_the_config(tmp_path):
    cfg = config(value_residual=True)
    torch.manual_seed(0)
    folder = save_checkpoint(tmp_path / "c", GPT(cfg), cfg, {})
    data = json.loads((folder / "config.json").read_text())
    data["model"]["value_residual"] = False
    (folder / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="blocks.1.attn.v_lambda"):
        load_checkpoint(folder)
