"""`golf pack`, `golf inspect`, `golf verify`: checkpoint → submission folder → proof it works.

    golf pack [CKPT] --recipe NAME|PATH --out DIR [--data DIR] [--budget NAME|BYTES] [--compact]
              [--ttt {chunked,lora,phased} [--ttt-... knobs, as golf eval]]
              [--model FILE.py:NAME] [--model-config FILE] [--set KEY=VALUE ...] [--code-file PATH ...]
    golf inspect BLOB|DIR
    golf verify DIR [--budget NAME|BYTES] [--data DIR] [--seq-len L] [--stride S] [--max-tokens N]
                [--code-file PATH ...]

The work is the packaging core's (artifact.pack, artifact.submission, artifact.verify); this
module reads the flags, resolves the bundled defaults and prints the tables. Every command
takes --json.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from analysis.cliutil import (Meter, add_code_file_flag, add_code_form_flags, add_json_flag, add_model_flags,
                              default_budget, emit, model_spec, say_model)
from analysis.cmd_eval import add_device_flag, add_ttt_flags, ttt_config_from_args
from artifact.budget import resolve_budget
from artifact.contain import Limits
from artifact.container import inspect as inspect_blob
from artifact.pipeline import pack_checkpoint
from artifact.runtime.errors import ArtifactError
from artifact.submission import BLOB, CONFIG, ENTRY, MARKER, RUNTIME_PACKAGE, TTT_MODULE, is_submission
from artifact.verify import DEFAULT_TIMEOUT_S, VerifyError, verify
from train.bundled import BUNDLED_CHECKPOINT, BUNDLED_DATA


# ----------------------------------------------------------------------------- pack
def add_pack_arguments(p) -> None:
    p.add_argument("checkpoint", nargs="?", default=None, metavar="CKPT",
                   help="checkpoint folder, .pt or .safetensors file (default: the bundled checkpoint)")
    p.add_argument("--recipe", required=True, metavar="NAME|PATH",
                   help="recipe name (see artifact/recipes) or a recipe .toml path (required)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="submission folder to write, replaced only if a previous submission (required)")
    p.add_argument("--data", default=None, metavar="DIR", help="data root for calibration tokens (default: the bundled data)")
    p.add_argument("--budget", default=None, metavar="NAME|BYTES",
                   help="budget name in budgets.toml or a byte count (default: demo for the bundled checkpoint, "
                        "else track_10min_16mb)")
    p.add_argument("--seq-len", type=int, default=None, metavar="L",
                   help="eval seq_len recorded in config.json (default: the checkpoint's training seq_len)")
    add_code_form_flags(p)
    add_ttt_flags(p)  # the very flags of `golf eval --ttt`: a packed submission scores what that scores
    add_model_flags(p)
    add_code_file_flag(p)
    add_json_flag(p)


def run_pack(args) -> int:
    ckpt = Path(args.checkpoint) if args.checkpoint else BUNDLED_CHECKPOINT
    ttt = ttt_config_from_args(args) if args.ttt else None  # bad knobs fail before minutes of packing
    done = pack_checkpoint(ckpt, args.recipe, args.out, args.data or BUNDLED_DATA,
                           args.budget or default_budget(args.checkpoint), args.compact, args.seq_len, ttt,
                           progress=Meter, model=model_spec(args), code_files=args.code_file)
    say_model(done.loaded)
    report = inspect_blob(Path(args.out) / BLOB)
    result = {"out": str(args.out), "recipe": done.info["recipe"], "checkpoint": str(ckpt), "compact": args.compact,
              "model": done.info["model"],
              "seq_len": done.eval_defaults["seq_len"], "ttt": done.eval_defaults.get("ttt"),
              "predicted_tensor_bytes": done.info["predicted_tensor_bytes"],
              "tensors": report["tensors"], "blob": report["totals"],
              "bytes": done.count.to_dict(), "files": done.written["files"]}
    emit(result, args.json, _pack_text)
    return 0 if done.count.fits else 1


def _num(value) -> str:
    return "n/a" if value is None else f"{value:,}"


def _tensor_table(rows) -> list[str]:
    width = max([len(r["name"]) for r in rows] + [6])
    lines = [f"{'tensor':<{width}}  {'scheme':<22} {'params':>10} {'bytes':>10} {'bits/w':>7}  codec"]
    for r in rows:
        lines.append(f"{r['name']:<{width}}  {r['scheme']:<22} {r['params']:>10,} {r['bytes']:>10,} "
                     f"{r['bits_per_weight']:>7.3f}  {r['codec']} stream #{r['stream']}"
                     f"{' (shared: an attributed share)' if r['shared'] else ''}")
    return lines


def _pack_text(r: dict) -> str:
    b = r["bytes"]
    verdict = "fits" if b["fits"] else "OVER"
    lines = _tensor_table(r["tensors"]) + [
        "",
        f"recipe       {r['recipe']}  ({'compact self-extracting run.py' if r['compact'] else 'plain modules'})",
        f"model        {b['model_bytes']:,} bytes ({r['blob']['bits_per_weight']:.3f} bits/weight over "
        f"{r['blob']['params']:,} params; manifest+header {r['blob']['overhead_bytes']:,})",
        f"predicted    {_num(r['predicted_tensor_bytes'])} bytes of tensor streams (size models, each "
        f"part alone); actual {r['blob']['stream_bytes']:,}",
        f"code         {b['code_bytes']:,} bytes" + _shipped_as_is(r["files"]),
        *([_ttt_setting_line(r["ttt"])] if r.get("ttt") else []),
        f"total        {b['total_bytes']:,} bytes vs {b['budget']} limit {b['limit']:,}: {verdict}, "
        f"headroom {b['headroom']:,}",
        f"wrote        {r['out']}  (prove it: golf verify {r['out']})",
    ]
    if not b["fits"]:
        lines.append(f"OVER total={b['total_bytes']} limit={b['limit']} over_by={-b['headroom']} "
                     f"({b['budget']}): the submission does not fit its budget")
    return "\n".join(lines)


def _shipped_as_is(files: list[dict]) -> str:
    """The user's files among the shipped ones (a model file, code files), as a suffix."""
    own = {BLOB, CONFIG, ENTRY}
    theirs = [f"{f['path']} {f['bytes']:,}" for f in files if f["path"] not in own and "/" not in f["path"]]
    return f" (as they are: {', '.join(theirs)})" if theirs else ""


def _ttt_setting_line(t: dict) -> str:
    knobs = (f"rank {t['lora_rank']} lr {t['lora_lr']:g}, {t['epochs']} epoch(s)" if t["mode"] != "chunked"
             else f"lr {t['lr']:g}, {t['epochs']} epoch(s)")
    chunk = f"chunk {t['chunk_tokens']}" if t["chunk_tokens"] else "default chunk"
    return f"ttt          {t['mode']} ({knobs}, {chunk}) in config.json; ships {RUNTIME_PACKAGE}/{TTT_MODULE}.py"


# ----------------------------------------------------------------------------- inspect
def add_inspect_arguments(p) -> None:
    p.add_argument("blob", metavar="BLOB", help="model.blob file or a submission folder (required)")
    add_json_flag(p)


def run_inspect(args) -> int:
    path = Path(args.blob)
    if path.is_dir():
        path = path / BLOB
        if not path.is_file():
            raise ArtifactError(f"{args.blob}: folder has no {BLOB}")
    report = inspect_blob(path)
    report["path"] = str(path)
    emit(report, args.json, _inspect_text)
    return 0


def _inspect_text(r: dict) -> str:
    t = r["totals"]
    lines = _tensor_table(r["tensors"]) + ["", "streams:"]
    lines += [f"  #{s['index']:<3} {s['codec']:<24} raw {s['raw_bytes']:>11,}  stored {s['bytes']:>10,}"
              for s in r["streams"]]
    lines.append(f"total: {t['tensors']} tensors, {t['params']:,} params, {t['blob_bytes']:,} bytes "
                 f"({t['tensor_bytes']:,} attributed to tensors + {t['overhead_bytes']:,} header/manifest/checksum), "
                 f"{t['bits_per_weight']:.3f} bits/weight  [{r['path']}]")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- verify
def add_verify_arguments(p) -> None:
    p.add_argument("dir", metavar="DIR", help="submission folder (required)")
    p.add_argument("--budget", default=None, metavar="NAME|BYTES",
                   help="budget name or byte count (default: the one recorded at pack time, else demo)")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="data root or dataset folder with val shards (default: the bundled data)")
    p.add_argument("--seq-len", type=int, default=None, metavar="L",
                   help="window length (default: the submission's config.json)")
    p.add_argument("--stride", type=int, default=None, metavar="S", help="sliding-window stride (default: flat eval)")
    p.add_argument("--max-tokens", type=int, default=None, metavar="N",
                   help="score only the first N val tokens, a quick look (default: all)")
    add_device_flag(p)
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                   help=f"seconds before the run is abandoned (default: {DEFAULT_TIMEOUT_S:.0f})")
    p.add_argument("--max-memory", type=float, default=None, metavar="GB",
                   help="memory cap of the submission's process, GB (default: 3/4 of this machine's RAM)")
    p.add_argument("--max-cpu", type=int, default=None, metavar="SECONDS",
                   help="CPU-time cap of the submission's process (default: timeout x CPU count)")
    add_code_file_flag(p, packs=False)
    add_json_flag(p)


def _recorded_budget(folder: Path) -> str | None:
    if not is_submission(folder):
        return None
    value = json.loads((folder / MARKER).read_text(encoding="utf-8")).get("budget")
    return str(value) if value is not None else None


def run_verify(args) -> int:
    folder = Path(args.dir)
    budget = resolve_budget(args.budget or _recorded_budget(folder))
    limits = Limits(args.timeout, int(args.max_memory * 1e9) if args.max_memory else None, args.max_cpu)
    try:
        result = verify(folder, budget, args.data or BUNDLED_DATA, seq_len=args.seq_len, stride=args.stride,
                        max_tokens=args.max_tokens, device=args.device, timeout=args.timeout,
                        code_files=args.code_file, progress=Meter("verify"), limits=limits)
    except VerifyError as e:
        line = "ERROR " + " ".join(str(e).split())  # one line, whatever the run printed
        emit({"verdict": "ERROR", "error": str(e), "line": line}, args.json, lambda r: r["line"])
        return 2
    emit(result.to_dict(), args.json, _verify_text)
    return 0 if result.fits else 1


def _verify_text(r: dict) -> str:
    run, b, c = r["run"], r["bytes"], r["containment"]
    files = ", ".join(f"{f['path']} {f['bytes']:,}" for f in b["files"] if f["role"] != "not counted")
    left_out = [f["path"] for f in b["files"] if f["role"] == "not counted"]
    where = [os.path.commonpath(list(run["modules"].values()))] if run["modules"] else []
    mode = run["mode"] + (f" stride {run['stride']}" if run.get("stride") else "")
    fences = "; ".join(f"{k} {v}" for k, v in c.items() if k not in ("not enforced", "memory_bytes", "cpu_seconds",
                                                                       "file_bytes"))
    return "\n".join([
        f"counted      {files}" + (f" (not counted, not run: {', '.join(left_out)})" if left_out else ""),
        f"packed       {'submission.json: every counted file is what golf packed' if r['packed_by_golf'] else 'no golf submission.json: file hashes not checked'}",
        f"contained    memory {c.get('memory_bytes', 0) / 1e9:.1f} GB, CPU {c.get('cpu_seconds', 0):,} s, files "
        f"{c.get('file_bytes', 0) / 1e9:.1f} GB; {fences}",
        *([f"NOT ENFORCED {', '.join(c['not enforced'])}"] if c.get("not enforced") else []),
        f"decoded      {run['n_tensors']} tensors, every hash verified, in {run['decode_seconds']:.2f} s",
        f"modules      {len(run['modules'])} project modules, all from the clean copy ({', '.join(where)})",
        f"scored       {run['tokens']:,} tokens / {run['bytes']:,} bytes, {mode} seq_len {run['seq_len']} on "
        f"{run['device']} in {run['eval_seconds']:.1f} s: val_loss {run['val_loss']:.6f}",
        f"re-scored    by golf's own decoder and eval: the state run.py scored is model.blob's (digest "
        f"{r['score']['digest'][:12]}…), val_bpb {r['score']['val_bpb']:.8f} matches",
        *(_verify_ttt_lines(run) if run.get("ttt") else []),
        r["line"],
    ])


def _verify_ttt_lines(run: dict) -> list[str]:
    t = run["ttt"]
    docs = f", {t['documents']:,} documents" if t["documents"] else ""
    return [
        f"ttt          {t['mode']}, chunk {t['chunk_tokens']}, {t['chunks']:,} chunks{docs}, {t['updates']:,} "
        f"updates in {t['seconds']:.1f} s (scoring {t['score_seconds']:.1f} s, training {t['train_seconds']:.1f} s)",
        f"ttt val_bpb  {t['val_bpb']:.8f}  (plain {run['val_bpb']:.8f}, gain {run['val_bpb'] - t['val_bpb']:+.8f}); "
        f"val_loss {t['val_loss']:.6f}",
    ]
