"""The entry points of an exported codec: `collect_hessians`, `pack`, `unpack` (+ `calibration_batches`).

`golf export` (artifact/export.py) ships this module, with the exported recipe assigned to
`RECIPE`, together with exactly the packer and decoder code these functions reach — so an
exported `pack` is `golf pack`'s packing and an exported `unpack` is the shipped decoder, not a
second implementation. Inside the project `RECIPE` is None and each function takes the recipe as
an argument.
"""

from __future__ import annotations

from artifact.calibrate import batches_from_tokens
from artifact.container import build_blob
from artifact.pack import hessians_for_recipe, pack_entries
from artifact.runtime.decoder import decode_torch
from artifact.runtime.errors import ConfigError

RECIPE = None  # an exported codec's recipe (a recipe.Recipe); set by the export


def _recipe(recipe):
    recipe = recipe or RECIPE
    if recipe is None:
        raise ConfigError("no recipe: pass recipe= (only an exported codec has one built in)")
    return recipe


def calibration_batches(tokens, recipe=None):
    """The calibration batches `golf pack` uses: the recipe's `n_seqs` windows of `seq_len`
    tokens from `tokens` (a 1-D token array, e.g. a train shard), from `offset`, `batch_size` a
    batch (the `[calibration]` table)."""
    c = _recipe(recipe).calibration
    return batches_from_tokens(tokens, c.n_seqs, c.seq_len, c.batch_size, c.offset)


def collect_hessians(model, batches, output_input=None, recipe=None):
    """{weight name: X^T X} of every nn.Linear's input over `batches` (token-id tensors, (B, T)),
    as `golf pack` calibrates. `output_input(ids)` returns the input of a tied output projection
    (golf's GPT: `model.hidden`); its X^T X goes under the recipe's calibration `output_key`.
    Other 2-D parameters that no linear layer reads map to None (GPTQ rules round them to
    nearest)."""
    return hessians_for_recipe(model, _recipe(recipe), batches, output_input)


def pack(state_dict, hessians=None, recipe=None) -> bytes:
    """The artifact bytes of `state_dict` under the recipe (golf's container format,
    artifact/docs/container.md); `hessians` from `collect_hessians` when the recipe needs them."""
    return build_blob(pack_entries(state_dict, _recipe(recipe), hessians))


def unpack(blob) -> dict:
    """Every tensor of an artifact (bytes or a path) as a torch tensor in its original dtype,
    each checked against its hash."""
    return decode_torch(blob)
