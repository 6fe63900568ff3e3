"""The model contract: the one way golf runs a model, its own GPT and a user's module alike.

A model is a `torch.nn.Module` called as in the challenge's train_gpt.py:

    model(input_ids, target_ids)                    -> mean cross-entropy in nats (0-d tensor)
    model(input_ids, target_ids, reduction="none")  -> per-token losses (B, T), optional

A model offers per-token losses when its `forward` has a parameter named `reduction`. Flat eval
needs only the mean (a flat window scores every target, so its sum is mean x count); sliding
windows and test-time training score or train part of a window and need per-token losses.
Calibration, sensitivity probes, the eval, TTT and verify all call the model through here.

A user's model is built by a factory `NAME` in a Python file (a class or a function returning
the module), called with the keyword arguments of its config, plus `checkpoint` (a path when
packing or scoring a checkpoint, None in a submission) when it declares that parameter.
"""

import importlib.util
import inspect
import os
import sys

import torch
from torch import nn

from .errors import CheckpointError, ConfigError

USER_MODULE_PREFIX = "golf_user_"  # sys.modules name of a loaded model file: golf_user_<stem>


def per_token(model):
    """Whether `model(x, y, reduction="none")` gives per-token losses."""
    try:
        return "reduction" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def mean_loss(model, x, y):
    """The model's mean cross-entropy over the targets `y` (a 0-d float32 tensor)."""
    out = model(x, y)
    if not isinstance(out, torch.Tensor) or out.dim() != 0:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise CheckpointError(f"model(input_ids, target_ids) returned {got}; the contract is the mean "
                              "cross-entropy, a 0-d tensor")
    return out.float()


def require_per_token(model, why):
    """ConfigError unless the model gives per-token losses (`why`: what needs them)."""
    if not per_token(model):
        raise ConfigError(f"per-token losses are needed for {why}, but {type(model).__name__}.forward has no "
                          "`reduction` argument (it gives only the mean loss: flat eval works, this does not)")


def token_losses(model, x, y, why="sliding-window eval"):
    """Per-token cross-entropy (B, T) in float32; ConfigError for a model that gives only means."""
    require_per_token(model, why)
    out = model(x, y, reduction="none")
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(y.shape):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise CheckpointError(f"model(input_ids, target_ids, reduction='none') returned {got}; expected "
                              f"per-token losses of shape {tuple(y.shape)}")
    return out.float()


def model_vocab(model):
    """The model's vocabulary: its `vocab_size`, its config's, else its first nn.Embedding's rows."""
    for owner in (model, getattr(model, "config", None)):
        vocab = getattr(owner, "vocab_size", None)
        if isinstance(vocab, int) and not isinstance(vocab, bool):
            return vocab
    emb = next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)
    return emb.num_embeddings if emb is not None else None


def load_factory(path, name):
    """`name` from the Python file `path`, loaded as its own module (the file must stand alone:
    it ships alone)."""
    stem = os.path.splitext(os.path.basename(path))[0]
    module_name = USER_MODULE_PREFIX + stem
    try:
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses and pickling look their module up
        spec.loader.exec_module(module)
    except Exception as e:  # any failure of the user's file is one clear error
        sys.modules.pop(module_name, None)
        raise ConfigError(f"{path}: cannot load the model file ({type(e).__name__}: {e}); it ships alone, so it "
                          "may import only the standard library and installed packages") from None
    factory = getattr(module, name, None)
    if not callable(factory):
        raise ConfigError(f"{path}: defines no class or function {name!r}")
    return factory


def call_factory(factory, config, checkpoint=None):
    """factory(**config[, checkpoint=...]): the user's module, checked to be an nn.Module."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    kwargs = dict(config)
    if "checkpoint" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
        kwargs["checkpoint"] = checkpoint
    label = getattr(factory, "__name__", repr(factory))
    try:
        model = factory(**kwargs)
    except Exception as e:
        raise ConfigError(f"model {label}({', '.join(kwargs)}) failed: {type(e).__name__}: {e}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model {label} returned {type(model).__name__}, not a torch.nn.Module")
    return model
