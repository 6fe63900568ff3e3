"""CaseOps: a lossless capitalisation transform (seed 004's "cap tokenizer"), and the byte
accounting that keeps val_bpb honest on transformed text.

`encode` lowercases every letter whose case round-trips and marks it with an operator symbol;
`decode` inverts it exactly, for EVERY string: decode(encode(t)) == t.

Operators (private-use code points, so ordinary text never holds them; SentencePiece learns
them as user-defined symbols, one token each):

  TITLE  U+E000  upper-case the next letter                     "Paris" -> TITLE "paris"
  UPPER  U+E001  upper-case the following run of letters        "NASA"  -> UPPER "nasa"
  ESCAPE U+E002  the next character is literal (and ends a run) "ABc"   -> UPPER "ab" ESCAPE "c"

Which letters move: an upper-case character U is "lowerable" when U.lower() is one character
L != U with L.upper() == U; L is then "raisable". Everything else stays as it is: 'İ' (lowers
to two characters), 'ß' (upper-cases to "SS"), 'ẞ', title-case 'ǅ', the Kelvin sign, digits,
other scripts' caseless letters. A maximal run of lowerable characters becomes TITLE + its
single letter, or UPPER + the whole run; a run's end is where the next character is not
raisable, and an ESCAPE is inserted when it would be (e.g. "JSONs"). A literal operator in the
input is written ESCAPE + operator.

Whitespace hop: when a capital follows whitespace (" The", "\\n\\nThe"), the operator goes
BEFORE that whitespace (up to MAX_HOP characters of it): " The" -> TITLE " the". The tokenizer
then sees TITLE + "▁the" (two tokens, the second shared with lower-case "the") instead of
"▁" + TITLE + "the". Decoding is unambiguous: an operator, whitespace, then a raisable letter
is the hop form (whitespace is never raisable).

Byte accounting (artifact/docs/val_bpb.md): every character of the encoded text stands for some bytes of
the original: operators 0, an escaped character or any other literal its own UTF-8 length, a
lowered letter the UTF-8 length of the capital it replaces. `token_byte_counts` adds these up
per SentencePiece token from the tokenizer's offsets, so a document's entries sum exactly to
len(original.encode("utf-8")) (the side-car). Characters the tokenizer's normaliser drops
(extra whitespace, control characters) count towards the token before them, or the first
token for leading ones.
"""

from __future__ import annotations

import functools
import re
import sys
import unicodedata

import numpy as np

from artifact.runtime.errors import DataError

NAME = "caseops"
VERSION = 1
TITLE = "\ue000"
UPPER = "\ue001"
ESCAPE = "\ue002"
OPERATORS = (TITLE, UPPER, ESCAPE)
# Whitespace an operator may hop over (see the module docstring); none of it is raisable.
HOP = " \t\n\r\f\v"
MAX_HOP = 16  # bounds the encoder's backtracking on long whitespace runs
MAX_SIDECAR_ENTRY = (1 << 16) - 1  # side-car entries are uint16


def describe() -> dict:
    """What the manifest records about the transform."""
    return {
        "name": NAME,
        "version": VERSION,
        "operators": {name: f"U+{ord(ch):04X}" for name, ch in
                      (("title", TITLE), ("upper_run", UPPER), ("escape", ESCAPE))},
        "whitespace_hop": MAX_HOP,
        # Which letters round-trip comes from Python's Unicode tables; a different version may
        # encode a few rare letters differently.
        "unicode_version": unicodedata.unidata_version,
        "byte_sidecar": "per val token: original UTF-8 bytes it covers (0 for BOS and operators)",
    }


# --- character tables ------------------------------------------------------------------------

class _Tables:
    """Lower/upper maps for the letters whose case round-trips, and the regexes built on them."""

    def __init__(self) -> None:
        lower: dict[int, str] = {}
        for cp in range(sys.maxunicode + 1):
            if 0xD800 <= cp <= 0xDFFF:
                continue
            ch = chr(cp)
            low = ch.lower()
            if len(low) == 1 and low != ch and low.upper() == ch:
                lower[cp] = low
        raise_map = {ord(low): chr(cp) for cp, low in lower.items()}
        if set(lower) & set(raise_map):  # a letter both lowerable and raisable would be ambiguous
            raise AssertionError("caseops: lowerable and raisable letters overlap")
        self.lower_table = lower              # for str.translate
        self.upper_table = raise_map
        # Lowered letters whose UTF-8 length differs from their capital's (e.g. U+023A -> U+2C65).
        self.byte_delta = {}
        for low, up in raise_map.items():
            delta = len(up.encode()) - len(chr(low).encode())
            if delta:
                self.byte_delta[low] = delta
        self.raisable_set = frozenset(chr(cp) for cp in raise_map)
        # Where str.lower() (fast) differs from lowering only the lowerable letters: letters
        # whose case does not round-trip, and capital sigma (final-sigma rule in context).
        unsafe = [cp for cp in range(sys.maxunicode + 1) if not 0xD800 <= cp <= 0xDFFF
                  and chr(cp).lower() != lower.get(cp, chr(cp))] + [0x3A3]
        self.unsafe_lower_re = re.compile(_char_class(unsafe))
        self.delta_re = re.compile(_char_class(self.byte_delta)) if self.byte_delta else None
        self.ops_re = re.compile(_char_class(ord(c) for c in OPERATORS))
        self.full = _Patterns(lower, raise_map)
        # Text without characters beyond the BMP (nearly all) is scanned with BMP-only classes,
        # which Python's regex engine looks up in a bitmap and skips through quickly; a class
        # that also holds astral code points is a linear scan of its ranges (~3x slower here).
        self.bmp = _Patterns([c for c in lower if c < 0x10000], [c for c in raise_map if c < 0x10000])

    def patterns(self, text: str) -> "_Patterns":
        return self.bmp if text.isascii() or _ASTRAL.search(text) is None else self.full


_ASTRAL = re.compile("[\U00010000-\U0010FFFF]")


class _Patterns:
    """The transform's regexes over one set of lowerable/raisable code points."""

    def __init__(self, lowerable_cps, raisable_cps) -> None:
        lowerable, raisable = _char_class(lowerable_cps), _char_class(raisable_cps)
        ops = _char_class(ord(c) for c in OPERATORS)
        hop = _char_class(ord(c) for c in HOP)
        t, u, e = (re.escape(c) for c in OPERATORS)
        # encode, in passes: mark and lower runs of 2+ capitals; mark the capitals left (the
        # single ones); move new operators in front of the whitespace before them. Each pattern
        # STARTS with a plain class (not a repeat), which the engine skips ahead to quickly.
        self.run = re.compile(f"{lowerable}{lowerable}+")
        self.single = re.compile(lowerable)
        self.hop = re.compile(f"({hop}{hop}{{0,{MAX_HOP - 1}}})([{t}{u}])")
        self.lowerable = self.single
        # decode without escapes: runs, then single letters; any operator left is malformed.
        self.run_dec = re.compile(f"{u}({hop}*)({raisable}+)")
        self.title_dec = re.compile(f"{t}({hop}*)({raisable})")
        # decode in general: one scan, escapes first.
        self.decode = re.compile(
            f"{e}(?P<lit>.)"
            f"|{t}(?P<th>{hop}*)(?P<t>{raisable})"
            f"|{u}(?P<uh>{hop}*)(?P<u>{raisable}+)"
            f"|(?P<bad>{ops})", re.S)


def _char_class(codepoints) -> str:
    """A regex matching exactly one of these code points. Code points beyond the BMP get a
    class of their own: a class of BMP characters only is a bitmap lookup in Python's regex
    engine, a mixed one a linear scan of its ranges (twice as slow on this text)."""
    cps = sorted(set(codepoints))
    bmp, astral = [c for c in cps if c < 0x10000], [c for c in cps if c >= 0x10000]
    if bmp and astral:
        return f"(?:{_ranges(bmp)}|{_ranges(astral)})"
    return _ranges(cps)


def _ranges(cps: list[int]) -> str:
    parts, i = [], 0
    while i < len(cps):
        j = i
        while j + 1 < len(cps) and cps[j + 1] == cps[j] + 1:
            j += 1
        lo, hi = re.escape(chr(cps[i])), re.escape(chr(cps[j]))
        parts.append(lo if i == j else f"{lo}-{hi}")
        i = j + 1
    return "[" + "".join(parts) + "]"


@functools.lru_cache(maxsize=1)
def _tables() -> _Tables:
    return _Tables()


# --- the transform ---------------------------------------------------------------------------

def encode(text: str) -> str:
    """Lowercase `text` losslessly: capitals become operator + lower-case letter."""
    tables = _tables()
    pats = tables.patterns(text)
    if tables.ops_re.search(text):
        text = tables.ops_re.sub(lambda m: ESCAPE + m.group(), text)

    def mark_run(m: re.Match) -> str:
        after = m.end()
        # The decoder extends a run over every raisable letter: stop it explicitly.
        stop = ESCAPE if after < len(m.string) and m.string[after] in tables.raisable_set else ""
        return UPPER + m.group().translate(tables.lower_table) + stop

    text = pats.run.sub(mark_run, text)
    # (functions, not templates: Python expands "\\g<0>" templates more slowly)
    text = pats.single.sub(lambda m: TITLE + m.group(), text)
    text = pats.hop.sub(lambda m: m.group(2) + m.group(1), text)
    # Every lowerable letter left is marked: lower them all (str.lower when it is the same map).
    if text.isascii() or tables.unsafe_lower_re.search(text) is None:
        return text.lower()
    return text.translate(tables.lower_table)


def _malformed(m: re.Match) -> DataError:
    return DataError(f"caseops: operator U+{ord(m.group('bad')):04X} at character {m.start()} "
                     "is not followed by what it applies to; not CaseOps-encoded text")


def decode(encoded: str) -> str:
    """Invert `encode`. DataError for text `encode` cannot produce (a dangling operator)."""
    tables = _tables()
    pats = tables.patterns(encoded)
    if ESCAPE not in encoded:  # the common case, without a per-character scan in Python
        # A raisable letter's str.upper() is its single capital (no context rule applies).
        text = pats.run_dec.sub(lambda m: m.group(1) + m.group(2).upper(), encoded)
        text = pats.title_dec.sub(lambda m: m.group(1) + m.group(2).upper(), text)
        if tables.ops_re.search(text) is None:
            return text
        # A malformed operator: the general scan below names where.

    def replace(m: re.Match) -> str:
        if m.group("lit") is not None:
            return m.group("lit")
        if m.group("t") is not None:
            return m.group("th") + m.group("t").translate(tables.upper_table)
        if m.group("u") is not None:
            return m.group("uh") + m.group("u").translate(tables.upper_table)
        raise _malformed(m)

    return pats.decode.sub(replace, encoded)


def has_lowerable(text: str) -> bool:
    """Whether `text` still holds a capital `encode` would have lowered (never true of an
    encoding)."""
    return _tables().patterns(text).lowerable.search(text) is not None


# --- byte accounting -------------------------------------------------------------------------

def _utf8_lengths(text: str) -> np.ndarray:
    cps = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
    return (1 + (cps >= 0x80).astype(np.int64) + (cps >= 0x800) + (cps >= 0x10000)).astype(np.int64)


def char_bytes(encoded: str) -> np.ndarray:
    """Per character of CaseOps-encoded text: how many UTF-8 bytes of the original text it
    stands for (int64, one entry per code point). Sums to len(decode(encoded).encode())."""
    tables = _tables()
    pats = tables.patterns(encoded)
    weights = _utf8_lengths(encoded)
    if ESCAPE not in encoded and (tables.delta_re is None or tables.delta_re.search(encoded) is None):
        # Every operator is one (no escapes) and every letter keeps its length: vectorised.
        cps = np.frombuffer(encoded.encode("utf-32-le"), dtype="<u4")
        is_op = np.isin(cps, [ord(op) for op in OPERATORS])
        n_ops = int(is_op.sum())
        if n_ops == len(pats.run_dec.findall(encoded)) + len(pats.title_dec.findall(encoded)):
            weights[is_op] = 0
            return weights
        # else a malformed operator: the general scan below names it
    for m in pats.decode.finditer(encoded):
        if m.group("bad") is not None:
            raise _malformed(m)
        weights[m.start()] = 0  # the operator itself
        run = "t" if m.group("t") is not None else "u" if m.group("u") is not None else None
        if run and tables.byte_delta:
            start = m.start(run)
            for k, ch in enumerate(m.group(run)):
                weights[start + k] += tables.byte_delta.get(ord(ch), 0)
    return weights


def token_byte_counts(encoded: str, ends) -> np.ndarray:
    """Original UTF-8 bytes covered by each token of `encoded`, given each token's END offset
    (in characters of `encoded`, as SentencePiece's offset mapping gives them).

    Token i covers characters [end_{i-1}, end_i) (the first from 0, the last to the end of the
    text), so characters the tokenizer dropped count with the token before them and the counts
    sum to len(decode(encoded).encode()). A text with no tokens gives an empty array."""
    ends = np.asarray(ends, dtype=np.int64)
    if ends.size == 0:
        return np.zeros(0, dtype=np.int64)
    cum = np.concatenate([[0], np.cumsum(char_bytes(encoded))])
    bounds = np.maximum.accumulate(np.clip(ends, 0, len(encoded)))
    bounds[-1] = len(encoded)
    bounds = np.concatenate([[0], bounds])
    return cum[bounds[1:]] - cum[bounds[:-1]]


def encode_with_bytes(sp, texts: list[str], bos_id: int = 1, num_threads: int = 1):
    """CaseOps-encode and tokenize documents: per document `(ids, nbytes)`, int32 and int64
    arrays of equal length, `[BOS] + ids` with `[0] + per-token original bytes`.

    The side-car entries of a document sum to its original UTF-8 length, except a document the
    tokenizer reduces to nothing (only whitespace/control characters): BOS carries 0 bytes, so
    its bytes are left out (the caller counts them)."""
    encoded = [encode(t) for t in texts]
    if not encoded:
        return []
    mapped = sp.encode(encoded, return_type="offset_mapping", num_threads=num_threads)
    out = []
    for text, enc, m in zip(texts, encoded, mapped):
        ids = np.empty(len(m["ids"]) + 1, dtype=np.int32)
        ids[0] = bos_id
        ids[1:] = m["ids"]
        counts = np.zeros(ids.size, dtype=np.int64)
        counts[1:] = token_byte_counts(enc, [e for _, e in m["offsets"]])
        if counts.size and int(counts.max()) > MAX_SIDECAR_ENTRY:
            raise DataError(f"caseops: one token covers {int(counts.max())} bytes, more than a "
                            f"uint16 side-car entry holds (document starting {text[:40]!r})")
        out.append((ids, counts))
    return out
