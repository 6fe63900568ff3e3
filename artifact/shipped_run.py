"""The entry point that ships in a submission folder as `run.py` (this file, copied verbatim).

It is never imported by this project: `artifact.submission` copies its bytes into the folder,
next to copies of the modules it imports (`artifact/decoder.py`, `train/model.py`,
`train/evaluate.py`, ...), and the folder runs on its own:

    python run.py --data DIR [--seq-len L] [--stride S] [--max-tokens N] [--device D]

It decodes `model.blob` (every tensor's hash checked against the manifest), builds the GPT of
`config.json`, loads the decoded weights strictly, scores val_bpb on DIR's validation shards with
the challenge's exact rule (flat windows, or sliding windows with --stride) and prints ONE JSON
line, including where each imported project module came from (so a verifier can prove they came
from this folder). Exit 0 on success, 1 on a decode/hash failure, 2 on any other error.

With a `ttt` table in config.json's eval section (then train/ttt.py ships too) the same tokens
are also scored with test-time training (`train.ttt.run_ttt`, as `golf eval --ttt`): the line
gains a `ttt` object, the submission's score; the top-level figures stay the plain eval's.
"""

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)  # the shipped packages beside this file, before anything else

import torch  # noqa: E402

from artifact.decoder import DecodeError, decode  # noqa: E402
from train.byte_count import ByteCounter  # noqa: E402
from train.evaluate import eval_flat, eval_sliding, load_val  # noqa: E402
from train.model import GPT, ModelConfig  # noqa: E402
from train.shards import resolve_data  # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(description="Decode model.blob and score val_bpb.")
    p.add_argument("--data", required=True, help="data root or dataset folder holding the val shards")
    p.add_argument("--seq-len", type=int, default=None, help="window length (default: config.json)")
    p.add_argument("--stride", type=int, default=None, help="sliding-window stride (default: flat)")
    p.add_argument("--max-tokens", type=int, default=None, help="score only the first N val tokens")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return p.parse_args(argv)


def shipped_modules():
    """Module name -> file of every imported module of the shipped packages."""
    out = {}
    for name, mod in sorted(sys.modules.items()):
        if name.split(".")[0] in ("artifact", "train"):
            out[name] = os.path.abspath(getattr(mod, "__file__", None) or "<no file>")
    return out


def load_model(config):
    """GPT of config.json with model.blob's decoded weights; (model, tensor count, seconds)."""
    t0 = time.perf_counter()
    weights = decode(os.path.join(HERE, "model.blob"))  # raises DecodeError on any hash mismatch
    seconds = time.perf_counter() - t0
    model = GPT(ModelConfig.from_dict(config["model"], source="config.json"))
    # float32 values straight from the decoder: the hashed weights are exactly what is scored
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
    return model.eval(), len(weights), seconds


def eval_seq_len(config, args):
    return args.seq_len or config.get("eval", {}).get("seq_len") or 1024


def ttt_config(config, seq_len):
    """config.json's eval.ttt as a TTTConfig; None without TTT (train/ttt.py ships only with it)."""
    spec = config.get("eval", {}).get("ttt")
    if spec is None:
        return None
    from artifact.errors import ConfigError

    try:
        if not isinstance(spec, dict):
            raise TypeError(f"must be a table of TTT settings, got {type(spec).__name__}")
        from train.ttt import TTTConfig

        cfg = TTTConfig.from_dict(spec)
        cfg.chunk_for(seq_len)
    except Exception as e:  # one clear error, whatever is wrong in the table (or missing)
        raise ConfigError(f"config.json eval.ttt: {e}") from None
    return cfg


def load_stream(vocab, args):
    """(tokens, byte counter or None, side-car or None) of the val shards, cut to --max-tokens."""
    data = resolve_data(args.data, vocab_size=vocab)
    tokens, sidecar = load_val(data, vocab)
    counter = None if sidecar is not None else ByteCounter.from_sentencepiece(data.require_tokenizer(), vocab)
    if args.max_tokens is not None:
        tokens = tokens[: args.max_tokens]
        sidecar = sidecar[: args.max_tokens] if sidecar is not None else None
    return tokens, counter, sidecar


def evaluate(model, stream, seq_len, args):
    tokens, counter, sidecar = stream
    common = dict(device=args.device, sidecar=sidecar, progress=False)
    if args.stride is not None:
        return eval_sliding(model, tokens, counter, seq_len, args.stride, **common)
    return eval_flat(model, tokens, counter, seq_len, **common)


def evaluate_ttt(model, stream, seq_len, cfg, args):
    from train.ttt import run_ttt

    tokens, counter, sidecar = stream
    r = run_ttt(model, tokens, counter, seq_len, cfg, stride=args.stride, device=args.device,
                sidecar=sidecar, progress=False)
    keys = ("mode", "val_loss", "val_bpb", "tokens", "bytes", "seconds", "score_seconds", "train_seconds",
            "chunk_tokens", "chunks", "documents", "updates", "trained_targets", "config")
    return {k: getattr(r, k) for k in keys}


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = {"hashes_ok": False}
    try:
        with open(os.path.join(HERE, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
        seq_len = eval_seq_len(config, args)
        ttt = ttt_config(config, seq_len)  # fails before decoding
        model, n_tensors, decode_seconds = load_model(config)
        out.update(hashes_ok=True, n_tensors=n_tensors, decode_seconds=decode_seconds)
        stream = load_stream(model.config.vocab_size, args)
        r = evaluate(model, stream, seq_len, args)
        out.update(val_loss=r.val_loss, val_bpb=r.val_bpb, tokens=r.tokens, bytes=r.bytes,
                   eval_seconds=r.seconds, mode=r.mode, seq_len=r.seq_len, stride=r.stride,
                   device=r.device)
        if ttt is not None:
            out["ttt"] = evaluate_ttt(model, stream, seq_len, ttt, args)
        code = 0
    except DecodeError as e:
        out["error"], code = f"model.blob: {e}", 1
    except Exception as e:  # one JSON line whatever happens; the verifier reports it
        out["error"], code = f"{type(e).__name__}: {e}", 2
    out["modules"] = shipped_modules()
    print(json.dumps(out, sort_keys=True), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
