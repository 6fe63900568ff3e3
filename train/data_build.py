"""`golf data fetch|build|check`: the challenge's data pipeline on any corpus.

build: documents in corpus order; the first N are validation and never touch the tokenizer,
which is trained (challenge settings, train.tokenizer) on the rest; every document becomes
`[BOS] + ids` (no EOS); val shards are written first, then train, each cut every
`--shard-tokens` tokens (a document may straddle two shards). Layout:

    OUT/datasets/<name>_sp<V>/<name>_{val,train}_<i:06d>.bin
    OUT/tokenizers/<name>_<V>_bpe.model (+ .vocab)
    OUT/manifest.json

`--case-transform caseops` (train.caseops) builds on the lossless capitalisation transform
instead: the tokenizer is trained on transformed train text (operators as user-defined
symbols), both splits hold transformed text, and every val shard gets a byte side-car
`<name>_val_bytes_<i:06d>.bin` (one entry per token: the original UTF-8 bytes it covers, 0 for
BOS and operators) that replaces the tokenizer's byte table in val_bpb.

The whole OUT folder is built next to itself and renamed into place, so it is either complete
or absent. check: validates every shard of a data folder (ours or the challenge's own layout).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np

from artifact.runtime.errors import DataError, GolfError
from artifact.runtime.files import atomic_write_json, replace_folder
from artifact.runtime.progress import Progress
from train import caseops
from train.corpus import corpus_hash, read_documents
from artifact.runtime.shards import read_header, read_shard, resolve_data, shard_name
from train.shard_writer import write_shard
from artifact.runtime.tokenizer import BOS_ID, EOS_ID, load_tokenizer
from train.tokenizer import MAX_SENTENCE_BYTES, TRAINER_SETTINGS, encode_documents, train_tokenizer

MANIFEST_FORMAT = "golf-data/1"
CASE_TRANSFORMS = ("none", caseops.NAME)
DEFAULT_SHARD_TOKENS = 10**8
ENCODE_BATCH = 512


# --- build ---------------------------------------------------------------------------------

def build_dataset(corpus: str | Path, out: str | Path, vocab_size: int, val_docs: int, name: str = "golf",
                  shard_tokens: int = DEFAULT_SHARD_TOKENS, progress: Progress | None = None,
                  case_transform: str = "none", log: Callable[[str], None] | None = None) -> dict:
    """Build shards + tokenizer + manifest from a corpus into `out` (replacing an earlier build
    there); `case_transform` "caseops" builds on the CaseOps transform with byte side-cars.
    `progress(done, total, note)` hears how many documents are encoded, `log` what is being done.
    Returns the manifest."""
    out = Path(out)
    if case_transform not in CASE_TRANSFORMS:
        raise DataError(f"--case-transform {case_transform!r}: expected one of {', '.join(CASE_TRANSFORMS)}")
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
    return replace_folder(out, lambda tmp: _build_into(tmp, texts, docs, vocab_size, val_docs, name, shard_tokens,
                                                       corpus, progress, log, case_transform == caseops.NAME))


def _build_into(root: Path, texts: list[str], docs, vocab_size: int, val_docs: int, name: str,
                shard_tokens: int, corpus, progress: Progress | None, log: Callable[[str], None] | None,
                use_caseops: bool = False) -> dict:
    dataset = f"{name}_sp{vocab_size}"
    dataset_dir = root / "datasets" / dataset
    dataset_dir.mkdir(parents=True)
    say = log or (lambda _msg: None)
    train_texts = texts[val_docs:]
    what = "CaseOps-encoded " if use_caseops else ""
    say(f"data build: training a {vocab_size}-piece BPE tokenizer on {len(train_texts)} {what}train documents")
    tok_texts, extra = _caseops_tokenizer_input(train_texts) if use_caseops else (train_texts, {})
    model = train_tokenizer(tok_texts, root / "tokenizers" / f"{name}_{vocab_size}_bpe", vocab_size, extra)
    sp = load_tokenizer(model, vocab_size)
    op_ids = np.array([sp.piece_to_id(op) for op in caseops.OPERATORS]) if use_caseops else None
    writer = _ShardWriter(dataset_dir, name, shard_tokens)
    stats = Counter()
    report = progress or (lambda done, total, note: None)
    threads = max(1, min(4, os.cpu_count() or 1))
    for split, lo, hi in (("val", 0, val_docs), ("train", val_docs, len(texts))):
        for start in range(lo, hi, ENCODE_BATCH):
            batch = texts[start:min(start + ENCODE_BATCH, hi)]
            if not use_caseops:
                encoded = [(ids, None) for ids in encode_documents(sp, batch)]
            elif split == "val":
                encoded = caseops.encode_with_bytes(sp, batch, BOS_ID, threads)
            else:
                encoded = [(ids, None) for ids in encode_documents(sp, [caseops.encode(t) for t in batch])]
            for text, (ids, nbytes) in zip(batch, encoded):
                writer.add(split, ids, nbytes)
                _count(stats, split, text, ids, nbytes, op_ids)
                if nbytes is not None:
                    # What the byte-table rule counts for this text: the tokenizer's normalised
                    # view (NFKC, whitespace runs collapsed). The side-car counts every original
                    # byte; this figure converts between the two (see _build_text).
                    stats["normalized_bytes_val"] += len(sp.normalize(text).replace("\u2581", " ").encode("utf-8"))
            report(start + len(batch), len(texts), "")
    writer.close()
    for split in ("val", "train"):
        stats[f"files_{split}"] = writer.files[split]
    for key in ("docs", "tokens", "files", "text_bytes"):
        stats[f"{key}_total"] = stats[f"{key}_val"] + stats[f"{key}_train"]
    if use_caseops:
        stats["files_val_bytes"] = writer.files["val_bytes"]
    manifest = _manifest(name, dataset, vocab_size, shard_tokens, dict(stats), docs, texts, val_docs,
                         model, corpus, extra, use_caseops)
    atomic_write_json(root / "manifest.json", manifest, indent=2)
    return manifest


def _count(stats: Counter, split: str, text: str, ids: np.ndarray, nbytes, op_ids) -> None:
    """Per-split figures of one document (side-car and operator counts for CaseOps builds)."""
    stats[f"docs_{split}"] += 1
    stats[f"tokens_{split}"] += int(ids.size)
    size = len(text.encode("utf-8"))
    stats[f"text_bytes_{split}"] += size
    if op_ids is not None:
        stats[f"operator_tokens_{split}"] += int(np.isin(ids, op_ids).sum())
    if nbytes is not None:
        covered = int(nbytes.sum())
        stats["sidecar_bytes_val"] += covered
        if covered != size:  # only a document the tokenizer reduces to no tokens at all
            stats["val_docs_without_tokens"] += 1


def _caseops_tokenizer_input(train_texts: list[str]) -> tuple[list[str], dict]:
    """The CaseOps tokenizer's training text and extra trainer settings.

    The operators add 3 UTF-8 bytes each, which would push many documents past SentencePiece's
    `max_sentence_length` (the trainer skips longer ones) and train the tokenizer on different
    documents than the plain build. So the documents are chosen by their ORIGINAL length, as in
    a plain build, and the length limit is raised to the longest encoded one kept."""
    kept = [caseops.encode(t) for t in train_texts
            if len(t.replace("\x00", " ").strip().encode("utf-8")) <= MAX_SENTENCE_BYTES]
    longest = max((len(t.replace("\x00", " ").strip().encode("utf-8")) for t in kept), default=0)
    extra = {"user_defined_symbols": list(caseops.OPERATORS),
             "max_sentence_length": max(MAX_SENTENCE_BYTES, longest)}
    return kept, extra


class _ShardWriter:
    """Concatenates documents into shards of exactly `shard_tokens` tokens (the last of each
    split shorter), val before train, as the challenge's exporter does. Documents given with
    byte counts (CaseOps val) also get a side-car shard cut at the same places."""

    def __init__(self, folder: Path, prefix: str, shard_tokens: int):
        self.folder, self.prefix, self.size = folder, prefix, shard_tokens
        self.chunks: list[np.ndarray] = []
        self.side_chunks: list[np.ndarray] = []
        self.held, self.split = 0, "val"
        self.files = {"val": 0, "train": 0, "val_bytes": 0}

    def add(self, split: str, ids: np.ndarray, nbytes: np.ndarray | None = None) -> None:
        if split != self.split:
            self.flush()
            self.split = split
        if nbytes is not None and (split != "val" or nbytes.shape != ids.shape):
            raise DataError(f"byte side-car for {split} document: {nbytes.shape} counts for {ids.shape} tokens")
        pos = 0
        while pos < ids.size:
            take = min(self.size - self.held, ids.size - pos)
            self.chunks.append(ids[pos:pos + take].astype(np.uint16))
            if nbytes is not None:
                self.side_chunks.append(nbytes[pos:pos + take].astype(np.uint16))
            self.held += take
            pos += take
            if self.held == self.size:
                self.flush()

    def flush(self) -> None:
        if self.held == 0:
            return
        tokens = np.concatenate(self.chunks)
        index = self.files[self.split]
        write_shard(self.folder / shard_name(self.prefix, self.split, index), tokens)
        self.files[self.split] += 1
        if self.side_chunks:
            side = np.concatenate(self.side_chunks)
            if side.size != tokens.size:  # every val document must come with its counts
                raise DataError(f"{self.folder}: val shard {index} has {tokens.size} tokens but "
                                f"{side.size} side-car entries")
            write_shard(self.folder / shard_name(self.prefix, "val_bytes", index), side)
            self.files["val_bytes"] += 1
        self.chunks, self.side_chunks, self.held = [], [], 0

    def close(self) -> None:
        self.flush()


def _manifest(name, dataset, vocab_size, shard_tokens, stats, docs, texts, val_docs, model, corpus,
              extra_settings=None, use_caseops=False) -> dict:
    sources: dict[str, dict[str, int]] = {}
    for i, doc in enumerate(docs):
        entry = sources.setdefault(doc.source, {"docs": 0, "bytes": 0, "val_docs": 0})
        entry["docs"] += 1
        entry["bytes"] += len(doc.text.encode("utf-8"))
        entry["val_docs"] += int(i < val_docs)
    train_kept = [t.replace("\x00", " ").strip() for t in texts[val_docs:]]
    too_long = sum(1 for t in train_kept if len(t.encode("utf-8")) > MAX_SENTENCE_BYTES)
    dataset_path = f"datasets/{dataset}"
    entry = {
        "name": dataset,
        "path": dataset_path,
        "vocab_size": vocab_size,
        "bos_id": BOS_ID,
        "eos_id": EOS_ID,
        "train_glob": f"{dataset_path}/{name}_train_*.bin",
        "val_glob": f"{dataset_path}/{name}_val_*.bin",
        "stats": stats,
    }
    if use_caseops:
        entry["val_bytes_glob"] = f"{dataset_path}/{name}_val_bytes_*.bin"
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
        "case_transform": caseops.describe() if use_caseops else None,
        "byte_rule": "side-car" if use_caseops else "tokenizer tables",
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
            "trainer_settings": {**TRAINER_SETTINGS, **(extra_settings or {})},
            "trained_on": "train split only" + (", CaseOps-encoded" if use_caseops else ""),
            "train_docs": sum(1 for t in train_kept if t),
            "train_docs_over_max_sentence_length": too_long,
        },
        # Same shape as the challenge's manifest entry, so tools reading theirs read ours.
        "datasets": [entry],
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


# --- check ---------------------------------------------------------------------------------

def check_data(path: str | Path) -> dict:
    """Validate every shard under a data folder against its tokenizer. Returns per-split
    figures and the list of problems (empty when all is well)."""
    paths = resolve_data(path)
    problems: list[str] = []
    vocab = sp = None
    if paths.tokenizer is None:
        problems.append(f"{paths.dataset_dir}: no SentencePiece tokenizer (.model) found")
    else:
        try:
            sp = load_tokenizer(paths.tokenizer)
            vocab = int(sp.vocab_size())
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
        if not problems:
            _check_sidecar_entries(paths, sp, splits["val_bytes"], problems)
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


def _check_sidecar_entries(paths, sp, side: dict, problems: list[str]) -> None:
    """Side-car entries of BOS and operator tokens must be 0 (they stand for no text); record
    the total bytes the side-cars count."""
    zero_ids = [BOS_ID]
    if sp is not None:
        unk = sp.unk_id()
        zero_ids += [i for i in (sp.piece_to_id(op) for op in caseops.OPERATORS) if i != unk]
    total = 0
    for vf, sf in zip(paths.val_files, paths.byte_sidecars):
        tokens, counts = np.asarray(read_shard(vf)), np.asarray(read_shard(sf))
        total += int(counts.sum(dtype=np.int64))
        bad = np.isin(tokens, zero_ids) & (counts != 0)
        if bad.any():
            at = int(np.argmax(bad))
            problems.append(f"{sf}: entry {at} is {int(counts[at])} bytes but its token {int(tokens[at])} "
                            "(BOS or a CaseOps operator) stands for no text")
    side["bytes"] = total


def _check_manifest(paths, splits, problems) -> None:
    """Compare token/document counts with the manifest when it records them (ours or theirs)."""
    if paths.manifest is None:
        return
    try:
        manifest = json.loads(paths.manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        problems.append(f"{paths.manifest}: unreadable manifest ({exc})")
        return
    transform = manifest.get("case_transform") if isinstance(manifest, dict) else None
    if transform and not paths.byte_sidecars:
        problems.append(f"{paths.manifest}: the data is {transform.get('name', 'case')}-transformed but "
                        f"{paths.dataset_dir} holds no byte side-cars (*_val_bytes_NNNNNN.bin)")
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
    side = splits.get("val_bytes")
    want = stats.get("sidecar_bytes_val")
    if side and "bytes" in side and isinstance(want, int) and side["bytes"] != want \
            and stats.get("files_val") == splits["val"]["files"]:
        problems.append(f"{paths.manifest}: says the side-cars count {want} bytes, they hold {side['bytes']}")
