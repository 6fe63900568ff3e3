"""`golf eval`: the exact val_bpb of a checkpoint (flat or sliding windows), optionally with
legal score-first test-time training; and the `--ttt` flags `golf pack` shares."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from analysis.cliutil import Meter, add_json_flag, add_model_flags, emit, model_spec, say_model
from artifact.pipeline import eval_setup, score
from artifact.runtime.errors import ConfigError, GolfError
from artifact.runtime.scoring import EvalResult, ValStream
from artifact.runtime.ttt import TTTConfig, eval_documents, run_ttt
from train.bundled import BUNDLED_CHECKPOINT, BUNDLED_DATA


def add_arguments(p) -> None:
    p.add_argument("checkpoint", nargs="?", default=None, metavar="CKPT",
                   help="checkpoint folder or file (default: the bundled checkpoint)")
    p.add_argument("--data", default=None, metavar="DIR", help="data root or dataset folder (default: the bundled data)")
    p.add_argument("--seq-len", type=int, default=None, metavar="L",
                   help="window length L (default: the checkpoint's training seq_len, else 1024)")
    p.add_argument("--stride", type=int, default=None, metavar="S", help="sliding-window stride S (default: flat eval)")
    p.add_argument("--batch-seqs", type=int, default=8, metavar="N", help="windows per forward pass (default: 8)")
    add_device_flag(p)
    p.add_argument("--max-tokens", type=int, default=None, metavar="N",
                   help="evaluate only the first N val tokens, a quick look, not the full score (default: all)")
    add_ttt_flags(p)
    add_model_flags(p)
    add_json_flag(p)


# flag -> (TTTConfig field, type, help); defaults live in TTTConfig alone
_TTT_FLAGS = {
    "--ttt-chunk": ("chunk_tokens", int, "targets per chunk (default: 32768 chunked, 64 lora/phased; <= seq_len there)"),
    "--ttt-epochs": ("epochs", int, "passes over each scored chunk (lora: steps per chunk; default: 1)"),
    "--ttt-optimizer": ("optimizer", str, "full-model optimizer: sgd or adamw (default: sgd)"),
    "--ttt-lr": ("lr", float, "full-model lr (chunked; phased global phases; default: 0.002)"),
    "--ttt-momentum": ("momentum", float, "SGD momentum (default: 0.9)"),
    "--ttt-weight-decay": ("weight_decay", float, "weight decay (default: 0)"),
    "--ttt-grad-clip": ("grad_clip", float, "gradient-norm clip, 0 = off (default: 1.0)"),
    "--ttt-freeze-blocks": ("frozen_blocks", int, "freeze the first N blocks (default: 0)"),
    "--ttt-batch-seqs": ("batch_seqs", int, "training windows per step (default: 8)"),
    "--ttt-seq-len": ("train_seq_len", int, "full-model training window length (default: --seq-len)"),
    "--ttt-lora-rank": ("lora_rank", int, "LoRA rank (default: 8)"),
    "--ttt-lora-alpha": ("lora_alpha", float, "LoRA alpha; the delta is scaled alpha/rank (default: 16)"),
    "--ttt-lora-lr": ("lora_lr", float, "LoRA lr (default: 0.001)"),
    "--ttt-lora-optimizer": ("lora_optimizer", str, "LoRA optimizer: sgd or adamw (default: adamw)"),
    "--ttt-lora-targets": ("lora_targets", str, "comma list of nn.Linear names/suffixes, or 'all' "
                                                "(default: c_q,c_v,attn.proj,mlp.fc,mlp.proj)"),
    "--ttt-phases": ("phases", int, "phased: global phases over the prefix documents (default: 1)"),
    "--ttt-prefix-docs": ("prefix_docs", int, "phased: documents covered by the global phases (default: 2000)"),
    "--ttt-global-epochs": ("global_epochs", int, "phased: passes over the scored documents per phase (default: 1)"),
    "--ttt-seed": ("seed", int, "seed of the LoRA initialisation (default: 0)"),
}


def add_device_flag(p) -> None:
    """`--device` of the commands that score (eval, verify)."""
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", metavar="DEVICE",
                   help="auto = CUDA (bf16 autocast) when available, else CPU (float32); or cpu, cuda "
                        "(default: auto)")


def add_ttt_flags(p) -> None:
    """The `--ttt` flags of `golf eval` (and of `golf pack`, so a submission scores the same way)."""
    g = p.add_argument_group("test-time training (score first, then train on scored tokens only)")
    g.add_argument("--ttt", choices=("chunked", "lora", "phased"), default=None, metavar="MODE",
                   help="also score with test-time training, chunked, lora or phased, and report both val_bpb "
                        "figures (default: off)")
    for flag, (dest, kind, text) in _TTT_FLAGS.items():
        metavar = {int: "N", float: "X"}.get(kind, "NAME")
        g.add_argument(flag, dest="ttt_" + dest, type=kind, default=None, metavar=metavar, help=text)
    g.add_argument("--ttt-no-cosine", dest="ttt_cosine", action="store_false", default=None,
                   help="constant lr instead of the cosine decay over the stream / phases (default: cosine)")


def ttt_config_from_args(args):
    """The TTTConfig of the command line (only the flags given override its defaults)."""
    given = {dest: getattr(args, "ttt_" + dest) for dest, _, _ in _TTT_FLAGS.values()}
    given["cosine"] = args.ttt_cosine
    overrides = {k: v for k, v in given.items() if v is not None}
    return TTTConfig(mode=args.ttt, **overrides)


def run(args) -> int:
    ttt_cfg = ttt_config_from_args(args) if args.ttt else None  # bad knobs fail before any work
    ckpt = Path(args.checkpoint) if args.checkpoint else BUNDLED_CHECKPOINT
    if args.max_tokens is not None and args.max_tokens < 2:
        raise ConfigError(f"--max-tokens {args.max_tokens} must be >= 2")
    setup = eval_setup(ckpt, args.data or BUNDLED_DATA, args.seq_len, args.max_tokens, model_spec(args))
    say_model(setup.loaded)
    if ttt_cfg is not None:
        ttt_cfg.chunk_for(setup.seq_len)  # before the plain eval's minutes
    result = score(setup, args.stride, args.batch_seqs, args.device, progress=Meter("eval"))
    stream = setup.stream
    out = result.to_dict()
    out.update(checkpoint=str(ckpt), dataset=str(stream.data.dataset_dir), byte_rule=stream.byte_rule,
               val_tokens=int(np.asarray(stream.tokens).size), model=setup.loaded.report())
    if ttt_cfg is not None:
        out["ttt"] = _ttt_figures(setup.model, stream, setup.seq_len, args, ttt_cfg, result)
    emit(out, args.json, _text)
    return 0


def _ttt_figures(model, stream: ValStream, seq_len, args, cfg, plain: EvalResult) -> dict:
    """The TTT run's figures next to the plain eval's; document modes also report the
    per-document scoring without any update (their context restarts at each BOS)."""
    tokens, counter = stream.tokens, stream.counter
    common = dict(stride=args.stride, device=args.device, sidecar=stream.sidecar)
    res = run_ttt(model, tokens, counter, seq_len, cfg, batch_seqs=args.batch_seqs,
                  progress=Meter("ttt"), **common)
    if (res.tokens, res.bytes) != (plain.tokens, plain.bytes):  # the proof's premise; never expected
        raise GolfError(f"ttt scored {res.tokens} targets / {res.bytes} bytes, the plain eval "
                        f"{plain.tokens} / {plain.bytes}")
    out = res.to_dict()
    out.update(baseline_val_bpb=plain.val_bpb, gain_bpb=plain.val_bpb - res.val_bpb, doc_baseline=None)
    if cfg.mode != "chunked":
        docs = eval_documents(model, tokens, counter, seq_len, res.chunk_tokens,
                              progress=Meter("eval documents"), **common)
        out["doc_baseline"] = {"val_bpb": docs.val_bpb, "val_loss": docs.val_loss, "seconds": docs.seconds}
    return out


def _text(r: dict) -> str:
    mode = r["mode"] + (f" (stride {r['stride']})" if r["stride"] else "")
    return "\n".join([
        f"checkpoint   {r['checkpoint']}",
        f"dataset      {r['dataset']}  (bytes from {r['byte_rule']})",
        f"mode         {mode}, seq_len {r['seq_len']}, {r['windows']} windows on {r['device']}",
        f"val_loss     {r['val_loss']:.6f} nats/token",
        f"val_bpb      {r['val_bpb']:.6f}",
        f"scored       {r['tokens']:,} tokens, {r['bytes']:,} bytes",
        f"time         {r['seconds']:.2f} s, {r['tokens_per_s']:,.0f} tokens/s",
        *(_ttt_text(r["ttt"]) if r.get("ttt") else []),
    ])


def _ttt_text(t: dict) -> list[str]:
    lines = [
        f"ttt          {t['mode']}, chunk {t['chunk_tokens']}, {t['chunks']} chunks"
        + (f", {t['documents']} documents" if t["documents"] else "")
        + f", {t['updates']} updates on {t['device']}",
    ]
    if t.get("doc_baseline"):
        lines.append(f"ttt doc ref  val_bpb {t['doc_baseline']['val_bpb']:.6f} (documents scored apart, no update)")
    lines += [
        f"ttt val_bpb  {t['val_bpb']:.6f}  (without TTT {t['baseline_val_bpb']:.6f}, gain {t['gain_bpb']:+.6f})",
        f"ttt time     {t['seconds']:.2f} s (scoring {t['score_seconds']:.2f} s, training {t['train_seconds']:.2f} s)",
    ]
    return lines
