"""The artifact writer, reader wrapper and inspector (the format: artifact.runtime.format and
artifact/docs/container.md; the reader that ships: artifact.runtime.decoder).

`build_blob(entries)` lays quantized tensors out as the decoder expects: each entry's parts
(codes, row order, scales, LQER factors, or passthrough values) go into streams, one per
(stream codec, group); by default a tensor's codes get a stream of their own (so their bytes
are exactly attributable), while scales and row orders share a "side" stream, passthrough
values a "passthrough" stream and LQER factor codes an "lqer" stream, per codec (small streams
compress badly alone; scales and float values compress better apart, measured on MiniLM). The manifest records, per tensor, which stream
each part lives in; parts are read back in order, so no offsets need storing. Same entries →
byte-identical blob.

Reading goes through the shipped decoder; its `DecodeError` becomes `ArtifactError` here.
"""

import hashlib
import json
import math
import zlib
from dataclasses import dataclass

import numpy as np

from artifact import codec as codecs
from artifact.runtime.decoder import (DecodeError, apply_lqer, bf16_to_float32, decode, dequantize,
                                      read_manifest, tensor_hash, tensor_parts)
from artifact.runtime.errors import ArtifactError
from artifact.runtime.files import atomic_write
from artifact.runtime.format import (BITS, CODES, DIGEST, DTYPE, GROUP, HASH, HEAD, LQER, MAGIC, NAME, ORIGINAL_DTYPES,
                                     PART_TYPES, PASSTHROUGH, QUANT, ROW_ORDER, ROW_ORDER_U2_MAX_ROWS, SCALE_TYPE,
                                     SCALES, SHAPE, STREAMS, TENSORS, TRANSPOSED, VERSION)

# numpy dtype of the array handed over -> part type in the manifest
SCALE_PART_TYPES = {np.dtype(np.float16): "f2", np.dtype(np.float32): "f4"}
PASSTHROUGH_PART_TYPES = {np.dtype(np.float16): "f2", np.dtype(np.float32): "f4", np.dtype(np.uint16): "b2"}


@dataclass
class QuantBlock:
    """Integer codes with their scales: an LQER factor (A: rows×r, B: r×cols).

    `scales`: 0-d or 1 element = one scale; (rows,) with group_size None = per row;
    (rows, cols // group_size) = grouped. fp16 or fp32."""

    codes: np.ndarray
    scales: np.ndarray
    group_size: int | None = None
    codec: str = "ans"


@dataclass
class TensorEntry:
    """One tensor as the quantizer hands it to the writer.

    Quantized: `codes` (int8, shape `shape`) + `scales` (as in QuantBlock), optional `lqer`
    = (A, B) whose product is added after dequantization, optional `row_order` (stored rows are
    codes[row_order]; helps general compressors only). Passthrough: `passthrough` holds the
    values as float16, float32, or uint16 bfloat16 bit patterns (see `bf16_bits`).
    `dtype` is the original dtype's name (float32, bfloat16, float16, float64), `bits` the
    nominal code width (derived from the codes when None). `codec` applies to codes or
    passthrough values; `stream` names a group whose members share one stream.
    """

    name: str
    shape: tuple
    dtype: str
    codes: np.ndarray | None = None
    scales: np.ndarray | None = None
    group_size: int | None = None
    codec: str = "ans"
    lqer: tuple | None = None
    passthrough: np.ndarray | None = None
    bits: float | None = None
    scales_codec: str = "deinterleave2+brotli-11"
    row_order: np.ndarray | None = None
    stream: str | None = None


def bf16_bits(values) -> np.ndarray:
    """uint16 bit patterns of float32 values that are exactly bfloat16 (e.g. a bf16 tensor)."""
    v = np.ascontiguousarray(values, np.float32).view(np.uint32)
    if np.any(v & 0xFFFF):
        raise ArtifactError("bf16 passthrough: values are not exactly representable in bfloat16")
    return (v >> 16).astype(np.uint16)


def _fail(name, msg):
    raise ArtifactError(f"tensor {name}: {msg}")


def _block_parts(name, codes, scales, group_size, spec, shape, order=None):
    """Manifest block + [(kind, spec, array)] parts + dequantized weights of one code block."""
    codes, scales = np.asarray(codes), np.asarray(scales)
    if codes.dtype != np.int8 or codes.shape != tuple(shape):
        _fail(name, f"codes must be int8 of shape {tuple(shape)}, got {codes.dtype} {codes.shape}")
    if scales.dtype not in SCALE_PART_TYPES:
        _fail(name, f"scales must be float16 or float32, got {scales.dtype}")
    if not np.all(np.isfinite(scales)):
        _fail(name, "scales contain NaN or Inf")
    spec = codecs.parse_codec(spec)
    rows = shape[0] if shape else 1
    if scales.size == 1 and group_size is None:
        g, s_in = -1, scales.reshape(())
    elif group_size is None:
        if len(shape) < 1 or scales.shape != (rows,):
            _fail(name, f"per-row scales must have shape ({rows},), got {scales.shape}")
        g, s_in = 0, scales
    else:
        g = int(group_size)
        if len(shape) != 2 or g <= 0 or shape[1] % g or scales.size != rows * (shape[1] // g):
            _fail(name, f"group size {group_size} does not fit shape {shape} with {scales.size} scales")
        s_in = scales.reshape(rows, shape[1] // g)
    block = {CODES: None, SCALES: None, SCALE_TYPE: SCALE_PART_TYPES[scales.dtype]}
    if g:
        block[GROUP] = g
    stored = codes
    if order is not None:
        order = np.asarray(order, dtype=np.int64)
        if order.shape != (rows,) or not np.array_equal(np.sort(order), np.arange(rows)):
            _fail(name, f"row_order must be a permutation of {rows} rows")
        stored = codes[order]
    if spec.transpose:
        block[TRANSPOSED] = 1
    parts = [(CODES, spec, codecs.array_transform(spec, stored))]
    if order is not None:
        parts.append((ROW_ORDER, None, order.astype(PART_TYPES["u2" if rows <= ROW_ORDER_U2_MAX_ROWS else "u4"])))
    parts.append((SCALES, None, np.ascontiguousarray(scales, scales.dtype.newbyteorder("<"))))
    w = dequantize(codes, s_in, g if g > 0 else None)
    return block, parts, w


def _entry_parts(e: TensorEntry):
    """(manifest dict, [(block dict, key, spec, stream group, array)], float32 weights)."""
    shape = tuple(int(d) for d in e.shape)
    label = str(e.dtype).replace("torch.", "")
    if label not in ORIGINAL_DTYPES:
        _fail(e.name, f"unsupported original dtype {e.dtype!r}")
    t = {NAME: e.name, SHAPE: list(shape), DTYPE: label}
    own = e.stream or f"tensor:{e.name}"
    if e.passthrough is not None:
        v = np.asarray(e.passthrough)
        if v.dtype not in PASSTHROUGH_PART_TYPES or v.shape != shape:
            _fail(e.name, f"passthrough must be float16/float32/uint16(bf16) of shape {shape}")
        kind = PASSTHROUGH_PART_TYPES[v.dtype]
        w = bf16_to_float32(v) if kind == "b2" else v.astype(np.float32)
        if not np.all(np.isfinite(w)):
            _fail(e.name, "passthrough values contain NaN or Inf")
        t[PASSTHROUGH] = [None, kind]
        spec = codecs.parse_codec(e.codec)
        return t, [(t[PASSTHROUGH], 0, spec, e.stream or "passthrough",
                    np.ascontiguousarray(v, v.dtype.newbyteorder("<")))], w
    if e.codes is None or e.scales is None:
        _fail(e.name, "needs codes and scales, or passthrough values")
    scale_spec = codecs.parse_codec(e.scales_codec)
    block, parts, w = _block_parts(e.name, e.codes, e.scales, e.group_size, e.codec, shape, e.row_order)
    t[BITS] = e.bits if e.bits is not None else int(np.abs(e.codes.astype(np.int16)).max(initial=0)).bit_length() + 1
    t[QUANT] = block
    out = [(block, k, spec or scale_spec, own if k == CODES else "side", a) for k, spec, a in parts]
    if e.lqer is not None:
        if len(shape) != 2 or len(e.lqer) != 2:
            _fail(e.name, "LQER needs a 2-D tensor and two factors (A, B)")
        factors = []
        for f, fshape in zip(e.lqer, [(shape[0], None), (None, shape[1])]):
            fs = tuple(np.shape(f.codes))
            if len(fs) != 2 or any(d is not None and d != s for d, s in zip(fshape, fs)):
                _fail(e.name, f"LQER factor shape {fs} does not fit {shape}")
            fb, fparts, fw = _block_parts(e.name, f.codes, f.scales, f.group_size, f.codec, fs)
            fb[SHAPE] = list(fs)
            factors.append(fw)
            t.setdefault(LQER, []).append(fb)
            out += [(fb, k, spec or scale_spec, "lqer" if k == CODES else "side", a) for k, spec, a in fparts]
        if factors[0].shape[1] != factors[1].shape[0]:
            _fail(e.name, "LQER factors disagree on the rank")
        w = apply_lqer(w.reshape(shape), *factors)
    return t, out, w.reshape(shape)


def build_blob(entries) -> bytes:
    """The artifact bytes for `entries` (TensorEntry list, in manifest order)."""
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise ArtifactError("duplicate tensor names in the artifact entries")
    streams: dict[tuple, list] = {}  # (stream codec, group) -> [index, [arrays]]
    tensors = []
    for i, e in enumerate(entries):
        t, parts, w = _entry_parts(e)
        if not np.all(np.isfinite(w)):
            _fail(e.name, "decoded weights contain NaN or Inf")
        for block, key, spec, group, array in parts:
            slot = streams.setdefault((spec.stream_codec, group), [len(streams), []])
            slot[1].append(array)
            block[key] = slot[0]
        t[HASH] = tensor_hash(f"{i}/{len(entries)}", e.name, t[DTYPE], w)
        tensors.append(t)
    table, data = [], []
    for (stream_codec, _), (_, arrays) in streams.items():
        raw = b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)
        comp = codecs.compress_stream(stream_codec, raw)
        table.append([stream_codec, len(raw), len(comp)])
        data.append(comp)
    m = {STREAMS: table, TENSORS: tensors}
    blob = assemble_blob(m, b"".join(data))
    try:  # the decoder's own bounds: a blob it would refuse is never written
        read_manifest(blob)
    except DecodeError as e:
        raise ArtifactError(f"cannot write this artifact: {e}") from None
    return blob


def assemble_blob(manifest: dict, streams: bytes) -> bytes:
    """Header + packed manifest + the streams' bytes + the SHA-256 trailer (the layout of
    artifact/docs/container.md), for a manifest whose stream table matches `streams`."""
    raw = json.dumps(manifest, separators=(",", ":")).encode()
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    packed = c.compress(raw) + c.flush()
    head = MAGIC + bytes([VERSION]) + len(packed).to_bytes(4, "little") + len(raw).to_bytes(4, "little")
    assert len(head) == HEAD
    return with_digest(head + packed + streams)


def with_digest(body: bytes) -> bytes:
    """`body` followed by its trailer: the first DIGEST bytes of its SHA-256."""
    return body + hashlib.sha256(body).digest()[:DIGEST]


def write_artifact(entries, path) -> int:
    """Write the blob atomically (complete or not at all); return its size in bytes."""
    return atomic_write(path, build_blob(entries))


def _load(blob_or_path):
    if isinstance(blob_or_path, (bytes, bytearray, memoryview)):
        return bytes(blob_or_path), "artifact"
    try:
        with open(blob_or_path, "rb") as f:
            return f.read(), str(blob_or_path)
    except OSError as e:
        raise ArtifactError(f"{blob_or_path}: cannot read artifact: {e.strerror or e}") from None


def read_artifact(blob_or_path, with_manifest=False):
    """Decode every tensor (float32 numpy, hash-verified) via the shipped decoder."""
    blob, where = _load(blob_or_path)
    try:
        return decode(blob, with_manifest)
    except DecodeError as e:
        raise ArtifactError(f"{where}: {e}") from None


def read_manifest_checked(blob_or_path):
    """The validated manifest and data offset (no stream decoded)."""
    blob, where = _load(blob_or_path)
    try:
        return read_manifest(blob)
    except DecodeError as e:
        raise ArtifactError(f"{where}: {e}") from None


def _scheme(t):
    if PASSTHROUGH in t:
        return {"f2": "fp16", "f4": "fp32", "b2": "bf16"}[t[PASSTHROUGH][1]]
    g = t[QUANT].get(GROUP, 0)
    base = f"int{t[BITS]} " + ("per-tensor" if g < 0 else "per-row" if g == 0 else f"group {g}")
    return base + (f" +LQER r{t[LQER][0][SHAPE][1]}" if LQER in t else "")


def apportion(total: int, weights: list[int]) -> list[int]:
    """`total` split over `weights` in proportion, as integers that sum exactly to `total`
    (largest-remainder rounding, ties to the earlier part; all-zero weights split equally)."""
    if not weights:
        return []
    weights = weights if any(weights) else [1] * len(weights)
    whole = sum(weights)
    shares = [total * w // whole for w in weights]
    remainders = [total * w % whole for w in weights]
    for i in sorted(range(len(weights)), key=lambda i: (-remainders[i], i))[:total - sum(shares)]:
        shares[i] += 1
    return shares


def inspect(blob_or_path) -> "BlobReport":
    """Per-tensor rows and totals from the manifest alone (no stream is decoded).

    A stream's stored bytes are attributed to the parts read from it in proportion to their raw
    bytes, rounded by largest remainder, so every byte is attributed exactly once: the tensors'
    `bytes` sum to `totals["stream_bytes"]`, and with `overhead_bytes` (header, manifest,
    checksum) to the blob. `stream` is the stream of a tensor's codes (or passthrough values);
    `shared` says that stream also holds other tensors' parts, so its bytes are an attributed
    share, not a stream of its own (scales and LQER factors always share streams)."""
    blob, _ = _load(blob_or_path)
    m, data_at = read_manifest_checked(blob)
    S = m[STREAMS]
    rows, got = [], []  # got[i]: tensor i's attributed bytes per part kind
    owners = [[] for _ in S]  # owners[s]: [(tensor index, part kind, raw bytes)] in read order
    for i, t in enumerate(m[TENSORS]):
        q = t.get(QUANT, {})
        kinds = ([CODES] if PASSTHROUGH in t else [CODES] + ([ROW_ORDER] if ROW_ORDER in q else []) + [SCALES]) + [
            k for f in t.get(LQER, []) for k in [LQER] * (2 + (ROW_ORDER in f))
        ]
        parts = tensor_parts(t, S)
        for kind, (s, dt, shape) in zip(kinds, parts):
            owners[s].append((i, kind, math.prod(shape) * int(PART_TYPES[dt][-1])))
        got.append({CODES: 0, SCALES: 0, ROW_ORDER: 0, LQER: 0})
        rows.append({"name": t[NAME], "shape": t[SHAPE], "dtype": t[DTYPE], "scheme": _scheme(t), "bits": t.get(BITS),
                     "codec": ("transpose+" if q.get(TRANSPOSED) else "") + S[parts[0][0]][0], "stream": parts[0][0],
                     "params": math.prod(t[SHAPE])})
    for s, parts in enumerate(owners):
        for (i, kind, _), share in zip(parts, apportion(S[s][2], [raw for _, _, raw in parts])):
            got[i][kind] += share
    for r, g in zip(rows, got):
        r.update(codes_bytes=g[CODES], scales_bytes=g[SCALES] + g[ROW_ORDER], lqer_bytes=g[LQER],
                 bytes=sum(g.values()), shared=len({i for i, _, _ in owners[r["stream"]]}) > 1)
        r["bits_per_weight"] = r["bytes"] * 8 / r["params"] if r["params"] else 0.0
    stream_bytes = sum(s[2] for s in S)
    attributed = sum(r["bytes"] for r in rows)
    totals = {
        "tensors": len(rows), "params": sum(r["params"] for r in rows), "stream_bytes": stream_bytes,
        "tensor_bytes": attributed, "overhead_bytes": len(blob) - attributed, "blob_bytes": len(blob),
        "bits_per_weight": len(blob) * 8 / max(1, sum(r["params"] for r in rows)),
    }
    streams = [{"index": i, "codec": c, "raw_bytes": r, "bytes": b} for i, (c, r, b) in enumerate(S)]
    return BlobReport(tensors=rows, streams=streams, totals=totals)


class BlobReport(dict):
    """What `inspect` reads from a blob: a plain dict {"tensors": [row, ...], "streams": [...],
    "totals": {...}} (JSON-ready), plus `to_frame()` for a notebook."""

    def to_frame(self, table: str = "tensors"):
        """One of the report's tables ("tensors" or "streams") as a pandas DataFrame."""
        import pandas as pd  # only a notebook user pays for pandas here

        return pd.DataFrame(self[table])
