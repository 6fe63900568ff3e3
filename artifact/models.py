"""Which model a command runs, and how it is loaded: golf's GPT from a checkpoint (its config
inferred from the tensors, read from a JSON, overridden — and said so), or a user's module under
the model contract (artifact/runtime/contract.py) named by `FILE.py:NAME` or
`package.module:NAME` (`ModelSpec`, the `--model`, `--model-config` and `--set` flags).

`load_model(checkpoint, spec)` gives a `LoadedModel`: the module holding the checkpoint's
weights, the tensors as the file holds them (each in its own dtype: what is packed), the model
section of a submission's config.json (what `runtime.run.build_model` rebuilds it from), the
files a submission ships for it (the model file, as it is), the window it is calibrated and
scored at (`seq_len`), and `notes`: what was inferred, read, set or defaulted.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from artifact.runtime.checkpoint import (
    locate_checkpoint,
    read_checkpoint,
    read_state_dict,
    train_seq_len,
)
from artifact.runtime.config import typed_value
from artifact.runtime.contract import call_factory, load_factory, model_vocab
from artifact.runtime.errors import CheckpointError, ConfigError
from artifact.runtime.files import read_toml
from artifact.runtime.model import ModelConfig

DEFAULT_SEQ_LEN = 1024
SEQ_LEN_KEY = "seq_len"  # the one `--set` key that is golf's (the calibration and eval window), not the model's


@dataclass(frozen=True)
class ModelSpec:
    """What to build: golf's GPT (`entry` None) or a user's factory (`FILE.py:NAME` or
    `package.module:NAME`); `config` a JSON (or, for a user's model, TOML) file of its config, a
    partial one for the GPT; `overrides` `--set` values merged over it (plus `seq_len`)."""

    entry: str | None = None
    config: str | Path | None = None
    overrides: dict = field(default_factory=dict)


@dataclass
class LoadedModel:
    model: nn.Module
    state: dict[str, Tensor]
    section: dict
    files: dict[str, bytes]
    seq_len: int
    weights: Path
    meta: dict
    notes: list[str]
    cfg: ModelConfig | None = None  # golf's GPT only

    @property
    def vocab_size(self) -> int:
        vocab = model_vocab(self.model)
        if vocab is None:
            raise ConfigError(f"cannot tell the vocabulary of {type(self.model).__name__}: give it a `vocab_size` "
                              "attribute or an nn.Embedding")
        return vocab

    def report(self) -> dict:
        """JSON-able summary for a command's result."""
        return {"model": self.section.get("entry", "golf GPT"), "weights": str(self.weights), "seq_len": self.seq_len,
                "notes": list(self.notes)}


def load_model(checkpoint, spec: ModelSpec | None = None) -> LoadedModel:
    """The model of `spec` (default: golf's GPT) with `checkpoint`'s weights."""
    spec = spec or ModelSpec()
    overrides = dict(spec.overrides)
    seq_len = typed_value(overrides, SEQ_LEN_KEY, int, "--set")
    overrides.pop(SEQ_LEN_KEY, None)
    if seq_len is not None and seq_len < 1:
        raise ConfigError(f"--set seq_len={seq_len} must be >= 1")
    loaded = _load_gpt(checkpoint, spec, overrides) if spec.entry is None else _load_user(checkpoint, spec, overrides)
    if seq_len is not None:
        loaded.seq_len = seq_len
        loaded.notes.append(f"set: seq_len={seq_len}")
    elif train_seq_len(loaded.meta):
        loaded.seq_len = train_seq_len(loaded.meta)
    else:
        loaded.notes.append(f"defaulted: seq_len={DEFAULT_SEQ_LEN} (the calibration and eval window; no training "
                            "length is recorded: --set seq_len=N)")
    return loaded


def _fields(cfg, names) -> str:
    return " ".join(f"{k}={getattr(cfg, k)}" for k in names)


def _load_gpt(checkpoint, spec: ModelSpec, overrides: dict) -> LoadedModel:
    ck = read_checkpoint(checkpoint, spec.config, overrides)
    by = {kind: [k for k, v in ck.origin.items() if v == kind] for kind in ("inferred", "config", "set")}
    notes = []
    if by["inferred"]:
        notes.append(f"inferred from the tensor shapes of {ck.weights.name}: {_fields(ck.cfg, by['inferred'])}")
    if by["config"] and ck.config_file is not None and len(by["config"]) < len(ck.origin):
        notes.append(f"read from {ck.config_file.name}: {_fields(ck.cfg, by['config'])}")
    if by["set"]:
        notes.append(f"set: {_fields(ck.cfg, by['set'])}")
    defaulted = ck.defaulted()
    others = [k for k, v in ck.origin.items() if v == "default" and k not in defaulted]
    if defaulted or others:
        parts = [f"{k}={v}" for k, v in defaulted.items()]
        parts += [f"the {len(others)} other fields (switches, init settings) at their defaults, off"] if others else []
        notes.append(f"defaulted (no tensor shows them: --set KEY=VALUE): {'; '.join(parts)}")
    return LoadedModel(ck.model, ck.state, ck.cfg.to_dict(), {}, DEFAULT_SEQ_LEN, ck.weights, ck.meta, notes, ck.cfg)


# ----------------------------------------------------------------------------- a user's model
def resolve_entry(entry: str) -> tuple[Path, str]:
    """(model file, NAME) of `FILE.py:NAME` or `package.module:NAME` (the module's own file: the
    file that ships, loaded alone as the submission will load it)."""
    target, sep, name = str(entry).rpartition(":")
    if not sep or not target or not name.isidentifier():
        raise ConfigError(f"--model {entry!r}: expected FILE.py:NAME or package.module:NAME")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise ConfigError(f"--model {entry!r}: no such file {path}")
        return path, name
    try:
        found = importlib.util.find_spec(target)
    except (ImportError, ValueError) as e:
        raise ConfigError(f"--model {entry!r}: cannot find module {target!r} ({e})") from None
    origin = getattr(found, "origin", None)
    if found is None or not origin or not origin.endswith(".py"):
        raise ConfigError(f"--model {entry!r}: module {target!r} is not a Python source file")
    return Path(origin), name


def read_model_config(path) -> dict:
    """The keyword arguments of a user's model: a JSON object, or a TOML file's top table."""
    path = Path(path)
    if path.suffix == ".toml":
        return read_toml(path, "model config")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"{path}: cannot read the model config ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the model config must be a JSON object")
    return data


def _defaults_left(factory, given: dict) -> dict:
    """The factory's own defaults that `given` leaves in place."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return {}
    return {p.name: p.default for p in params if p.default is not p.empty and p.name not in given
            and p.name != "checkpoint" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _load_user(checkpoint, spec: ModelSpec, overrides: dict) -> LoadedModel:
    path, name = resolve_entry(spec.entry)
    config = {**(read_model_config(spec.config) if spec.config is not None else {}), **overrides}
    try:
        json.dumps(config, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model config of {name}: not plain JSON ({e}); it ships in config.json") from None
    weights, _ = locate_checkpoint(Path(checkpoint))
    factory = load_factory(str(path), name)
    model = call_factory(factory, config, checkpoint=str(weights))
    state = read_state_dict(weights)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing or extra:
        raise CheckpointError(f"{weights}: does not fit {name} of {path.name}: missing {missing[:5]}, "
                              f"unexpected {extra[:5]}")
    for k, t in expected.items():
        if tuple(state[k].shape) != tuple(t.shape):
            raise CheckpointError(f"{weights}: tensor {k!r} has shape {tuple(state[k].shape)}; {name} expects "
                                  f"{tuple(t.shape)}")
    with torch.no_grad():
        model.load_state_dict(state, strict=True)
    model.eval()
    left = _defaults_left(factory, config)
    notes = [f"model {name} from {path} (built with {json.dumps(config, sort_keys=True)})"]
    if left:
        notes.append(f"defaulted by {name}: {' '.join(f'{k}={v}' for k, v in left.items())}")
    return LoadedModel(model, {k: state[k] for k in expected}, {"entry": f"{path.name}:{name}", "config": config},
                       {path.name: path.read_bytes()}, DEFAULT_SEQ_LEN, weights, {}, notes)
