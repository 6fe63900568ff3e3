"""golf's own score of a submission folder: what `golf verify` compares the submission's claim with.

`score_reference(folder, options)` decodes model.blob with golf's decoder (not the one the
submission ships), builds the model through the one seam `artifact.runtime.run.build_model`,
loads the decoded weights strictly and scores them with golf's eval (and TTT when config.json
configures it) — the very functions the shipped run.py calls, taken from this project. It also
returns the digest of the state dict it scored (`artifact.harness.state_digest`), which the state
the submission's run actually scored must equal.

For golf's own GPT the verifier calls it in its own process. A model whose code ships in the
folder would run that code here, so the verifier then calls it inside a contained child
(`artifact.contain.RESCORE`); either way the decoder, the scoring and the byte counting are
golf's. (Model code that shares a process with the scoring could still tamper with it: for such
a model the re-score proves the counted bytes under golf's harness, not that the code is fair.)
"""

from __future__ import annotations

import json
from pathlib import Path

from artifact.harness import state_digest
from artifact.runtime.contract import model_vocab
from artifact.runtime.errors import ConfigError
from artifact.runtime.model import ModelConfig
from artifact.runtime.run import evaluate, evaluate_ttt, load_model, ttt_config
from artifact.runtime.scoring import val_stream

DEFAULT_SEQ_LEN = 1024  # as run.py's


def read_config(folder: str | Path) -> dict:
    """config.json of a submission folder, as a dict (ConfigError when unreadable)."""
    path = Path(folder) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"{path}: cannot read the submission's config ({e})") from None
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise ConfigError(f"{path}: expected an object with a 'model' object")
    if not isinstance(config.get("eval", {}), dict):
        raise ConfigError(f"{path}: 'eval' must be an object")
    return config


def is_builtin_model(config: dict) -> bool:
    """Whether config.json describes golf's own GPT (no code from the submission builds it)."""
    try:
        ModelConfig.from_dict(config["model"], source="config.json")
    except (ConfigError, TypeError, ValueError):
        return False
    return True


def score_reference(folder: str | Path, options: dict, digest=state_digest) -> dict:
    """Decode, build, load and score the submission in `folder` with golf's own code.

    `options`: data (required), seq_len, stride, max_tokens, device (as run.py's flags).
    Returns run.py's figures (val_loss, val_bpb, tokens, bytes, mode, seq_len, stride, device,
    n_tensors; `ttt` with TTT) and `digest`, the state dict's digest before scoring."""
    folder = str(folder)
    config = read_config(folder)
    opts = {"device": "auto", **{k: v for k, v in options.items() if v is not None}}
    seq_len = opts.get("seq_len") or config.get("eval", {}).get("seq_len") or DEFAULT_SEQ_LEN
    ttt = ttt_config(config, seq_len)
    try:
        model, n_tensors, _ = load_model(folder, config)
    except RuntimeError as e:  # torch's load_state_dict: names or shapes that do not fit
        raise ConfigError(f"model.blob's tensors do not fit the model config.json describes: "
                          f"{' '.join(str(e).split())[:300]}") from None
    out = {"digest": digest(model.state_dict()), "n_tensors": n_tensors}
    stream = val_stream(opts["data"], model_vocab(model), opts.get("max_tokens"))
    r = evaluate(model, stream, seq_len, opts)
    out.update(val_loss=r.val_loss, val_bpb=r.val_bpb, tokens=r.tokens, bytes=r.bytes, mode=r.mode,
               seq_len=r.seq_len, stride=r.stride, device=r.device)
    if ttt is not None:
        out["ttt"] = evaluate_ttt(model, stream, seq_len, ttt, opts)
    return out
