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
import re
import zlib

import numpy as np

from .errors import ArtifactError
from .format import (ANS_LOW, CODES, DIGEST, DTYPE, GROUP, HASH, HEAD, LQER, MAGIC, MAX_BLOB, MAX_DIMS, MAX_ELEMENTS,
                     MAX_MANIFEST, MANIFEST_SLACK, NAME, ORIGINAL_DTYPES, PART_TYPES, PASSTHROUGH, PASSTHROUGH_TYPES,
                     QUANT, ROW_ORDER, ROW_ORDER_U2_MAX_ROWS, SCALE_TYPE, SCALE_TYPES, SCALES, SHAPE, STREAM_CODEC,
                     STREAMS, TENSORS, TRANSPOSED, BITS, VERSION, WORK_FLOOR, WORK_PER_BYTE)


class DecodeError(ArtifactError):
    """The artifact is corrupt, truncated, foreign or inconsistent."""


def need(ok, what):
    if not ok:
        raise DecodeError(what)


def _int(v, lo, hi, what):
    need(type(v) is int and lo <= v <= hi, f"bad {what}: {v!r:.60}")
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


def _inflate(name, data, n):
    # A general compressor's stream; each must end cleanly, with no data after its end.
    if name == "zlib":
        d = zlib.decompressobj(-15)
        out = d.decompress(data, n)
        need(d.eof and not d.unused_data, "zlib stream does not end cleanly")
    elif name == "lzma":
        import lzma

        d = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2, "dict_size": max(n, 4096)}])
        out = d.decompress(data, n)
        need(d.eof and not d.unused_data, "lzma stream does not end cleanly")
    elif name == "brotli":
        import brotli

        d = brotli.Decompressor()
        out = d.process(data, output_buffer_limit=n + 1)  # raises on data after the end
        need(d.is_finished(), "brotli stream does not end cleanly")
    else:
        import zstandard

        need(zstandard.frame_content_size(data) in (-1, n), "zstd frame size differs")
        out = zstandard.ZstdDecompressor().decompress(data, max_output_size=n, allow_extra_data=False)
    return out


def decompress(codec, data, n):
    """Bytes of one stream, whose raw length must be exactly n (n already bounded: `plan`)."""
    m = re.fullmatch(STREAM_CODEC, codec)
    need(m, f"unknown codec {codec!r:.60}")
    name = m[1].split("-")[0]
    if n == 0:
        need(len(data) == 0, "empty stream with data")
        return b""
    if name == "raw":
        out = bytes(data)
    elif name == "ans":
        out = ans_decode(data, n)
    else:
        try:
            out = _inflate(name, data, n)
        except (DecodeError, MemoryError):
            raise
        except Exception as e:  # the codec library's own report of corrupt input
            raise DecodeError(f"{codec} stream is corrupt ({type(e).__name__}: {e})") from None
    need(len(out) == n, f"{codec} stream decodes to {len(out)} bytes, not {n}")
    for x in reversed(codec.split("+")[:-1]):  # deinterleaveN: byte k of every N-byte value stored together
        w = int(x[-1])
        need(n % w == 0, "stream length not a multiple of the interleave width")
        out = np.frombuffer(out, np.uint8).reshape(w, -1).T.tobytes()
    return out


def _read_manifest(blob):
    blob = memoryview(blob).cast("B")
    need(HEAD + DIGEST <= len(blob) <= MAX_BLOB and blob[:4] == MAGIC, "not a golf artifact (bad magic or size)")
    need(blob[4] == VERSION, f"unsupported artifact version {blob[4]}")
    need(hashlib.sha256(blob[:-DIGEST]).digest()[:DIGEST] == blob[-DIGEST:], "checksum mismatch")
    size, raw = int.from_bytes(blob[5:9], "little"), int.from_bytes(blob[9:13], "little")
    need(HEAD + size + DIGEST <= len(blob) and raw <= min(MAX_MANIFEST, MANIFEST_SLACK + WORK_PER_BYTE * size),
         "bad manifest length")
    try:
        m = json.loads(decompress("zlib-9", blob[HEAD : HEAD + size], raw))
    except (ValueError, RecursionError):
        raise DecodeError("manifest is not valid JSON") from None
    _fields(m, {STREAMS, TENSORS}, set(), "manifest")
    S, T = m[STREAMS], m[TENSORS]
    need(type(S) is list and type(T) is list and T, "manifest lists no tensors")
    for s in S:
        need(type(s) is list and len(s) == 3 and type(s[0]) is str, f"bad stream entry {s!r:.60}")
        _int(s[1], 0, MAX_ELEMENTS * 4, "stream length")
        _int(s[2], 0, len(blob), "stream length")
    need(sum(s[2] for s in S) == len(blob) - HEAD - size - DIGEST, "stream lengths do not fill the blob")
    return m, HEAD + size, plan(m, len(blob))


def _fields(d, required, optional, what):
    need(type(d) is dict, f"bad {what}")
    odd = (d.keys() - required - optional) | (required - d.keys())
    need(not odd, f"{what}: unknown or missing field(s) {sorted(odd)!r:.80}")


def _shape(v):
    need(type(v) is list and len(v) <= MAX_DIMS, f"bad shape {v!r:.60}")
    return tuple(_int(d, 0, MAX_ELEMENTS, "dimension") for d in v)


def _quant_parts(q, shape, streams, what, factor=False):
    # The parts of one quantized block: (stream, part type, shape), in stream order.
    _fields(q, {CODES, SCALES, SCALE_TYPE} | ({SHAPE} if factor else set()), {GROUP, TRANSPOSED, ROW_ORDER}, what)
    rows, n = (shape[0] if shape else 1), math.prod(shape)
    g = _int(q.get(GROUP, 0), -1, MAX_ELEMENTS, "group size")
    need(g != 0 or len(shape) >= 1, "per-row scales need rows")
    need(g <= 0 or (len(shape) == 2 and shape[1] % g == 0), f"group {g} does not divide {shape}")
    _int(q.get(TRANSPOSED, 1), 1, 1, "transpose flag")
    stored = shape[::-1] if TRANSPOSED in q else shape
    need(TRANSPOSED not in q or len(shape) == 2, "only 2-D blocks transpose")
    parts = [(q[CODES], "i1", stored)]
    if ROW_ORDER in q:
        parts.append((q[ROW_ORDER], "u2" if rows <= ROW_ORDER_U2_MAX_ROWS else "u4", (rows,)))
    nscales = 1 if g < 0 else rows if g == 0 else n // g
    parts.append((q[SCALES], _key(q[SCALE_TYPE], SCALE_TYPES), (nscales,)))
    for s, _, _ in parts:
        _int(s, 0, len(streams) - 1, "stream index")
    return parts


def _key(v, allowed):
    need(v in allowed, f"bad dtype {v!r:.60}")
    return v


def tensor_parts(t, streams):
    """Validated (stream, part type, shape) of every part of manifest tensor t, in read order."""
    need(type(t) is dict and type(t.get(NAME)) is str and t[NAME], "tensor entry without a name")
    what = f"tensor {t[NAME][:80]}"
    q = PASSTHROUGH not in t
    _fields(t, {NAME, SHAPE, DTYPE, HASH} | ({QUANT, BITS} if q else {PASSTHROUGH}), {LQER} if q else set(), what)
    _key(t[DTYPE], ORIGINAL_DTYPES)
    shape = _shape(t[SHAPE])
    if not q:
        p = t[PASSTHROUGH]
        need(type(p) is list and len(p) == 2, "bad passthrough")
        return [(_int(p[0], 0, len(streams) - 1, "stream index"), _key(p[1], PASSTHROUGH_TYPES), shape)]
    _int(t[BITS], 1, 8, "bit width")
    parts = _quant_parts(t[QUANT], shape, streams, what)
    if LQER in t:
        f = t[LQER]
        need(type(f) is list and len(f) == 2 and len(shape) == 2 and all(type(x) is dict for x in f), "bad LQER factors")
        a, b = (_shape(x.get(SHAPE)) for x in f)
        need(len(a) == len(b) == 2 and a[0] == shape[0] and b[1] == shape[1] and a[1] == b[0], "bad LQER shapes")
        parts += _quant_parts(f[0], a, streams, what, True) + _quant_parts(f[1], b, streams, what, True)
    return parts


def plan(m, size):
    """The validated parts of every tensor; checks that every stream's raw length is exactly the
    sum of the parts read from it, that names are unique, and that the work asked for is bounded
    by the blob's `size` (format.WORK_FLOOR, WORK_PER_BYTE) before anything is decoded."""
    S, names, out = m[STREAMS], set(), []
    used, work, total = [0] * len(S), sum(s[1] for s in S), 0
    for t in m[TENSORS]:
        parts = tensor_parts(t, S)
        need(t[NAME] not in names, f"duplicate tensor name {t[NAME][:80]}")
        names.add(t[NAME])
        for s, dt, shape in parts:
            used[s] += math.prod(shape) * int(PART_TYPES[dt][-1])
        n = math.prod(t[SHAPE])
        total += n
        work += n * (1 + (t[LQER][0][SHAPE][1] if LQER in t else 0))
        need(total <= MAX_ELEMENTS, "artifact claims too many elements")
        out.append(parts)
    need(used == [s[1] for s in S], "stream lengths disagree with the tensor shapes")
    need(work <= WORK_FLOOR + WORK_PER_BYTE * size, f"artifact asks for more decoding work ({work:,}) than its "
         f"{size:,} bytes can hold")
    return out


def apply_lqer(w, a, b):
    """w + a @ b as a fixed-order sum of rank-1 float32 terms (bit-identical on any machine)."""
    for i in range(a.shape[1]):
        w = w + a[:, i : i + 1] * b[i : i + 1, :]
    return w


def _block(q, shape, take):
    codes = take()
    if TRANSPOSED in q:
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


def tensor_hash(slot, name, dtype, w):
    """First 8 bytes (hex) of SHA-256 over the tensor's slot ("i/n": its index among the n
    tensors), name, original dtype, shape and little-endian float32 values: every fact of the
    decoded state dict, which tensors in which order included, is under some tensor's hash."""
    h = hashlib.sha256(f"{slot}\0{name}\0{dtype}\0{w.shape}".encode())
    h.update(np.ascontiguousarray(w, "<f4").data)
    return h.hexdigest()[:16]


def _decode(blob):
    m, pos, plans = _read_manifest(blob)
    view, streams = memoryview(blob), []
    for codec, raw, size in m[STREAMS]:
        streams.append([decompress(codec, view[pos : pos + size], raw), 0])
        pos += size
    out = {}
    for i, (t, parts) in enumerate(zip(m[TENSORS], plans)):
        parts = iter(parts)

        def take():
            s, dt, shape = next(parts)
            data, at = streams[s]
            n = math.prod(shape)
            streams[s][1] = at + n * int(PART_TYPES[dt][-1])
            return np.frombuffer(data, PART_TYPES[dt], n, at).reshape(shape)

        w = _tensor(t, take)
        need(tensor_hash(f"{i}/{len(plans)}", t[NAME], t[DTYPE], w) == t[HASH], f"tensor {t[NAME]}: hash mismatch")
        out[t[NAME]] = w
    return m, out


def _guard(fn, blob):
    # Untrusted input: whatever goes wrong inside surfaces as DecodeError, nothing else (an
    # unforeseen failure keeps its cause, so a fuzzer can tell it from a deliberate check).
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        with open(blob, "rb") as f:
            need(f.seek(0, 2) <= MAX_BLOB, "artifact too large")
            f.seek(0)
            blob = f.read()
    try:
        return fn(blob)
    except DecodeError:
        raise
    except Exception as e:
        raise DecodeError(f"malformed artifact: {type(e).__name__}: {e}") from e


def read_manifest(blob):
    """Validate header, lengths, checksum and manifest of a blob (bytes or path) without
    decoding any stream; return (manifest, offset of the first stream)."""
    return _guard(_read_manifest, blob)[:2]


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
