"""The standalone decoder that ships inside a submission (its bytes count against the budget).

It imports only the standard library, numpy and the codec libraries (plus its own layer's format
constants and errors). The rest of the project imports its reading and dequantization from here,
so the code that is measured is the code that ships. Layout and fields: `format` and
artifact/docs/container.md. A tensor's parts are read from their streams in order: codes,
row order, scales, then LQER A's and B's parts.
"""

import hashlib
import json
import math
import zlib

import numpy as np

from .errors import ArtifactError
from .format import (ANS_LOW, CODEC_FAMILIES, CODES, CRC_BYTES, DEINTERLEAVE, DEINTERLEAVE_WIDTHS, DTYPE,
                     GROUP, HASH, HEAD, LQER, MAGIC, MAX_DIMS, MAX_ELEMENTS, MAX_MANIFEST, NAME, ORIGINAL_DTYPES,
                     PART_TYPES, PASSTHROUGH, PASSTHROUGH_TYPES, QUANT, ROW_ORDER, ROW_ORDER_U2_MAX_ROWS, SCALE_TYPE,
                     SCALE_TYPES, SCALES, SHAPE, STREAMS, TENSORS, TRANSPOSED, VERSION)


class DecodeError(ArtifactError):
    """The artifact is corrupt, truncated, foreign or inconsistent."""


def need(ok, what):
    if not ok:
        raise DecodeError(what)


def _int(v, lo, hi, what):
    need(type(v) is int and lo <= v <= hi, f"bad {what}: {v!r}")
    return v


def _ans_loop(words, x, lut, freq, cum, scale, out):
    # rANS: state x in [2**31, 2**63), 32-bit words; returns (words read or -1, final state).
    mask, p = (1 << scale) - 1, 0
    for i in range(out.shape[0]):
        s = lut[x & mask]
        x = freq[s] * (x >> scale) + (x & mask) - cum[s]
        if x < ANS_LOW:
            if p >= words.shape[0]:
                return -1, x
            x = (x << 32) | words[p]
            p += 1
        out[i] = s ^ 0x80
    return p, x


_kernel = []


def ans_decode(data, n):
    """Decode n symbols from an rANS stream (layout: artifact/docs/container.md)."""
    need(len(data) >= 12, "ans stream too short")
    scale, lo, span, width = data[:4]
    need(1 <= scale <= 16 and 1 <= width <= 17 and lo + span < 256, "bad ans table header")
    end = 4 + ((span + 1) * width + 7) // 8
    need(len(data) >= end + 8 and (len(data) - end) % 4 == 0, "bad ans stream length")
    bits = np.unpackbits(np.frombuffer(data, np.uint8, end - 4, 4))[: (span + 1) * width]
    freq = np.zeros(256, np.int64)
    freq[lo : lo + span + 1] = bits.reshape(span + 1, width) @ (1 << np.arange(width)[::-1])
    need(freq.sum() == 1 << scale, "ans frequencies do not sum to 2**scale")
    words = np.frombuffer(data, "<u4", offset=end + 8).astype(np.int64)
    # Each symbol takes ≥ log2(M/max freq) bits of state: no huge output from a tiny stream.
    need(n * (scale - np.log2(freq.max()) - 1e-4) <= 32 * len(words) + 64, "ans stream too short for its length")
    x = int.from_bytes(data[end : end + 8], "little")
    need(ANS_LOW <= x < 1 << 63, "bad ans state")
    if not _kernel:
        try:
            import numba

            _kernel.append(numba.njit(nogil=True)(_ans_loop))
        except ImportError:
            _kernel.append(_ans_loop)
    out = np.empty(n, np.uint8)
    lut = np.repeat(np.arange(256, dtype=np.uint8), freq)
    p, x = _kernel[0](words, x, lut, freq, np.cumsum(freq) - freq, scale, out)
    need(p == len(words) and x == ANS_LOW, "ans stream does not decode cleanly")
    return out.tobytes()


def decompress(codec, data, n):
    """Bytes of one stream, whose raw length must be exactly n (allocation bounded by n)."""
    *xforms, name = codec.split("+")
    name = name.split("-")[0]
    need(name in CODEC_FAMILIES, f"unknown codec {codec!r}")
    if n == 0:
        need(len(data) == 0, "empty stream with data")
        return b""
    if name == "raw":
        out = bytes(data)
    elif name == "ans":
        out = ans_decode(data, n)
    elif name == "zlib":
        d = zlib.decompressobj(-15)
        out = d.decompress(data, n)
        need(d.eof and not d.unused_data, "zlib stream does not end cleanly")
    elif name == "lzma":
        import lzma

        d = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2, "dict_size": max(n, 4096)}])
        out = d.decompress(data, n)
        need(d.eof, "lzma stream does not end cleanly")
    elif name == "brotli":
        import brotli

        d = brotli.Decompressor()
        out = d.process(data, output_buffer_limit=n + 1)
        need(d.is_finished(), "brotli stream does not end cleanly")
    elif name == "zstd":
        import zstandard

        need(zstandard.frame_content_size(data) in (-1, n), "zstd frame size differs")
        out = zstandard.ZstdDecompressor().decompress(data, max_output_size=n, allow_extra_data=False)
    need(len(out) == n, f"{codec} stream decodes to {len(out)} bytes, not {n}")
    for x in reversed(xforms):  # deinterleaveN: byte k of every N-byte value was stored together
        k = len(DEINTERLEAVE)
        w = int(x[k:]) if x[:k] == DEINTERLEAVE and x[k:].isdigit() else 0
        _int(w, *DEINTERLEAVE_WIDTHS, "transform")
        need(n % w == 0, "stream length not a multiple of the interleave width")
        out = np.frombuffer(out, np.uint8).reshape(w, -1).T.tobytes()
    return out


def _read_manifest(blob):
    blob = memoryview(blob).cast("B")
    need(len(blob) >= HEAD + CRC_BYTES and blob[:4] == MAGIC, "not a golf artifact (bad magic or too short)")
    need(blob[4] == VERSION, f"unsupported artifact version {blob[4]}")
    need(zlib.crc32(blob[:-CRC_BYTES]) == int.from_bytes(blob[-CRC_BYTES:], "little"), "checksum mismatch")
    size, raw = int.from_bytes(blob[5:9], "little"), int.from_bytes(blob[9:13], "little")
    need(HEAD + size + CRC_BYTES <= len(blob) and raw <= MAX_MANIFEST, "bad manifest length")
    m = json.loads(decompress("zlib", blob[HEAD : HEAD + size], raw))
    need(type(m) is dict and type(m.get(STREAMS)) is list and type(m.get(TENSORS)) is list, "bad manifest")
    for s in m[STREAMS]:
        need(type(s) is list and len(s) == 3 and type(s[0]) is str, f"bad stream entry {s!r}")
        _int(s[1], 0, MAX_ELEMENTS * 4, "stream length")
        _int(s[2], 0, len(blob), "stream length")
    need(sum(s[2] for s in m[STREAMS]) == len(blob) - HEAD - size - CRC_BYTES, "stream lengths do not fill the blob")
    plan(m)
    return m, HEAD + size


def _shape(v):
    need(type(v) is list and len(v) <= MAX_DIMS, f"bad shape {v!r}")
    return tuple(_int(d, 0, MAX_ELEMENTS, "dimension") for d in v)


def _quant_parts(q, shape, streams):
    # The parts of one quantized block: (stream, part type, shape), in stream order.
    need(type(q) is dict, "bad quantized block")
    rows, n = (shape[0] if shape else 1), math.prod(shape)
    g = _int(q.get(GROUP, 0), -1, MAX_ELEMENTS, "group size")
    need(g != 0 or len(shape) >= 1, "per-row scales need rows")
    need(g <= 0 or (len(shape) == 2 and shape[1] % g == 0 and g > 0), f"group {g} does not divide {shape}")
    stored = shape[::-1] if q.get(TRANSPOSED) else shape
    need(not q.get(TRANSPOSED) or len(shape) == 2, "only 2-D blocks transpose")
    parts = [(q[CODES], "i1", stored)]
    if ROW_ORDER in q:
        parts.append((q[ROW_ORDER], "u2" if rows <= ROW_ORDER_U2_MAX_ROWS else "u4", (rows,)))
    nscales = 1 if g < 0 else rows if g == 0 else n // g
    parts.append((q[SCALES], _key(q.get(SCALE_TYPE), SCALE_TYPES), (nscales,)))
    for s, _, _ in parts:
        _int(s, 0, len(streams) - 1, "stream index")
    return parts


def _key(v, allowed):
    need(v in allowed, f"bad dtype {v!r}")
    return v


def tensor_parts(t, streams):
    """Validated (stream, part type, shape) of every part of manifest tensor t, in read order."""
    need(type(t) is dict and type(t.get(NAME)) is str and type(t.get(HASH)) is str, "bad tensor entry")
    _key(t.get(DTYPE), ORIGINAL_DTYPES)
    shape = _shape(t.get(SHAPE))
    if PASSTHROUGH in t:
        p = t[PASSTHROUGH]
        need(type(p) is list and len(p) == 2, "bad passthrough")
        return [(_int(p[0], 0, len(streams) - 1, "stream index"), _key(p[1], PASSTHROUGH_TYPES), shape)]
    parts = _quant_parts(t.get(QUANT), shape, streams)
    if LQER in t:
        f = t[LQER]
        need(type(f) is list and len(f) == 2 and len(shape) == 2, "bad LQER factors")
        a, b = (_shape(x.get(SHAPE)) if type(x) is dict else None for x in f)
        need(len(a) == len(b) == 2 and a[0] == shape[0] and b[1] == shape[1] and a[1] == b[0], "bad LQER shapes")
        parts += _quant_parts(f[0], a, streams) + _quant_parts(f[1], b, streams)
    return parts


def plan(m):
    """Check that every stream's raw length is exactly the sum of the parts read from it."""
    used, total = [0] * len(m[STREAMS]), 0
    for t in m[TENSORS]:
        for s, dt, shape in tensor_parts(t, m[STREAMS]):
            n = math.prod(shape)
            total += n
            need(total <= MAX_ELEMENTS, "artifact claims too many elements")
            used[s] += n * int(PART_TYPES[dt][-1])
    need(used == [s[1] for s in m[STREAMS]], "stream lengths disagree with the tensor shapes")
    need(len({t[NAME] for t in m[TENSORS]}) == len(m[TENSORS]), "duplicate tensor names")


def apply_lqer(w, a, b):
    """w + a @ b as a fixed-order sum of rank-1 float32 terms (bit-identical on any machine)."""
    for i in range(a.shape[1]):
        w = w + a[:, i : i + 1] * b[i : i + 1, :]
    return w


def _block(q, shape, take):
    codes = take()
    if q.get(TRANSPOSED):
        codes = codes.T
    if ROW_ORDER in q:
        order = take().astype(np.int64)
        need(np.array_equal(np.sort(order), np.arange(len(order))), "row order is not a permutation")
        codes = codes[np.argsort(order)]
    scales = take()
    g = q.get(GROUP, 0)
    return dequantize(codes, scales.reshape(()) if g < 0 else scales, g if g > 0 else None)


def bf16_to_float32(bits):
    """float32 values of bfloat16 bit patterns (uint16)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _tensor(t, take):
    shape = tuple(t[SHAPE])
    if PASSTHROUGH in t:
        x = take()
        w = bf16_to_float32(x) if t[PASSTHROUGH][1] == "b2" else x.astype(np.float32)
        return w.reshape(shape)
    w = _block(t[QUANT], shape, take).reshape(shape)
    if LQER in t:
        a, b = (_block(f, tuple(f[SHAPE]), take) for f in t[LQER])
        w = apply_lqer(w, a, b)
    return w


def tensor_hash(w):
    """First 8 bytes (hex) of sha256 over the shape and the little-endian float32 values."""
    return hashlib.sha256(repr(w.shape).encode() + np.ascontiguousarray(w, "<f4").tobytes()).hexdigest()[:16]


def _decode(blob):
    m, pos = _read_manifest(blob)
    view, streams = memoryview(blob), []
    for codec, raw, size in m[STREAMS]:
        streams.append([decompress(codec, view[pos : pos + size], raw), 0])
        pos += size
    out = {}
    for t in m[TENSORS]:
        parts = iter(tensor_parts(t, m[STREAMS]))

        def take():
            s, dt, shape = next(parts)
            data, at = streams[s]
            n = math.prod(shape)
            streams[s][1] = at + n * int(PART_TYPES[dt][-1])
            return np.frombuffer(data, PART_TYPES[dt], n, at).reshape(shape)

        w = _tensor(t, take)
        need(tensor_hash(w) == t[HASH], f"tensor {t[NAME]}: hash mismatch")
        out[t[NAME]] = w
    return m, out


def _guard(fn, blob):
    # Untrusted input: whatever goes wrong inside surfaces as DecodeError, nothing else.
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        with open(blob, "rb") as f:
            blob = f.read()
    try:
        return fn(blob)
    except DecodeError:
        raise
    except Exception as e:
        raise DecodeError(f"malformed artifact: {type(e).__name__}: {e}") from None


def read_manifest(blob):
    """Validate header, lengths, checksum and manifest of a blob (bytes or path) without
    decoding any stream; return (manifest, offset of the first stream)."""
    return _guard(_read_manifest, blob)


def decode(blob, with_manifest=False):
    """All tensors of an artifact (bytes or path) as float32 numpy arrays, each hash-verified
    (and the manifest first if `with_manifest`)."""
    m, out = _guard(_decode, blob)
    return (m, out) if with_manifest else out


def decode_torch(blob):
    """decode() as torch tensors in each tensor's original dtype."""
    import torch  # the numpy decoder itself needs no torch

    m, out = decode(blob, True)
    return {t[NAME]: torch.from_numpy(out[t[NAME]]).to(getattr(torch, t[DTYPE])) for t in m[TENSORS]}


def _float32(x):
    # Works for numpy arrays and torch tensors alike, so the trainer's QAT and the shipped
    # decoder share this one dequantization.
    return x.astype(np.float32) if isinstance(x, np.ndarray) else x.float()


def dequantize(codes, scales, group_size=None):
    """Weights from integer codes and scales: the one dequantization of every scheme.

    - `scales` 0-d (or a 1-element vector for a 1-D tensor): one scale for the whole tensor;
    - `group_size` None and `scales` of shape (rows,): one scale per row, w = q·s[row];
    - `group_size` g: `scales` of shape (rows, cols // g), one scale per group of g columns.
    Ternary, binary, int2..int8 and LQER factors all reduce to these three cases.
    """
    q = _float32(codes)
    s = _float32(scales)
    if s.ndim == 0 or (q.ndim == 1 and s.shape[0] == 1):
        return q * s.reshape(())
    if group_size is None:
        return q * s.reshape(s.shape[0], *([1] * (q.ndim - 1)))
    rows, cols = q.shape
    groups = s.reshape(rows, cols // group_size, 1)
    return (q.reshape(rows, cols // group_size, group_size) * groups).reshape(rows, cols)
