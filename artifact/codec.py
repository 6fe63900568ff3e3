"""Codecs: symbol streams (int8 codes, or the raw bytes of fp16/fp32 tensors) to bytes and back.

A codec spec is a string: optional transforms, then one compressor, joined by '+':

    ans                      order-0 rANS (artifact/rans.py), reaches the order-0 entropy
    zlib-9 / zstd-22 / brotli-11 / lzma-9 (lzma-9e: extreme) / raw
    deinterleave2+brotli-11  byte k of every 2-byte value stored together (fp16 hi/lo bytes)
    transpose+lzma-9         a 2-D array stored column by column

`transpose` acts on the array (the container records it per tensor); `deinterleaveN` and the
compressor act on the bytes of a stream, which is what the manifest stores as the stream's
codec. Row reordering needs a stored permutation, so it is a container feature
(`TensorEntry.row_order`), not part of the spec. Decoding is `decoder.decompress`, the code
that ships.

Size models (`predict_size`): exact for `ans` (the encoder's renormalisations are counted
without writing) and `raw`; for the general compressors, streams up to `EXACT_BELOW` bytes are
simply compressed, larger ones are estimated from a sample of evenly spaced blocks, scaled by
the order-0 entropy of the whole stream over that of the sample (see bench_codecs for the
measured error).
"""

import lzma
import re
import zlib
from dataclasses import dataclass

import numpy as np

from artifact import rans
from artifact.runtime.decoder import DecodeError, decompress as decode_stream
from artifact.runtime.errors import ArtifactError, ConfigError

COMPRESSORS = {"raw": None, "ans": None, "zlib": (0, 9), "zstd": (1, 22), "brotli": (0, 11), "lzma": (0, 9)}
EXACT_BELOW = 1 << 18  # general compressors: streams this small are compressed for their size
SAMPLE_BLOCKS = 16
SAMPLE_FRACTION = 8  # the sample is 1/8 of the stream (but at least EXACT_BELOW bytes)
_TRANSFORM = re.compile(r"^(transpose|deinterleave([2-8]))$")


@dataclass(frozen=True)
class CodecSpec:
    """A parsed codec spec (see the module docstring)."""

    transpose: bool
    interleave: tuple[int, ...]  # deinterleave widths, applied in order
    family: str
    level: int | None = None
    extreme: bool = False

    @property
    def stream_codec(self) -> str:
        """The byte-level part (what a stream's manifest entry says)."""
        parts = [f"deinterleave{w}" for w in self.interleave]
        level = "" if self.level is None else f"-{self.level}{'e' if self.extreme else ''}"
        return "+".join(parts + [self.family + level])

    def __str__(self) -> str:
        return ("transpose+" if self.transpose else "") + self.stream_codec


def parse_codec(spec) -> CodecSpec:
    """Parse 'transpose+deinterleave2+brotli-11' style specs; ConfigError names the problem."""
    if isinstance(spec, CodecSpec):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"codec spec must be a non-empty string, got {spec!r}")
    *xforms, comp = spec.strip().lower().split("+")
    transpose, widths = False, []
    for x in xforms:
        m = _TRANSFORM.match(x)
        if not m:
            raise ConfigError(f"codec {spec!r}: unknown transform {x!r} (transpose, deinterleave2..8)")
        if m.group(2):
            widths.append(int(m.group(2)))
        elif transpose or widths:
            raise ConfigError(f"codec {spec!r}: transpose must come first, once")
        else:
            transpose = True
    m = re.fullmatch(r"([a-z]+)(?:-(\d+)(e?))?", comp)
    if not m or m.group(1) not in COMPRESSORS:
        raise ConfigError(f"codec {spec!r}: unknown compressor {comp!r} (one of {', '.join(COMPRESSORS)})")
    family, level, extreme = m.group(1), m.group(2), m.group(3) == "e"
    bounds = COMPRESSORS[family]
    if bounds is None:
        if level is not None:
            raise ConfigError(f"codec {spec!r}: {family} takes no level")
        return CodecSpec(transpose, tuple(widths), family)
    if level is None:
        raise ConfigError(f"codec {spec!r}: {family} needs a level, e.g. {family}-{bounds[1]}")
    if not bounds[0] <= int(level) <= bounds[1] or (extreme and family != "lzma"):
        raise ConfigError(f"codec {spec!r}: level must be {bounds[0]}..{bounds[1]} ('e' only for lzma)")
    return CodecSpec(transpose, tuple(widths), family, int(level), extreme)


def _bytes_of(data) -> np.ndarray:
    return rans.as_bytes_array(data)


def _interleave(buf: np.ndarray, widths) -> np.ndarray:
    for w in widths:
        if buf.size % w:
            raise ConfigError(f"deinterleave{w}: stream of {buf.size} bytes is not a multiple of {w}")
        buf = buf.reshape(-1, w).T.ravel()
    return buf


def _compress_bytes(spec: CodecSpec, raw: bytes) -> bytes:
    f, level = spec.family, spec.level
    if f == "raw":
        return raw
    if f == "ans":
        return rans.rans_encode(raw)
    if f == "zlib":
        c = zlib.compressobj(level, zlib.DEFLATED, -15)  # raw deflate: no header, no adler
        return c.compress(raw) + c.flush()
    # The codec libraries are imported where they are used, as the decoder does: an exported
    # codec needs only the ones its recipe names.
    if f == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=level, write_content_size=False, write_checksum=False).compress(raw)
    if f == "brotli":
        import brotli

        return brotli.compress(raw, quality=level)
    preset = level | (lzma.PRESET_EXTREME if spec.extreme else 0)
    return lzma.compress(raw, format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2, "preset": preset}])


def compress_stream(spec, data) -> bytes:
    """Byte-level encoding of a stream (deinterleave + compressor); `transpose` is ignored here.

    An empty stream is always zero bytes."""
    spec = parse_codec(spec)
    buf = _bytes_of(data)
    if buf.size == 0:
        return b""
    return _compress_bytes(spec, _interleave(buf, spec.interleave).tobytes())


def decompress_stream(spec, blob, n) -> bytes:
    """Inverse of compress_stream, through the shipped decoder; n = raw byte length."""
    spec = parse_codec(spec)
    try:
        return decode_stream(spec.stream_codec, memoryview(blob), n)
    except Exception as e:  # untrusted bytes: codec libraries raise their own error types
        raise ArtifactError(f"{spec} stream: {e if isinstance(e, DecodeError) else repr(e)}") from None


def array_transform(spec, array: np.ndarray) -> np.ndarray:
    """The array as it is laid into its stream (transposed if the spec says so)."""
    spec = parse_codec(spec)
    if spec.transpose:
        if array.ndim != 2:
            raise ConfigError(f"codec {spec}: transpose needs a 2-D array, got shape {array.shape}")
        array = array.T
    return np.ascontiguousarray(array)


def encode(spec, array: np.ndarray) -> bytes:
    """Encode one array on its own (array transform + stream codec)."""
    return compress_stream(spec, array_transform(spec, np.asarray(array)))


def decode(spec, blob, dtype, shape) -> np.ndarray:
    """Inverse of `encode` given the array's dtype and shape."""
    spec = parse_codec(spec)
    dtype = np.dtype(dtype)
    stored = tuple(shape)[::-1] if spec.transpose else tuple(shape)
    n = int(np.prod(stored, dtype=np.int64)) * dtype.itemsize
    arr = np.frombuffer(decompress_stream(spec, blob, n), dtype).reshape(stored)
    return arr.T.copy() if spec.transpose else arr.copy()


def order0_bytes(data) -> float:
    """Order-0 entropy of the stream's bytes, in bytes: the bound the `ans` codec approaches."""
    return rans.order0_bytes(_bytes_of(data))


def _sample(buf: np.ndarray, target: int) -> np.ndarray:
    # SAMPLE_BLOCKS evenly spaced contiguous blocks, `target` bytes in all.
    block = max(1, target // SAMPLE_BLOCKS)
    starts = np.linspace(0, buf.size - block, SAMPLE_BLOCKS).astype(np.int64)
    return np.concatenate([buf[s : s + block] for s in starts])


def predict_size(spec, symbols) -> int:
    """Bytes `encode(spec, symbols)` will take, without producing the whole output.

    Exact for `ans` and `raw` (and for any codec on streams under EXACT_BELOW bytes); an
    estimate for the general compressors on larger streams (sample compressed, scaled by the
    order-0 entropy ratio of the whole stream to the sample)."""
    spec = parse_codec(spec)
    symbols = np.asarray(symbols) if not isinstance(symbols, (bytes, bytearray, memoryview)) else symbols
    buf = _bytes_of(array_transform(spec, symbols) if spec.transpose else symbols)
    if buf.size == 0:
        return 0
    if spec.family == "raw":
        return int(buf.size)
    buf = _interleave(buf, spec.interleave)
    if spec.family == "ans":
        return rans.rans_size(buf)
    if buf.size < EXACT_BELOW * 2:
        return len(_compress_bytes(spec, buf.tobytes()))
    sample = _sample(buf, max(EXACT_BELOW, buf.size // SAMPLE_FRACTION))
    h_all, h_sample = rans.order0_bytes(buf), rans.order0_bytes(sample)
    size = len(_compress_bytes(spec, sample.tobytes()))
    scale = h_all / h_sample if h_sample > 0 else buf.size / sample.size
    return int(round(size * scale))
