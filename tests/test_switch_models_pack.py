"""The packer and the fit on a model with the seeds' switches: extra embedding tables (bigram hash,
value embeddings) have no Hessian — no linear layer reads them — so a GPTQ rule rounds them to
nearest and the fit measures only round-to-nearest candidates for them."""

from __future__ import annotations

import pytest
import torch

from artifact.runtime.errors import ConfigError
from artifact.measure import Grid, measure_tensor
from artifact.pack import calibrate_for_recipe, pack_state_dict
from artifact.quant import quantize_tensor
from artifact.recipe import parse_recipe
from tests.helpers import bundled_model_and_tokens
from artifact.runtime.model import GPT, ModelConfig

pytestmark = pytest.mark.usefixtures("one_thread")

RECIPE = {"name": "gptq-all", "rules": [{"match": "*", "ndim": 2, "min_numel": 4096, "bits": 6,
                                         "clip": "sdclip:12.85", "gptq": True}],
          "calibration": {"seq_len": 64, "n_seqs": 8, "batch_size": 4}}


@pytest.fixture(scope="module")
def switched():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=1024, num_layers=2, model_dim=64, num_heads=2, num_kv_heads=1,
                      bigram_buckets=128, bigram_dim=64, ve_layers=[1], ve_dim=64, smear=True)
    model = GPT(cfg).eval()
    _, tokens = bundled_model_and_tokens()
    recipe = parse_recipe(RECIPE)
    hessians = calibrate_for_recipe(model, recipe, tokens, model.hidden)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return state, recipe, hessians


def test_tables_without_a_hessian_are_rounded_under_a_gptq_rule(switched):
    state, recipe, hessians = switched
    assert hessians["bigram.embed.weight"] is None and hessians["blocks.0.attn.c_q.weight"] is not None
    packed = pack_state_dict(state, recipe, hessians)
    plan = recipe.plan({"bigram.embed.weight": state["bigram.embed.weight"]})["bigram.embed.weight"]
    rtn = quantize_tensor(state["bigram.embed.weight"].float(), plan.spec).dequantize().float()
    assert torch.equal(packed.dequantized["bigram.embed.weight"].float(), rtn)
    # a linear weight is still GPTQ'd (different from plain rounding)
    q_plan = recipe.plan({"blocks.0.attn.c_q.weight": state["blocks.0.attn.c_q.weight"]})["blocks.0.attn.c_q.weight"]
    rtn_q = quantize_tensor(state["blocks.0.attn.c_q.weight"].float(), q_plan.spec).dequantize().float()
    assert not torch.equal(packed.dequantized["blocks.0.attn.c_q.weight"].float(), rtn_q)


def test_no_calibration_at_all_is_still_an_error(switched):
    state, recipe, _ = switched
    with pytest.raises(ConfigError, match="needs calibration Hessians"):
        pack_state_dict(state, recipe, None)


def test_measure_offers_only_rounding_for_a_table_without_a_hessian(switched):
    state, _, _ = switched
    labels = ["int6/sdclip:8/gptq/r0/p0/ans", "int6/sdclip:8/rtn/r0/p0/ans"]
    out = measure_tensor("bigram.embed.weight", state["bigram.embed.weight"], None, Grid(), labels)
    assert list(out) == ["int6/sdclip:8/rtn/r0/p0/ans"]


def test_measure_finishes_on_a_model_with_tables_and_offers_them_rounding_only(switched):
    from artifact.measure import measure

    state, _, hessians = switched
    grid = Grid(bits=(4, 6), clips=("sdclip:8",), gptq=(False, True), lqer_ranks=(0, 2), codecs=("ans",),
                prunes=(0.0,))
    m = measure(state, hessians, grid)  # used to loop forever on a table with no Hessian
    table = m.tensors["bigram.embed.weight"].candidates
    assert table and all("/rtn/" in label for label in table)
    assert any("/gptq/" in label for label in m.tensors["blocks.0.attn.c_q.weight"].candidates)


def test_a_missing_linear_hessian_is_still_an_error(switched):
    state, recipe, hessians = switched
    partial = {k: v for k, v in hessians.items() if k != "blocks.0.attn.c_q.weight"}
    with pytest.raises(ConfigError, match=r"blocks\.0\.attn\.c_q\.weight needs a Hessian"):
        pack_state_dict(state, recipe, partial)
