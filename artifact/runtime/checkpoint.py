"""Checkpoints: a plain tensor state dict (`model.pt`) plus `config.json`, saved atomically,
and a validating loader that also opens the challenge's own `final_model.pt`.

Layout written by `save_checkpoint(out_dir, ...)`:
    out_dir/model.pt      torch.save of {name: float32 tensor}, byte-deterministic
    out_dir/config.json   {"format": "golf-checkpoint", "version": 1, "model": {...}, "meta": {...}}

`load_checkpoint(path)` accepts that folder, a `.pt` file (its config is `<stem>.json` or a
sibling `config.json`; with neither, the config is inferred from the tensor shapes) or a
`.safetensors` file when the `safetensors` package is installed. Files are opened with
`torch.load(weights_only=True)` only. Anything wrong raises one `CheckpointError` naming the
file and, where it applies, the tensor.
"""

from __future__ import annotations

import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import CheckpointError, ConfigError
from .files import atomic_write
from .model import GPT, ModelConfig, state_dict_shapes

MODEL_FILE = "model.pt"
CONFIG_FILE = "config.json"
FORMAT = "golf-checkpoint"
FORMAT_VERSION = 1
_CONFIG_KEYS = {"format", "version", "model", "meta"}
# Wrappers other trainers put around a state dict, and prefixes DDP / torch.compile add.
_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict")
_PREFIXES = ("module.", "_orig_mod.")


# ---------------------------------------------------------------------------------------- save

def state_dict_bytes(model: torch.nn.Module) -> bytes:
    """torch.save bytes of the model's float32 CPU state dict (same weights → same bytes)."""
    state = {name: t.detach().to("cpu", torch.float32).contiguous().clone() for name, t in model.state_dict().items()}
    buf = io.BytesIO()  # saving to a buffer keeps the archive name fixed ("archive/")
    torch.save(state, buf)
    return buf.getvalue()


def save_checkpoint(out_dir: str | Path, model: torch.nn.Module, cfg: ModelConfig, meta: dict) -> Path:
    """Write `model.pt` and `config.json` into `out_dir` (each atomically); return `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "version": FORMAT_VERSION, "model": cfg.to_dict(), "meta": meta}
    text = json.dumps(payload, indent=2, sort_keys=True, default=str, allow_nan=True) + "\n"
    atomic_write(out_dir / MODEL_FILE, state_dict_bytes(model))
    atomic_write(out_dir / CONFIG_FILE, text)
    return out_dir


# ---------------------------------------------------------------------------------------- load

# fields a bare state dict cannot show (no tensor shape depends on them) but the forward reads
UNSEEN_FIELDS = ("logit_softcap", "rope_base")


@dataclass
class Checkpoint:
    """A loaded checkpoint: the GPT (eval mode, CPU), its config, the saved meta, the tensors as
    the file holds them (each in its own dtype: what is packed) and where every config field
    came from (`origin`: field -> "set" | "config" | "inferred" | "default")."""

    model: GPT
    cfg: ModelConfig
    meta: dict
    state: dict[str, torch.Tensor]
    weights: Path
    config_file: Path | None
    origin: dict[str, str]

    def defaulted(self) -> dict:
        """The fields the forward reads that nothing gave (the checkpoint's tensors cannot show them)."""
        return {k: getattr(self.cfg, k) for k in UNSEEN_FIELDS if self.origin[k] == "default"}


def load_checkpoint(path: str | Path, config: str | Path | None = None,
                    overrides: dict | None = None) -> tuple[GPT, ModelConfig, dict]:
    """(model in eval mode on CPU, its ModelConfig, the saved meta dict) from a checkpoint."""
    ckpt = read_checkpoint(path, config, overrides)
    return ckpt.model, ckpt.cfg, ckpt.meta


def read_checkpoint(path: str | Path, config: str | Path | None = None,
                    overrides: dict | None = None) -> Checkpoint:
    """The checkpoint at `path` with its config resolved field by field: the shape inferred from
    the tensors (baseline layout), under the config JSON (`config`, else the one beside the
    weights; a partial one is merged over the inferred shape), under `overrides` (ModelConfig
    fields). Anything else is the ModelConfig default, and `Checkpoint.defaulted()` says so."""
    weights, config_file = locate_checkpoint(Path(path))
    if config is not None:
        config_file = Path(config)
    state = read_state_dict(weights)
    given, meta = read_config(config_file) if config_file is not None else ({}, {"config_inferred": True})
    overrides = dict(overrides or {})
    if not given:
        _refuse_switch_tensors(state, weights)
    try:
        shape = infer_shape(state, weights)
    except CheckpointError:
        if not given:
            raise
        shape = {}  # not the baseline layout: the config JSON says what the shapes cannot
    where = str(config_file) if config_file is not None else f"{weights} (inferred from the tensors)"
    try:
        cfg = ModelConfig.from_dict({**shape, **given, **overrides}, source=where)
    except ConfigError as exc:
        raise CheckpointError(f"{weights}: bad model config: {exc}") from None
    validate_state_dict(state, cfg, weights)
    model = GPT(cfg)
    model.load_state_dict(state, strict=True)
    model.eval()
    origin = {f: "set" if f in overrides else "config" if f in given else "inferred" if f in shape else "default"
              for f in cfg.to_dict()}
    ordered = {k: state[k] for k in model.state_dict()}
    return Checkpoint(model, cfg, meta, ordered, weights, config_file, origin)


def locate_checkpoint(path: Path) -> tuple[Path, Path | None]:
    """The weights file and its config file (or None) for a folder or file path."""
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file or folder")
    if path.is_dir():
        candidates = [path / MODEL_FILE, path / "model.safetensors"]
        weights = next((c for c in candidates if c.is_file()), None)
        if weights is None:
            raise CheckpointError(f"{path}: checkpoint folder has no {MODEL_FILE} (or model.safetensors)")
    else:
        weights = path
    for cand in (weights.with_suffix(".json"), weights.parent / CONFIG_FILE):
        if cand.is_file():
            return weights, cand
    return weights, None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load and sanity-check a flat {name: floating tensor} dict (finite values only)."""
    if path.suffix == ".safetensors":
        raw = _read_safetensors(path)
    else:
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # any unpickling/zip/IO failure is a bad file, not a crash
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: {_first_line(exc)})") from None
    state = _unwrap_state_dict(raw, path)
    for name, tensor in state.items():
        if not tensor.is_floating_point():
            raise CheckpointError(f"{path}: tensor {name!r} has dtype {tensor.dtype}; expected floating point")
        if not bool(torch.isfinite(tensor).all()):
            bad = "NaN" if bool(torch.isnan(tensor).any()) else "Inf"
            raise CheckpointError(f"{path}: tensor {name!r} contains {bad} values")
    return state


def _read_safetensors(path: Path) -> dict:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise CheckpointError(f"{path}: reading .safetensors needs the 'safetensors' package (pip install safetensors)") from None
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({_first_line(exc)})") from None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else "no detail"


def _unwrap_state_dict(raw, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(raw, dict):
        for key in _WRAPPER_KEYS:
            if isinstance(raw.get(key), dict):
                raw = raw[key]
                break
    if not isinstance(raw, dict) or not raw:
        raise CheckpointError(f"{path}: expected a non-empty state dict of tensors, got {type(raw).__name__}")
    bad = [k for k, v in raw.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entry {bad[0]!r} is not a named tensor; expected a plain state dict")
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in raw):
            raw = {k[len(prefix):]: v for k, v in raw.items()}
    return dict(raw)


def read_config(path: Path) -> tuple[dict, dict]:
    """(ModelConfig fields, meta) of a config JSON: ours ({"model": ..., "meta": ...}) or a bare,
    possibly partial, dict of ModelConfig fields. Checked when the config is built."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: malformed checkpoint config JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: checkpoint config must be a JSON object")
    if "model" in data:
        unknown = sorted(set(data) - _CONFIG_KEYS)
        if unknown:
            raise CheckpointError(f"{path}: unknown checkpoint config keys {unknown} (known: {sorted(_CONFIG_KEYS)})")
        model_part, meta = data["model"], data.get("meta", {})
        if not isinstance(model_part, dict) or not isinstance(meta, dict):
            raise CheckpointError(f"{path}: 'model' and 'meta' must be JSON objects")
        return model_part, meta
    # a bare dict may also record the training length, as our meta does
    meta = {k: data[k] for k in ("seq_len", "train_seq_len") if k in data}
    return {k: v for k, v in data.items() if k not in meta}, meta


def infer_shape(state: dict[str, torch.Tensor], path: Path) -> dict:
    """The ModelConfig fields the tensor shapes show (for a bare `final_model.pt`): the baseline
    layout's. Switches (extra tensors, or ones that change no shape) need a config JSON."""

    def need(name: str, ndim: int) -> torch.Tensor:
        if name not in state:
            raise CheckpointError(f"{path}: cannot infer the model config: missing tensor {name!r} (and no config JSON beside it)")
        if state[name].ndim != ndim:
            raise CheckpointError(f"{path}: tensor {name!r} has shape {tuple(state[name].shape)}; expected {ndim} dims")
        return state[name]

    def whole(name: str, num: int, den: int, what: str) -> int:
        if den <= 0 or num % den:
            raise CheckpointError(f"{path}: tensor {name!r} has shape {tuple(state[name].shape)}: cannot infer "
                                  f"{what} ({num} is not a multiple of {den})")
        return num // den

    vocab, dim = need("tok_emb.weight", 2).shape
    layer_ids = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    if not layer_ids:
        raise CheckpointError(f"{path}: cannot infer the model config: no blocks.N.* tensors")
    heads = need("blocks.0.attn.q_gain", 1).shape[0]
    head_dim = whole("blocks.0.attn.q_gain", dim, heads, "the head dim (model_dim / heads)")
    kv_rows = need("blocks.0.attn.c_k.weight", 2).shape[0]
    kv_heads = whole("blocks.0.attn.c_k.weight", kv_rows, head_dim, "the KV heads")
    mlp_mult = whole("blocks.0.mlp.fc.weight", need("blocks.0.mlp.fc.weight", 2).shape[0], dim, "mlp_mult")
    return {"vocab_size": int(vocab), "num_layers": max(layer_ids) + 1, "model_dim": int(dim), "num_heads": int(heads),
            "num_kv_heads": kv_heads, "mlp_mult": mlp_mult, "tie_embeddings": "lm_head.weight" not in state}


def _refuse_switch_tensors(state: dict[str, torch.Tensor], path: Path) -> None:
    """A bare state dict holding tensors outside the baseline layout came from a model with
    switches on, whose config the shapes cannot tell: ask for its config.json."""
    baseline = re.compile(r"(tok_emb\.weight|skip_weights|lm_head\.weight|blocks\.\d+\.(attn_scale|mlp_scale|resid_mix"
                          r"|attn\.(q_gain|c_q\.weight|c_k\.weight|c_v\.weight|proj\.weight)|mlp\.(fc|proj)\.weight))")
    extra = sorted(n for n in state if not baseline.fullmatch(n))
    if extra:
        more = f" (+{len(extra) - 5} more)" if len(extra) > 5 else ""
        raise CheckpointError(f"{path}: tensors {extra[:5]}{more} are not in the baseline layout (a model with switches "
                              f"on?); the config cannot be inferred from shapes: put the checkpoint's {CONFIG_FILE} "
                              f"beside it")


def validate_state_dict(state: dict[str, torch.Tensor], cfg: ModelConfig, path: Path) -> None:
    """Exactly the names and shapes `cfg` needs, or one error naming what differs."""
    expected = state_dict_shapes(cfg)
    missing = [n for n in expected if n not in state]
    if missing:
        more = f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""
        raise CheckpointError(f"{path}: missing tensors {missing[:5]}{more} for the configured model")
    extra = [n for n in state if n not in expected]
    if extra:
        more = f" (+{len(extra) - 5} more)" if len(extra) > 5 else ""
        raise CheckpointError(f"{path}: unexpected tensors {extra[:5]}{more} not in the configured model")
    for name, shape in expected.items():
        got = tuple(state[name].shape)
        if got != shape:
            raise CheckpointError(f"{path}: tensor {name!r} has shape {got}; the config expects {shape}")


def checkpoint_parameter_bytes(cfg: ModelConfig) -> int:
    """Bytes of the fp32 state dict's tensor data for `cfg` (excluding torch.save overhead)."""
    return 4 * sum(math.prod(s) for s in state_dict_shapes(cfg).values())


def train_seq_len(meta) -> int | None:
    """The training sequence length recorded in a checkpoint's meta (at the top or in a
    train/training/train_config/config section), if any."""
    if not isinstance(meta, dict):
        return None
    for key in ("seq_len", "train_seq_len"):
        if isinstance(meta.get(key), int) and not isinstance(meta[key], bool) and meta[key] > 0:
            return meta[key]
    for section in ("train_config", "train", "training", "config"):
        found = train_seq_len(meta.get(section))
        if found:
            return found
    return None
