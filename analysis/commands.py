"""`golf pack`, `golf inspect`, `golf verify`: checkpoint → submission folder → proof it works.

    golf pack [CKPT] --recipe NAME|PATH --out DIR [--data DIR] [--budget NAME|BYTES] [--compact]
              [--ttt {chunked,lora,phased} [--ttt-... knobs, as golf eval]]
    golf inspect BLOB|DIR
    golf verify DIR [--budget NAME|BYTES] [--data DIR] [--seq-len L] [--stride S] [--max-tokens N]

This is the glue between the packaging core (artifact/, which never imports train/) and the
model code: it names the project modules a submission ships (`SHIPPED_MODULES`, the one list),
loads checkpoints and data, and prints the tables. Every command takes --json.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from artifact.budget import count_submission, resolve_budget
from artifact.cliutil import Progress, add_code_form_flags, add_json_flag, emit
from artifact.container import inspect as inspect_blob
from artifact.errors import ArtifactError, ConfigError
from artifact.submission import BLOB, MARKER, TTT_MODULE, check_out_dir, is_submission, write_submission
from train.evaluate import add_ttt_flags, ttt_config_from_args

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# The project modules run.py imports, shipped as copies in the same layout (empty package
# __init__.py files are added by write_submission). verify proves this set is closed: a module
# missing here fails the fresh-process run instead of falling back to the installed project.
SHIPPED_MODULES = (
    "artifact/errors.py",
    "artifact/decoder.py",
    "artifact/cliutil.py",
    "train/model.py",
    "train/layers.py",
    "train/embeddings.py",
    "train/shards.py",
    "train/byte_count.py",
    "train/tokenizer.py",
    "train/evaluate.py",
)
# Shipped in addition only when the submission scores with test-time training (config.json's
# eval.ttt): a submission without TTT carries, and is counted for, none of its bytes.
TTT_MODULES = (TTT_MODULE,)
DEFAULT_SEQ_LEN = 1024


def ship_modules(ttt: bool = False) -> list[tuple[Path, str]]:
    """(source file, destination inside the submission) of every shipped project module; with
    `ttt` also the test-time-training module."""
    return [(PROJECT_ROOT / rel, rel) for rel in SHIPPED_MODULES + (TTT_MODULES if ttt else ())]


def register(sub) -> None:
    _register_pack(sub)
    _register_inspect(sub)
    _register_verify(sub)


# ----------------------------------------------------------------------------- pack
def _register_pack(sub) -> None:
    p = sub.add_parser("pack", help="quantize + compress a checkpoint into a submission folder",
                       description="Pack a checkpoint with a recipe into a submission folder: "
                                   "model.blob, config.json, run.py and the modules it needs.")
    p.add_argument("checkpoint", nargs="?", default=None,
                   help="checkpoint folder, .pt or .safetensors file (default: the bundled checkpoint)")
    p.add_argument("--recipe", required=True, help="recipe name (see artifact/recipes) or a recipe .toml path")
    p.add_argument("--out", required=True, help="submission folder to write (replaced only if a previous submission)")
    p.add_argument("--data", default=None, help="data root for calibration tokens (default: bundled data)")
    p.add_argument("--budget", default=None, help="budget name in budgets.toml or a byte count (default: demo)")
    p.add_argument("--seq-len", type=int, default=None,
                   help="eval seq_len recorded in config.json (default: the checkpoint's training seq_len)")
    add_code_form_flags(p)
    add_ttt_flags(p)  # the very flags of `golf eval --ttt`: a packed submission scores what that scores
    add_json_flag(p)
    p.set_defaults(run=_run_pack, help_parser=p)


def pack_ttt_settings(args, seq_len: int) -> dict | None:
    """config.json's eval.ttt table from the --ttt flags (None without --ttt): every TTTConfig
    field, checked by the same TTTConfig.from_dict the shipped run.py reads it back with."""
    if not args.ttt:
        return None
    from train.ttt import TTTConfig

    cfg = TTTConfig.from_dict(ttt_config_from_args(args).to_dict(), source="--ttt flags")
    cfg.chunk_for(seq_len)  # a document-mode chunk longer than the eval window fails now, not at eval
    return cfg.to_dict()


def train_seq_len(meta) -> int | None:
    """The training sequence length recorded in a checkpoint's meta, if any."""
    if not isinstance(meta, dict):
        return None
    for key in ("seq_len", "train_seq_len"):
        if isinstance(meta.get(key), int) and meta[key] > 0:
            return meta[key]
    for section in ("train_config", "train", "config"):
        found = train_seq_len(meta.get(section))
        if found:
            return found
    return None


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _plain(value):
    """JSON-able copy of pack figures (numpy/torch scalars → float/int, NaN → None)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, int, bool)):
        return value
    if hasattr(value, "tolist"):
        return _plain(value.tolist())
    if hasattr(value, "__dict__"):
        return _plain(vars(value))
    return str(value)


def recipe_hessians(model, cfg, recipe, data_arg):
    """Hessians when the recipe needs them (train tokens from `data_arg`, default the bundled
    data); (None, None) otherwise. Returns (hessians, dataset name or None)."""
    from artifact.pack import calibrate_for_recipe, recipe_needs_hessians
    from train.bundled import BUNDLED_DATA
    from train.shards import load_tokens, resolve_data

    if not recipe_needs_hessians(recipe):
        return None, None
    cal = recipe.calibration
    tokens, source = None, "self-generated"
    if cal.source == "train":
        data = resolve_data(data_arg or BUNDLED_DATA, vocab_size=cfg.vocab_size)
        tokens = load_tokens(data.require_train(), cfg.vocab_size)
        source = data.dataset_dir.name
    meter = Progress(f"calibrate ({source})", -(-cal.n_seqs // cal.batch_size))
    hessians = calibrate_for_recipe(model, recipe, tokens, model.hidden, progress=meter.update)
    return hessians, source


def _run_pack(args) -> int:
    from artifact.pack import pack_state_dict
    from artifact.recipe import load_recipe
    from train.bundled import BUNDLED_CHECKPOINT
    from train.checkpoint import load_checkpoint, locate_checkpoint

    budget = resolve_budget(args.budget)
    check_out_dir(args.out)  # refuse before minutes of packing, not after
    ckpt = Path(args.checkpoint) if args.checkpoint else BUNDLED_CHECKPOINT
    recipe = load_recipe(args.recipe)
    model, cfg, meta = load_checkpoint(ckpt)
    weights_file, _ = locate_checkpoint(ckpt)
    seq_len = args.seq_len or train_seq_len(meta) or DEFAULT_SEQ_LEN
    if seq_len < 1:
        raise ConfigError(f"--seq-len {seq_len} must be >= 1")
    ttt = pack_ttt_settings(args, seq_len)  # bad knobs fail before minutes of packing
    eval_defaults = {"seq_len": seq_len} if ttt is None else {"seq_len": seq_len, "ttt": ttt}
    hessians, calib_data = recipe_hessians(model, cfg, recipe, args.data)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    packed = pack_state_dict(state, recipe, hessians, progress=Progress("pack", len(state)))
    info = {
        "recipe": recipe.name,
        "budget": str(args.budget) if args.budget is not None else budget.name,
        "checkpoint": {"path": str(ckpt), "file": weights_file.name, "sha256": _file_sha256(weights_file)},
        "calibration_data": calib_data,
        "predicted_tensor_bytes": _predicted_bytes(packed.rows),
        "tensors": _plain(list(packed.rows)),
    }
    written = write_submission(args.out, packed.entries, cfg.to_dict(), eval_defaults,
                               ship_modules(ttt=ttt is not None), compact=args.compact, info=info)
    count = count_submission(args.out, budget)
    report = inspect_blob(Path(args.out) / BLOB)
    result = {"out": str(args.out), "recipe": recipe.name, "checkpoint": str(ckpt), "compact": args.compact,
              "seq_len": seq_len, "ttt": ttt, "predicted_tensor_bytes": info["predicted_tensor_bytes"],
              "tensors": report["tensors"], "blob": report["totals"],
              "bytes": count.to_dict(), "files": written["files"]}
    emit(result, args.json, _pack_text)
    return 0


def _predicted_bytes(rows) -> int | None:
    """Σ of the packer's per-tensor size predictions (None when it made none)."""
    sizes = [r.get("bytes") for r in rows]
    return int(sum(sizes)) if sizes and all(isinstance(b, int) for b in sizes) else None


def _num(value) -> str:
    return "n/a" if value is None else f"{value:,}"


def _tensor_table(rows) -> list[str]:
    width = max([len(r["name"]) for r in rows] + [6])
    lines = [f"{'tensor':<{width}}  {'scheme':<22} {'params':>10} {'bytes':>10} {'bits/w':>7}  codec"]
    for r in rows:
        lines.append(f"{r['name']:<{width}}  {r['scheme']:<22} {r['params']:>10,} {r['bytes']:>10,} "
                     f"{r['bits_per_weight']:>7.3f}  {r['codec']}{' (shared stream)' if r['shared'] else ''}")
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
        f"code         {b['code_bytes']:,} bytes",
        *([_ttt_setting_line(r["ttt"])] if r.get("ttt") else []),
        f"total        {b['total_bytes']:,} bytes vs {b['budget']} limit {b['limit']:,}: {verdict}, "
        f"headroom {b['headroom']:,}",
        f"wrote        {r['out']}  (prove it: golf verify {r['out']})",
    ]
    return "\n".join(lines)


def _ttt_setting_line(t: dict) -> str:
    knobs = (f"rank {t['lora_rank']} lr {t['lora_lr']:g}, {t['epochs']} epoch(s)" if t["mode"] != "chunked"
             else f"lr {t['lr']:g}, {t['epochs']} epoch(s)")
    chunk = f"chunk {t['chunk_tokens']}" if t["chunk_tokens"] else "default chunk"
    return f"ttt          {t['mode']} ({knobs}, {chunk}) in config.json; ships {TTT_MODULE}"


# ----------------------------------------------------------------------------- inspect
def _register_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="list every tensor of an artifact from the blob alone",
                       description="Scheme, bytes and bits per weight of every tensor, and totals, "
                                   "read from the blob's manifest (no checkpoint needed).")
    p.add_argument("blob", help="model.blob file or a submission folder")
    add_json_flag(p)
    p.set_defaults(run=_run_inspect, help_parser=p)


def _run_inspect(args) -> int:
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
                 f"({t['stream_bytes']:,} in streams + {t['overhead_bytes']:,} header/manifest/checksum), "
                 f"{t['bits_per_weight']:.3f} bits/weight  [{r['path']}]")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- verify
def _register_verify(sub) -> None:
    p = sub.add_parser("verify", help="run a submission in a fresh process, count its bytes, score it",
                       description="Copy the submission to a clean folder, run its run.py in a fresh "
                                   "Python that cannot import this project, check every tensor hash, "
                                   "count the shipped bytes against the budget and score val_bpb. "
                                   "Exit 0 FITS, 1 OVER, 2 error or mismatch.")
    p.add_argument("dir", help="submission folder")
    p.add_argument("--budget", default=None,
                   help="budget name or byte count (default: the one recorded at pack time, else demo)")
    p.add_argument("--data", default=None, help="data root or dataset folder with val shards (default: bundled data)")
    p.add_argument("--seq-len", type=int, default=None, help="window length (default: the submission's config.json)")
    p.add_argument("--stride", type=int, default=None, help="sliding-window stride (default: flat eval)")
    p.add_argument("--max-tokens", type=int, default=None, help="score only the first N val tokens (quick look)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto = CUDA (bf16 autocast) when available, else CPU (float32)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds before the run is abandoned")
    add_json_flag(p)
    p.set_defaults(run=_run_verify, help_parser=p)


def _recorded_budget(folder: Path) -> str | None:
    if not is_submission(folder):
        return None
    value = json.loads((folder / MARKER).read_text(encoding="utf-8")).get("budget")
    return str(value) if value is not None else None


def _run_verify(args) -> int:
    from artifact.verify import VerifyError, verify
    from train.bundled import BUNDLED_DATA

    folder = Path(args.dir)
    budget = resolve_budget(args.budget or _recorded_budget(folder))
    try:
        result = verify(folder, budget, args.data or BUNDLED_DATA, seq_len=args.seq_len, stride=args.stride,
                        max_tokens=args.max_tokens, device=args.device, timeout=args.timeout)
    except VerifyError as e:
        emit({"verdict": "ERROR", "error": str(e), "line": f"ERROR {e}"}, args.json, lambda r: r["line"])
        return 2
    emit(result.to_dict(), args.json, _verify_text)
    return 0 if result.fits else 1


def _verify_text(r: dict) -> str:
    run, b = r["run"], r["bytes"]
    files = ", ".join(f"{f['path']} {f['bytes']:,}" for f in b["files"] if f["role"] != "not counted")
    where = sorted({Path(p).parent.parent.as_posix() for p in run["modules"].values()})
    mode = run["mode"] + (f" stride {run['stride']}" if run.get("stride") else "")
    return "\n".join([
        f"counted      {files}",
        f"decoded      {run['n_tensors']} tensors, every hash verified, in {run['decode_seconds']:.2f} s",
        f"modules      {len(run['modules'])} project modules, all from the clean copy ({', '.join(where)})",
        f"scored       {run['tokens']:,} tokens / {run['bytes']:,} bytes, {mode} seq_len {run['seq_len']} on "
        f"{run['device']} in {run['eval_seconds']:.1f} s: val_loss {run['val_loss']:.6f}",
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
