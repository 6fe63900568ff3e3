"""QAT: the fake-quantized weights are exactly what the packer decodes, the forward during QAT
is the forward of the decoded model, gradients reach the master weights, and a late-QAT run
works end to end (and quantizes with less damage than a run without it)."""

from __future__ import annotations


import pytest
import torch

from artifact.runtime.errors import ConfigError
from artifact.pack import pack_state_dict
from artifact.quant import quantize_tensor
from artifact.recipe import load_recipe
from artifact.runtime.scoring import eval_flat
from train.loop import prepare_data, train
from artifact.runtime.model import GPT
from train.presets import load_preset
from train.qat import FakeQuantizer, fake_quantize


def _tiny_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(load_preset("tiny-cpu").model)
    with torch.no_grad():  # zero-initialised projections would quantize trivially
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.05)
    return model


def test_fake_quantized_weights_equal_the_packers_decoded_weights():
    model = _tiny_model()
    recipe = load_recipe("seed-003")
    fq = FakeQuantizer(model, recipe)
    state = {n: t.detach().clone() for n, t in model.state_dict().items()}
    decoded = pack_state_dict(state, recipe, predict_sizes=False).dequantized
    expected = {n for n, t in state.items() if t.ndim == 2 and (".attn." in n or ".mlp." in n or n == "tok_emb.weight")}
    assert set(fq.names) == expected
    fq.swap_in()
    for name in fq.names:
        assert torch.equal(model.state_dict()[name], decoded[name]), name
    fq.restore()
    for name, t in model.state_dict().items():
        assert torch.equal(t, state[name]), name


def test_qat_forward_is_the_decoded_models_forward_and_grads_reach_masters():
    model = _tiny_model(1)
    fq = FakeQuantizer(model, load_recipe("seed-003"))
    masters = {n: p.detach().clone() for n, p in model.named_parameters()}
    decoded_model = _tiny_model(1)
    decoded_model.load_state_dict(pack_state_dict(
        {n: t.detach().clone() for n, t in model.state_dict().items()}, load_recipe("seed-003"),
        predict_sizes=False).dequantized, strict=False)
    ids = torch.randint(0, 1024, (2, 64), generator=torch.Generator().manual_seed(0))
    x, y = ids[:, :-1], ids[:, 1:]

    fq.swap_in()
    loss = model.loss(x, y)
    loss.backward()
    fq.restore()
    ref = decoded_model.loss(x, y)
    ref.backward()
    assert loss.item() == ref.item()  # bit-identical forward
    grads = dict(decoded_model.named_parameters())
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), masters[name]), name  # masters restored
        assert p.grad is not None and torch.allclose(p.grad, grads[name].grad, atol=1e-7), name
    # the master weights themselves are not on the grid: QAT moved only the forward
    assert not torch.equal(masters["blocks.0.attn.c_q.weight"], decoded_model.state_dict()["blocks.0.attn.c_q.weight"])


def test_gptq_and_hessian_rules_fake_quantize_by_rounding():
    model = _tiny_model(2)
    recipe = load_recipe("seed-004")  # GPTQ int6 sdclip matrices, GPTQ int8 embedding
    fq = FakeQuantizer(model, recipe)
    target = next(t for t in fq.targets if t.name == "blocks.0.mlp.fc.weight")
    assert target.spec.bits == 6 and target.spec.clip.kind == "sdclip"
    w = target.param.detach()
    assert torch.equal(fake_quantize(w, target.spec), quantize_tensor(w, target.spec).dequantize())
    assert fq.quantization_error() > 0


def test_unknown_qat_recipe_fails_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="qat_recipe"):
        train("tiny-cpu", None, tmp_path / "never", {"qat_recipe": "no-such-recipe"})
    assert not (tmp_path / "never").exists()


def _packed_gap(out, recipe_name: str) -> float:
    """val loss of the packed (decoded) weights minus the float weights', on bundled val tokens."""
    from artifact.runtime.checkpoint import load_checkpoint

    model, _, _ = load_checkpoint(out)
    data = prepare_data(None, 1024)
    tokens = data.val_tokens[:16_385]
    before = eval_flat(model, tokens, data.counter, 64, 64, "cpu").val_loss
    state = {n: t.detach().clone() for n, t in model.state_dict().items()}
    model.load_state_dict(pack_state_dict(state, load_recipe(recipe_name), predict_sizes=False).dequantized, strict=False)
    after = eval_flat(model, tokens, data.counter, 64, 64, "cpu").val_loss
    return after - before


@pytest.mark.slow
def test_late_qat_run_turns_on_and_shrinks_the_packing_gap(tmp_path, small_data):
    recipe = tmp_path / "int3.toml"  # a coarse grid, so the gap is large enough to measure
    recipe.write_text('name = "int3"\n[[rules]]\nmatch = ["blocks.*.attn.*.weight", "blocks.*.mlp.*.weight"]\n'
                      'bits = 3\nclip = "absmax"\n')
    common = {"iterations": 30, "val_every": 0, "val_tokens": 4096}
    train("tiny-cpu", small_data, tmp_path / "plain", common)
    figures = train("tiny-cpu", small_data, tmp_path / "qat", {**common, "qat_recipe": str(recipe), "qat_start_fraction": 0.5})
    log = (tmp_path / "qat/train_log.txt").read_text()
    assert "qat:on step:15" in log and "qat_tensors:12" in log
    assert figures["val_bpb"] < figures["unigram_bpb"]
    assert _packed_gap(tmp_path / "qat", str(recipe)) < _packed_gap(tmp_path / "plain", str(recipe))
