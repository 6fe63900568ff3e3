"""The challenge's token shard format and dataset layout (artifact/docs/shards.md), read exactly;
the writer is `train.shard_writer`, on these constants.

A shard is 256 little-endian int32 (magic 20240520, version 1, token count N, zeros) followed by
N little-endian uint16 tokens; its size must be exactly 1024 + 2N bytes. Byte side-car shards
(CaseOps) use the same format. Readers memory-map the tokens instead of loading whole files.

Layouts understood by `resolve_data`:
  ROOT/datasets/<name>_sp<V>/<name>_{train,val}_<i:06d>.bin   (+ <name>_val_bytes_<i>.bin)
  ROOT/tokenizers/<name>_<V>_bpe.model                          ROOT/manifest.json
ROOT may be the challenge's own `data/` folder (fineweb10B_sp1024, fineweb_1024_bpe.model) or a
folder written by `golf data build`; the dataset folder itself is accepted too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DataError, ShardError

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
MAX_VOCAB = 1 << 16

_SHARD_RE = re.compile(r"^(?P<prefix>.+)_(?P<split>train|val)_(?P<index>\d{6})\.bin$")
_SIDECAR_RE = re.compile(r"^(?P<prefix>.+)_val_bytes_(?P<index>\d{6})\.bin$")


def shard_name(prefix: str, split: str, index: int) -> str:
    """File name of shard `index` of `split` ("train", "val" or "val_bytes")."""
    return f"{prefix}_{split}_{index:06d}.bin"


def read_header(path: str | Path) -> int:
    """Validate a shard's header and exact size; return its token count N."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
    except OSError as exc:
        raise ShardError(f"{path}: cannot read shard ({exc.strerror or exc})") from None
    if len(raw) < HEADER_BYTES:
        raise ShardError(f"{path}: {size} bytes is shorter than the {HEADER_BYTES}-byte header")
    header = np.frombuffer(raw, dtype="<i4")
    if int(header[0]) != MAGIC:
        raise ShardError(f"{path}: bad magic {int(header[0])} (expected {MAGIC}); not a token shard")
    if int(header[1]) != VERSION:
        raise ShardError(f"{path}: unsupported shard version {int(header[1])} (expected {VERSION})")
    n = int(header[2])
    if n < 0:
        raise ShardError(f"{path}: negative token count {n} in header")
    expected = HEADER_BYTES + 2 * n
    if size != expected:
        raise ShardError(f"{path}: size {size} bytes but header says {n} tokens ({expected} bytes)")
    return n


def read_shard(path: str | Path, vocab_size: int | None = None) -> np.ndarray:
    """Memory-map a validated shard's tokens (read-only uint16). With `vocab_size`, ids are
    checked to be < vocab_size (this touches every page once)."""
    n = read_header(path)
    if n == 0:
        tokens = np.zeros(0, dtype=np.uint16)
    else:
        tokens = np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(n,))
    if vocab_size is not None:
        check_ids(tokens, vocab_size, path)
    return tokens


def check_ids(tokens: np.ndarray, vocab_size: int, path: str | Path) -> None:
    """Raise ShardError if any id is >= vocab_size (the tokenizer does not match the shard)."""
    if tokens.size == 0:
        return
    top = int(tokens.max())
    if top >= vocab_size:
        where = int(np.argmax(np.asarray(tokens) >= vocab_size))
        raise ShardError(
            f"{path}: token id {top} (first bad at position {where}) is out of range for "
            f"vocab size {vocab_size}; the tokenizer does not match these shards"
        )


def load_tokens(files: list[Path], vocab_size: int | None = None) -> np.ndarray:
    """Concatenate shards in order into one int array (used for validation splits)."""
    if not files:
        raise DataError("no shard files given")
    parts = [read_shard(f, vocab_size) for f in files]
    return np.concatenate(parts) if len(parts) > 1 else np.array(parts[0])


@dataclass
class DataPaths:
    """Where a dataset's pieces are. `vocab_size` comes from the folder name (`_sp<V>`) or the
    tokenizer; `byte_sidecars` is non-empty only for CaseOps datasets."""

    dataset_dir: Path
    prefix: str
    train_files: list[Path] = field(default_factory=list)
    val_files: list[Path] = field(default_factory=list)
    byte_sidecars: list[Path] = field(default_factory=list)
    tokenizer: Path | None = None
    vocab_size: int | None = None
    manifest: Path | None = None

    def require_tokenizer(self) -> Path:
        if self.tokenizer is None:
            raise DataError(f"{self.dataset_dir}: no SentencePiece tokenizer (.model) found for this dataset")
        return self.tokenizer

    def require_val(self) -> list[Path]:
        if not self.val_files:
            raise DataError(f"{self.dataset_dir}: no validation shards (*_val_NNNNNN.bin)")
        return self.val_files

    def require_train(self) -> list[Path]:
        if not self.train_files:
            raise DataError(f"{self.dataset_dir}: no training shards (*_train_NNNNNN.bin)")
        return self.train_files


def _list_shards(folder: Path) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {"train": [], "val": [], "val_bytes": []}
    prefixes: set[str] = set()
    for p in sorted(folder.iterdir()):
        if not p.is_file():
            continue
        m = _SIDECAR_RE.match(p.name)
        if m:
            found["val_bytes"].append(p)
            continue
        m = _SHARD_RE.match(p.name)
        if m:
            found[m["split"]].append(p)
            prefixes.add(m["prefix"])
    if len(prefixes) > 1:
        raise DataError(f"{folder}: shards of several datasets mixed in one folder: {sorted(prefixes)}")
    found["prefix"] = [Path(prefixes.pop())] if prefixes else []
    return found


def _dataset_dirs(root: Path) -> list[Path]:
    datasets = root / "datasets"
    if datasets.is_dir():
        return sorted(d for d in datasets.iterdir() if d.is_dir())
    return []


def resolve_data(path: str | Path, vocab_size: int | None = None) -> DataPaths:
    """Find shards and tokenizer under `path` (a data root or a dataset folder).

    When a root holds several datasets, `vocab_size` picks the `_sp<V>` one."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such data folder")
    if not path.is_dir():
        raise DataError(f"{path}: expected a data folder, got a file")
    candidates = _dataset_dirs(path)
    if candidates:
        if vocab_size is not None:
            candidates = [d for d in candidates if d.name.endswith(f"_sp{vocab_size}")] or candidates
        if len(candidates) > 1:
            names = ", ".join(d.name for d in candidates)
            raise DataError(f"{path}: several datasets ({names}); pass the one you mean or its vocab size")
        dataset_dir, root = candidates[0], path
    else:
        dataset_dir = path
        root = path.parent.parent if path.parent.name == "datasets" else None
    shards = _list_shards(dataset_dir)
    if not shards["train"] and not shards["val"]:
        raise DataError(f"{dataset_dir}: no token shards (*_train_NNNNNN.bin / *_val_NNNNNN.bin) found")
    prefix = shards["prefix"][0].name if shards["prefix"] else ""
    m = re.search(r"_sp(\d+)$", dataset_dir.name)
    vocab = int(m.group(1)) if m else vocab_size
    tokenizer = _find_tokenizer(dataset_dir, root, vocab)
    manifest = None
    for cand in ([root / "manifest.json"] if root else []) + [dataset_dir / "manifest.json"]:
        if cand.is_file():
            manifest = cand
            break
    return DataPaths(
        dataset_dir=dataset_dir,
        prefix=prefix,
        train_files=shards["train"],
        val_files=shards["val"],
        byte_sidecars=shards["val_bytes"],
        tokenizer=tokenizer,
        vocab_size=vocab,
        manifest=manifest,
    )


def _find_tokenizer(dataset_dir: Path, root: Path | None, vocab: int | None) -> Path | None:
    places = [dataset_dir] + ([root / "tokenizers"] if root else [])
    for place in places:
        if not place.is_dir():
            continue
        models = sorted(place.glob("*.model"))
        if vocab is not None:
            exact = [m for m in models if m.name.endswith(f"_{vocab}_bpe.model")]
            if exact:
                return exact[0]
        if len(models) == 1:
            return models[0]
    return None
