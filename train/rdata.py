"""A minimal reader for R's serialization format, enough to pull character vectors out of an
installed R package's lazy-load data (`data/Rdata.rdb` + `Rdata.rdx`), e.g. janeaustenr's novels.

Only the XDR ("X\\n") format is read. Vectors become Python lists (NA → None), pairlists and
attributes are read and dropped except for names; anything exotic raises DataError.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

from artifact.runtime.errors import DataError

# SEXP type codes (R internals: serialize.c).
NILSXP, SYMSXP, LISTSXP, CLOSXP, ENVSXP, PROMSXP, LANGSXP = 0, 1, 2, 3, 4, 5, 6
CHARSXP, LGLSXP, INTSXP, REALSXP, CPLXSXP, STRSXP, VECSXP, EXPRSXP = 9, 10, 13, 14, 15, 16, 19, 20
RAWSXP, S4SXP, DOTSXP = 24, 25, 17
REFSXP, NILVALUE_SXP, GLOBALENV_SXP, UNBOUNDVALUE_SXP, MISSINGARG_SXP = 255, 254, 253, 252, 251
BASENAMESPACE_SXP, NAMESPACESXP, PACKAGESXP, EMPTYENV_SXP, BASEENV_SXP = 250, 249, 248, 242, 241
ATTRLANGSXP, ATTRLISTSXP, ALTREP_SXP = 240, 239, 238
_SINGLETONS = {NILVALUE_SXP, GLOBALENV_SXP, UNBOUNDVALUE_SXP, MISSINGARG_SXP, BASENAMESPACE_SXP,
               EMPTYENV_SXP, BASEENV_SXP}
NA_INT = -(2**31)


class _Reader:
    def __init__(self, data: bytes, where: str):
        self.data, self.pos, self.where = data, 0, where
        self.refs: list[object] = []

    def fail(self, what: str) -> DataError:
        return DataError(f"{self.where}: {what} at byte {self.pos}")

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail("truncated R data")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def int(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def length(self) -> int:
        n = self.int()
        if n == -1:  # long vector: two more ints
            hi, lo = self.int(), self.int()
            n = (hi << 32) + lo
        return n

    def header(self) -> None:
        if self.take(2) != b"X\n":
            raise self.fail("not XDR-serialized R data")
        version = self.int()
        self.int(), self.int()  # writer's R version, minimal reader version
        if version == 3:
            self.take(self.int())  # native encoding name
        elif version != 2:
            raise self.fail(f"unsupported serialization version {version}")

    def item(self):
        flags = self.int()
        kind = flags & 0xFF
        has_attr, has_tag = bool(flags & (1 << 9)), bool(flags & (1 << 10))
        if kind in _SINGLETONS:
            return None
        if kind == REFSXP:
            index = flags >> 8 or self.int()
            if not 1 <= index <= len(self.refs):
                raise self.fail(f"bad reference {index}")
            return self.refs[index - 1]
        if kind == SYMSXP:
            name = self.item()
            self.refs.append(name)
            return name
        if kind in (NAMESPACESXP, PACKAGESXP):
            self.int()  # always 0
            value = [self.charsxp() for _ in range(self.length())]
            self.refs.append(value)
            return value
        if kind == ENVSXP:
            self.int()  # locked
            env: dict = {}
            self.refs.append(env)
            self.item(), self.item(), self.item(), self.item()  # enclos, frame, hashtab, attrib
            return env
        if kind in (LISTSXP, LANGSXP, CLOSXP, PROMSXP, DOTSXP, ATTRLANGSXP, ATTRLISTSXP):
            return self.pairlist(has_attr or kind in (ATTRLANGSXP, ATTRLISTSXP), has_tag)
        if kind == ALTREP_SXP:
            self.item()  # class info
            state = self.item()
            self.item()  # attributes
            return state
        value = self.vector(kind, flags)
        if has_attr:
            attrs = self.item()
            if isinstance(value, list) and isinstance(attrs, dict) and "names" in attrs:
                value = _Named(value, attrs["names"])
        return value

    def pairlist(self, has_attr: bool, has_tag: bool) -> dict:
        out: dict = {}
        if has_attr:
            self.item()
        tag = self.item() if has_tag else None
        out[tag if isinstance(tag, str) else len(out)] = self.item()
        rest = self.item()
        if isinstance(rest, dict):
            for key, val in rest.items():
                out[key if isinstance(key, str) else len(out)] = val
        return out

    def charsxp(self):
        flags = self.int()
        if flags & 0xFF != CHARSXP:
            raise self.fail(f"expected a string, found SEXP type {flags & 0xFF}")
        n = self.int()
        if n == -1:
            return None
        raw = self.take(n)
        # R marks the encoding in the flags; Latin-1 strings are the only non-UTF-8 case we meet.
        latin1 = bool(flags & (1 << (12 + 2))) and not bool(flags & (1 << (12 + 3)))
        return raw.decode("latin-1" if latin1 else "utf-8", errors="replace")

    def vector(self, kind: int, flags: int):
        if kind == CHARSXP:
            self.pos -= 4
            return self.charsxp()
        n = self.length()
        if kind == STRSXP:
            return [self.charsxp() for _ in range(n)]
        if kind in (LGLSXP, INTSXP):
            vals = struct.unpack(f">{n}i", self.take(4 * n))
            return [None if v == NA_INT else v for v in vals]
        if kind == REALSXP:
            return list(struct.unpack(f">{n}d", self.take(8 * n)))
        if kind == CPLXSXP:
            return list(struct.unpack(f">{2 * n}d", self.take(16 * n)))
        if kind == RAWSXP:
            return self.take(n)
        if kind in (VECSXP, EXPRSXP):
            return [self.item() for _ in range(n)]
        raise self.fail(f"unsupported SEXP type {kind}")


class _Named(list):
    """A list that also carries R's `names` attribute."""

    def __init__(self, values, names):
        super().__init__(values)
        self.names = list(names) if names else []

    def as_dict(self) -> dict:
        return dict(zip(self.names, self))


def unserialize(data: bytes, where: str = "R data"):
    """Decode one XDR-serialized R object."""
    reader = _Reader(data, where)
    reader.header()
    return reader.item()


def read_lazyload_db(rdb: str | Path, rdx: str | Path | None = None) -> dict[str, object]:
    """Every variable of an R lazy-load database (`X.rdb` + its `X.rdx` index), by name."""
    rdb = Path(rdb)
    rdx = Path(rdx) if rdx else rdb.with_suffix(".rdx")
    try:
        index_raw = rdx.read_bytes()
        blob = rdb.read_bytes()
    except OSError as exc:
        raise DataError(f"{rdb}: cannot read R lazy-load database ({exc.strerror or exc})") from None
    index_bytes = gzip.decompress(index_raw) if index_raw[:2] == b"\x1f\x8b" else zlib.decompress(index_raw[4:])
    index = unserialize(index_bytes, str(rdx))
    if not isinstance(index, _Named):
        raise DataError(f"{rdx}: unexpected index layout")
    variables = index.as_dict().get("variables")
    if not isinstance(variables, _Named):
        raise DataError(f"{rdx}: index has no variables")
    out = {}
    for name, (offset, length) in variables.as_dict().items():
        chunk = blob[offset:offset + length]
        if len(chunk) != length or length < 5:
            raise DataError(f"{rdb}: entry {name!r} lies outside the file")
        out[name] = unserialize(_decompress_entry(chunk, rdb, name), f"{rdb}:{name}")
    return out


def _decompress_entry(chunk: bytes, rdb: Path, name: str) -> bytes:
    # 4-byte big-endian uncompressed length, then zlib (R's default), or a type byte for others.
    body = chunk[4:]
    try:
        if body[:1] == b"Z":
            import lzma
            return lzma.decompress(body[1:])
        if body[:1] == b"2":
            import bz2
            return bz2.decompress(body[1:])
        if body[:1] == b"0":
            return body[1:]
        return zlib.decompress(body)
    except (zlib.error, OSError, ValueError) as exc:
        raise DataError(f"{rdb}: entry {name!r} does not decompress ({exc})") from None
