"""The entry of a submission: decode model.blob, build the model, score val_bpb, print one line.

A submission folder holds this layer (as the package `golf_runtime`, or packed inside a
self-extracting `run.py`) and a two-line `run.py` that calls `main()`:

    python run.py --data DIR [--seq-len L] [--stride S] [--max-tokens N] [--device D] [--threads N]

It decodes `model.blob` (every tensor's hash checked against the manifest, each tensor back in
its own dtype), builds the model of `config.json` (golf's GPT, or the shipped model file's:
`build_model`), loads the decoded weights strictly, scores val_bpb on DIR's validation shards with
the challenge's exact rule (flat windows, or sliding windows with --stride; artifact/docs/val_bpb.md)
and prints ONE JSON line, including where each imported module of this layer came from (so a
verifier can prove they came from the folder); progress goes to stderr as `golf-progress DONE
TOTAL` lines. Exit 0 on success, 1 on a decode/hash failure, 2 on any other error.

With a `ttt` table in config.json's eval section (then ttt.py ships too) the same tokens are also
scored with test-time training (`ttt.run_ttt`, as `golf eval --ttt`): the line gains a `ttt`
object, the submission's score; the top-level figures stay the plain eval's.
"""

import json
import os
import sys
import time

import torch

from .contract import USER_MODULE_PREFIX, call_factory, load_factory, model_vocab
from .decoder import DecodeError, decode_torch
from .errors import ConfigError
from .model import GPT, ModelConfig
from .scoring import eval_flat, eval_sliding, val_stream

# --flag -> type; a hand-written reader instead of argparse: these bytes are counted in every
# submission, and the flags are few and fixed
OPTIONS = {"--data": str, "--seq-len": int, "--stride": int, "--max-tokens": int, "--device": str, "--threads": int}
DEFAULTS = {"device": "auto"}


def parse_args(argv):
    """{option name: value} of `--flag value` pairs; ConfigError on anything else."""
    out = dict(DEFAULTS)
    if len(argv) % 2:
        raise ConfigError(f"expected --flag value pairs, got {' '.join(argv)!r}")
    for flag, value in zip(argv[::2], argv[1::2]):
        if flag not in OPTIONS:
            raise ConfigError(f"unknown option {flag!r} (known: {', '.join(OPTIONS)})")
        try:
            out[flag[2:].replace("-", "_")] = OPTIONS[flag](value)
        except ValueError:
            raise ConfigError(f"{flag} {value!r}: expected {OPTIONS[flag].__name__}") from None
    if "data" not in out:
        raise ConfigError("--data DIR is required")
    return out


def shipped_modules():
    """Module name -> file of every imported module of this layer's package and of the model file."""
    package = __name__.rpartition(".")[0]
    return {name: os.path.abspath(getattr(mod, "__file__", None) or "<no file>")
            for name, mod in sorted(sys.modules.items())
            if name == package or name.startswith((package + ".", USER_MODULE_PREFIX))}


def build_model(config, folder):
    """The (untrained) model config.json describes: the seam every scorer of a submission uses
    (this entry, and the verifier re-scoring the decoded weights). Its model section is golf's
    GPT config, or {"entry": "FILE.py:NAME", "config": {...}}: the shipped model file's factory
    and the keyword arguments it is built with (artifact/runtime/contract.py)."""
    section = config["model"]
    if "entry" not in section:
        return GPT(ModelConfig.from_dict(section, source="config.json"))
    entry, kwargs = section["entry"], section.get("config", {})
    path, _, name = str(entry).partition(":")
    if not name or os.path.basename(path) != path or not path.endswith(".py") or not isinstance(kwargs, dict):
        raise ConfigError(f"config.json model.entry {entry!r}: expected FILE.py:NAME (a file of the submission) "
                          "and model.config an object")
    return call_factory(load_factory(os.path.join(folder, path), name), kwargs)


def load_model(folder, config):
    """The model of config.json with model.blob's decoded weights; (model, tensor count, seconds)."""
    t0 = time.perf_counter()
    weights = decode_torch(os.path.join(folder, "model.blob"))  # raises DecodeError on any hash mismatch
    seconds = time.perf_counter() - t0
    model = build_model(config, folder)
    # the hashed float32 values, each rounded to its own dtype as the checkpoint held it (a bf16
    # embedding comes back bf16), then taken into the model's parameters
    model.load_state_dict(weights, strict=True)
    return model.eval(), len(weights), seconds


def ttt_config(config, seq_len):
    """config.json's eval.ttt as a TTTConfig; None without TTT (ttt.py ships only with it)."""
    spec = config.get("eval", {}).get("ttt")
    if spec is None:
        return None
    try:
        from .ttt import TTTConfig  # lazy: ttt.py ships only in submissions that use it

        cfg = TTTConfig.from_dict(spec)
        cfg.chunk_for(seq_len)
    except Exception as e:  # one clear error, whatever is wrong in the table (or missing)
        raise ConfigError(f"config.json eval.ttt: {e}") from None
    return cfg


PROGRESS_TAG = "golf-progress"


def report_progress(done, total, note=""):
    """Progress on stderr as `golf-progress DONE TOTAL` lines, which a verifier streams; stdout
    keeps the one result line."""
    print(PROGRESS_TAG, done, total, file=sys.stderr, flush=True)


def evaluate(model, stream, seq_len, opts):
    common = dict(device=opts["device"], sidecar=stream.sidecar, progress=report_progress)
    if opts.get("stride") is not None:
        return eval_sliding(model, stream.tokens, stream.counter, seq_len, opts["stride"], **common)
    return eval_flat(model, stream.tokens, stream.counter, seq_len, **common)


def evaluate_ttt(model, stream, seq_len, cfg, opts):
    from .ttt import run_ttt  # lazy: ttt.py ships only in submissions that use it

    r = run_ttt(model, stream.tokens, stream.counter, seq_len, cfg, stride=opts.get("stride"), device=opts["device"],
                sidecar=stream.sidecar, progress=report_progress)
    keys = ("mode", "val_loss", "val_bpb", "tokens", "bytes", "seconds", "score_seconds", "train_seconds",
            "chunk_tokens", "chunks", "documents", "updates", "trained_targets", "config")
    return {k: getattr(r, k) for k in keys}


def main(argv=None, folder=None):
    """Score the submission in `folder` (default: the folder of the running `run.py`)."""
    folder = folder or os.path.dirname(os.path.abspath(sys.argv[0]))
    out = {"hashes_ok": False}
    try:
        opts = parse_args(sys.argv[1:] if argv is None else argv)
        if opts.get("threads"):
            torch.set_num_threads(opts["threads"])
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
        seq_len = opts.get("seq_len") or config.get("eval", {}).get("seq_len") or 1024
        ttt = ttt_config(config, seq_len)  # fails before decoding
        model, n_tensors, decode_seconds = load_model(folder, config)
        out.update(hashes_ok=True, n_tensors=n_tensors, decode_seconds=decode_seconds)
        stream = val_stream(opts["data"], model_vocab(model), opts.get("max_tokens"))
        r = evaluate(model, stream, seq_len, opts)
        out.update(val_loss=r.val_loss, val_bpb=r.val_bpb, tokens=r.tokens, bytes=r.bytes,
                   eval_seconds=r.seconds, mode=r.mode, seq_len=r.seq_len, stride=r.stride,
                   device=r.device)
        if ttt is not None:
            out["ttt"] = evaluate_ttt(model, stream, seq_len, ttt, opts)
        code = 0
    except DecodeError as e:
        out["error"], code = f"model.blob: {e}", 1
    except Exception as e:  # one JSON line whatever happens; the verifier reports it
        out["error"], code = f"{type(e).__name__}: {e}", 2
    out["modules"] = shipped_modules()
    print(json.dumps(out, sort_keys=True), flush=True)
    return code
