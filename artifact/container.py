"""The artifact writer, reader wrapper and inspector (the format itself: artifact/decoder.py).

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

import json
import math
import os
import tempfile
import zlib
from dataclasses import dataclass

import numpy as np

from artifact import codec as codecs
from artifact.decoder import (
    HEAD,
    MAGIC,
    VERSION,
    DecodeError,
    apply_lqer,
    decode,
    dequantize,
    read_manifest,
    tensor_hash,
    tensor_parts,
)
from artifact.errors import ArtifactError

DTYPE_LABELS = {"float32", "bfloat16", "float16", "float64"}
SCALE_TYPES = {np.dtype(np.float16): "f2", np.dtype(np.float32): "f4"}
PASS_TYPES = {np.dtype(np.float16): "f2", np.dtype(np.float32): "f4", np.dtype(np.uint16): "b2"}


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
    if scales.dtype not in SCALE_TYPES:
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
    block = {"c": None, "k": None, "f": SCALE_TYPES[scales.dtype]}
    if g:
        block["g"] = g
    stored = codes
    if order is not None:
        order = np.asarray(order, dtype=np.int64)
        if order.shape != (rows,) or not np.array_equal(np.sort(order), np.arange(rows)):
            _fail(name, f"row_order must be a permutation of {rows} rows")
        stored = codes[order]
    if spec.transpose:
        block["t"] = 1
    parts = [("c", spec, codecs.array_transform(spec, stored))]
    if order is not None:
        parts.append(("o", None, order.astype("<u2" if rows <= 65536 else "<u4")))
    parts.append(("k", None, np.ascontiguousarray(scales, scales.dtype.newbyteorder("<"))))
    w = dequantize(codes, s_in, g if g > 0 else None)
    return block, parts, w


def _entry_parts(e: TensorEntry):
    """(manifest dict, [(block dict, key, spec, stream group, array)], float32 weights)."""
    shape = tuple(int(d) for d in e.shape)
    label = str(e.dtype).replace("torch.", "")
    if label not in DTYPE_LABELS:
        _fail(e.name, f"unsupported original dtype {e.dtype!r}")
    t = {"n": e.name, "s": list(shape), "d": label}
    own = e.stream or f"tensor:{e.name}"
    if e.passthrough is not None:
        v = np.asarray(e.passthrough)
        if v.dtype not in PASS_TYPES or v.shape != shape:
            _fail(e.name, f"passthrough must be float16/float32/uint16(bf16) of shape {shape}")
        kind = PASS_TYPES[v.dtype]
        w = (v.astype(np.uint32) << 16).view(np.float32) if kind == "b2" else v.astype(np.float32)
        if not np.all(np.isfinite(w)):
            _fail(e.name, "passthrough values contain NaN or Inf")
        t["p"] = [None, kind]
        spec = codecs.parse_codec(e.codec)
        return t, [(t["p"], 0, spec, e.stream or "passthrough", np.ascontiguousarray(v, v.dtype.newbyteorder("<")))], w
    if e.codes is None or e.scales is None:
        _fail(e.name, "needs codes and scales, or passthrough values")
    scale_spec = codecs.parse_codec(e.scales_codec)
    block, parts, w = _block_parts(e.name, e.codes, e.scales, e.group_size, e.codec, shape, e.row_order)
    t["b"] = e.bits if e.bits is not None else int(np.abs(e.codes.astype(np.int16)).max(initial=0)).bit_length() + 1
    t["q"] = block
    out = [(block, k, spec or scale_spec, own if k == "c" else "side", a) for k, spec, a in parts]
    if e.lqer is not None:
        if len(shape) != 2 or len(e.lqer) != 2:
            _fail(e.name, "LQER needs a 2-D tensor and two factors (A, B)")
        factors = []
        for f, fshape in zip(e.lqer, [(shape[0], None), (None, shape[1])]):
            fs = tuple(np.shape(f.codes))
            if len(fs) != 2 or any(d is not None and d != s for d, s in zip(fshape, fs)):
                _fail(e.name, f"LQER factor shape {fs} does not fit {shape}")
            fb, fparts, fw = _block_parts(e.name, f.codes, f.scales, f.group_size, f.codec, fs)
            fb["s"] = list(fs)
            factors.append(fw)
            t.setdefault("l", []).append(fb)
            out += [(fb, k, spec or scale_spec, "lqer" if k == "c" else "side", a) for k, spec, a in fparts]
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
    for e in entries:
        t, parts, w = _entry_parts(e)
        if not np.all(np.isfinite(w)):
            _fail(e.name, "decoded weights contain NaN or Inf")
        for block, key, spec, group, array in parts:
            slot = streams.setdefault((spec.stream_codec, group), [len(streams), []])
            slot[1].append(array)
            block[key] = slot[0]
        t["h"] = tensor_hash(w)
        tensors.append(t)
    table, data = [], []
    for (stream_codec, _), (_, arrays) in streams.items():
        raw = b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)
        comp = codecs.compress_stream(stream_codec, raw)
        table.append([stream_codec, len(raw), len(comp)])
        data.append(comp)
    manifest = json.dumps({"S": table, "T": tensors}, separators=(",", ":")).encode()
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    packed = c.compress(manifest) + c.flush()
    head = MAGIC + bytes([VERSION]) + len(packed).to_bytes(4, "little") + len(manifest).to_bytes(4, "little")
    assert len(head) == HEAD
    body = head + packed + b"".join(data)
    return body + zlib.crc32(body).to_bytes(4, "little")


def write_artifact(entries, path) -> int:
    """Write the blob atomically (complete or not at all); return its size in bytes."""
    blob = build_blob(entries)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".artifact-")
    except OSError as e:
        raise ArtifactError(f"{path}: cannot write artifact: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise ArtifactError(f"{path}: cannot write artifact: {e.strerror or e}") from None
        raise
    return len(blob)


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
    if "p" in t:
        return {"f2": "fp16", "f4": "fp32", "b2": "bf16"}[t["p"][1]]
    g = t["q"].get("g", 0)
    base = f"int{t['b']} " + ("per-tensor" if g < 0 else "per-row" if g == 0 else f"group {g}")
    return base + (f" +LQER r{t['l'][0]['s'][1]}" if "l" in t else "")


def inspect(blob_or_path) -> dict:
    """Per-tensor rows and totals from the manifest alone (no stream is decoded).

    Bytes of a part sharing a stream with others are attributed in proportion to its raw
    bytes (`shared` marks rows with any such part)."""
    blob, _ = _load(blob_or_path)
    m, data_at = read_manifest_checked(blob)
    S = m["S"]
    rows = []
    for t in m["T"]:
        parts = tensor_parts(t, S)
        kinds = (["c"] if "p" in t else ["c"] + (["o"] if "o" in t["q"] else []) + ["k"]) + [
            k for f in t.get("l", []) for k in ["l"] * (2 + ("o" in f))
        ]
        got = {"c": 0.0, "k": 0.0, "o": 0.0, "l": 0.0}
        shared = False
        for kind, (s, dt, shape) in zip(kinds, parts):
            raw = math.prod(shape) * int(dt[-1])
            got[kind] += S[s][2] * raw / S[s][1] if S[s][1] else 0.0
            shared |= raw != S[s][1]
        n = math.prod(t["s"])
        total = sum(got.values())
        codec_name = S[parts[0][0]][0]
        rows.append(
            {"name": t["n"], "shape": t["s"], "dtype": t["d"], "scheme": _scheme(t), "bits": t.get("b"),
             "codec": ("transpose+" if t.get("q", {}).get("t") else "") + codec_name, "params": n,
             "codes_bytes": round(got["c"]), "scales_bytes": round(got["k"] + got["o"]),
             "lqer_bytes": round(got["l"]), "bytes": round(total),
             "bits_per_weight": total * 8 / n if n else 0.0, "shared": shared}
        )
    stream_bytes = sum(s[2] for s in S)
    totals = {
        "tensors": len(rows), "params": sum(r["params"] for r in rows), "stream_bytes": stream_bytes,
        "overhead_bytes": len(blob) - stream_bytes, "blob_bytes": len(blob),
        "bits_per_weight": len(blob) * 8 / max(1, sum(r["params"] for r in rows)),
    }
    streams = [{"index": i, "codec": c, "raw_bytes": r, "bytes": b} for i, (c, r, b) in enumerate(S)]
    return {"tensors": rows, "streams": streams, "totals": totals}
