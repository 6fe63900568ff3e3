"""`golf data fetch|build|check|bundle`: the challenge's data pipeline, corpus -> tokenizer ->
shards, and the check of a data folder (the work itself: train.corpus, train.data_build)."""

from __future__ import annotations

import time
from pathlib import Path

from analysis.cliutil import Meter, add_json_flag, emit, say
from artifact.runtime.errors import DataError
from train import caseops
from train.bundled import BUNDLED_DATA
from train.corpus import DEFAULT_SEED, fetch_corpus
from train.data_build import CASE_TRANSFORMS, DEFAULT_SHARD_TOKENS, build_dataset, check_data
from train.make_bundle import DEFAULT_TRAIN_TOKENS, make_bundle


def add_fetch_arguments(f) -> None:
    f.add_argument("--out", default="corpus", metavar="DIR",
                   help="corpus folder to write docs.jsonl into (default: corpus)")
    f.add_argument("--seed", type=int, default=DEFAULT_SEED, metavar="N",
                   help=f"document shuffle seed (default: {DEFAULT_SEED})")
    add_json_flag(f)


def add_build_arguments(b) -> None:
    b.add_argument("--corpus", required=True, metavar="DIR", help="folder of .txt/.jsonl documents, or one file (required)")
    b.add_argument("--out", required=True, metavar="DIR",
                   help="data folder to create: datasets/, tokenizers/, manifest.json (required)")
    b.add_argument("--vocab", type=int, required=True, metavar="V", help="SentencePiece vocabulary size (required)")
    b.add_argument("--val-docs", type=int, required=True, metavar="N",
                   help="the first N documents form the val split (required)")
    b.add_argument("--name", default="golf", metavar="NAME", help="file-name prefix (default: golf)")
    b.add_argument("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS, metavar="N",
                   help=f"tokens per shard (default: {DEFAULT_SHARD_TOKENS:,})")
    b.add_argument("--case-transform", choices=CASE_TRANSFORMS, default="none", metavar="NAME",
                   help="none, or caseops = lossless lower-casing with operator tokens + val byte side-cars "
                        "(seed 004) (default: none)")
    add_json_flag(b)


def add_check_arguments(c) -> None:
    c.add_argument("dir", nargs="?", default=str(BUNDLED_DATA), metavar="DIR", help="data folder (default: the bundled data)")
    add_json_flag(c)


def run_fetch(args) -> int:
    summary = fetch_corpus(args.out, seed=args.seed)
    summary["out"] = str(Path(args.out) / "docs.jsonl")
    emit(summary, args.json, _fetch_text)
    return 0


def _fetch_text(s: dict) -> str:
    lines = [f"{s['out']}: {s['documents']} documents, {s['bytes'] / 1e6:.2f} MB ({s['seconds']} s)"]
    for name, r in s["sources"].items():
        lines.append(f"  {name:12s} " + (f"{r['documents']:6d} docs {r['bytes'] / 1e6:7.2f} MB"
                                         if "error" not in r else f"skipped: {r['error']}"))
    return "\n".join(lines)


def run_build(args) -> int:
    t0 = time.perf_counter()
    manifest = build_dataset(args.corpus, args.out, args.vocab, args.val_docs, args.name, args.shard_tokens,
                             case_transform=args.case_transform, progress=Meter("data build: encoding"), log=say)
    stats = manifest["stats"]
    result = {"out": str(args.out), "dataset": f"{args.out}/{manifest['datasets'][0]['path']}",
              "tokenizer": f"{args.out}/{manifest['tokenizer']['model']}", "vocab_size": args.vocab,
              "case_transform": args.case_transform, "byte_rule": manifest["byte_rule"], **stats,
              # original text bytes per token (BOS included): the tokenizer's compression
              **{f"bytes_per_token_{s}": round(stats[f"text_bytes_{s}"] / max(1, stats[f"tokens_{s}"]), 4)
                 for s in ("val", "train")},
              "seconds": round(time.perf_counter() - t0, 2)}
    emit(result, args.json, _build_text)
    return 0


def _build_text(r: dict) -> str:
    lines = [
        f"{r['dataset']} (tokenizer {r['tokenizer']}, vocab {r['vocab_size']}, case transform {r['case_transform']})",
        *(f"  {s:5s}: {r[f'docs_{s}']} docs, {r[f'tokens_{s}']} tokens, {r[f'text_bytes_{s}']} text bytes "
          f"({r[f'bytes_per_token_{s}']:.3f} per token), {r[f'files_{s}']} files" for s in ("val", "train")),
    ]
    if r["case_transform"] == caseops.NAME:
        lines.append(f"  byte side-cars: {r['files_val_bytes']} files, {r['sidecar_bytes_val']} original bytes "
                     f"({r['normalized_bytes_val']} after the tokenizer's normalisation, what a byte "
                     f"table would count); operator tokens {r['operator_tokens_val']} val, "
                     f"{r['operator_tokens_train']} train")
    lines.append(f"  built in {r['seconds']} s")
    return "\n".join(lines)


def run_check(args) -> int:
    if Path(args.dir) == BUNDLED_DATA and not BUNDLED_DATA.exists():
        raise DataError(f"{BUNDLED_DATA}: the bundled data has not been built yet; "
                        "pass a data folder (e.g. one written by `golf data build`)")
    result = check_data(args.dir)
    emit(result, args.json, _check_text)
    return 0 if result["ok"] else 1


def _check_text(r: dict) -> str:
    lines = [f"{r['dataset']} (tokenizer {r['tokenizer']}, vocab {r['vocab_size']})"]
    for split, s in r["splits"].items():
        docs = f", {s['documents']} documents" if "documents" in s else ""
        nbytes = f", {s['bytes']} bytes" if "bytes" in s else ""
        lines.append(f"  {split:9s}: {s['files']} files, {s['tokens']} tokens{docs}{nbytes}")
    if r["ok"]:
        lines.append("OK")
    else:
        more = f" (and {len(r['problems']) - 1} more)" if len(r["problems"]) > 1 else ""
        lines.append(f"FAILED: {r['problems'][0]}{more}")
    return "\n".join(lines)


def add_bundle_arguments(p) -> None:
    p.add_argument("--data", required=True, type=Path, metavar="DIR", help="built dataset, golf data build --out (required)")
    p.add_argument("--checkpoint", required=True, type=Path, metavar="DIR",
                   help="checkpoint folder, golf train --out (required)")
    p.add_argument("--train-tokens", type=int, default=DEFAULT_TRAIN_TOKENS, metavar="N",
                   help=f"train tokens kept for calibration and tests (default: {DEFAULT_TRAIN_TOKENS:,})")
    add_json_flag(p)


def run_bundle(args) -> int:
    result = make_bundle(args.data, args.checkpoint, args.train_tokens)
    emit(result, args.json, _bundle_text)
    return 0


def _bundle_text(r: dict) -> str:
    f = r["figures"]
    return (f"seq_len {f['seq_len']}, {f['params']:,} params, unigram bpb {f['unigram_bpb']:.6f}\n"
            f"flat val_bpb {f['flat']['val_bpb']:.6f}  sliding val_bpb {f['sliding']['val_bpb']:.6f}\n"
            f"bundle: {r['bundle_bytes']:,} bytes in {r['bundle']}")
