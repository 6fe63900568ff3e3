"""What the fuzzer (`artifact.fuzz`) feeds the decoder: blob surgery (split a blob into manifest
and streams, join them back with consistent lengths and SHA-256 trailer, reconcile a stream table
with edited shapes) and the mutation kinds, each a function of a random generator alone.

Mutations that edit anything inside the blob recompute its trailer (and the header's lengths)
unless the kind says otherwise ("bit flip", and half the truncations and appended bytes, keep
the original trailer), so the checks behind the trailer are what is tested.
"""

from __future__ import annotations

import copy
import json
import math
import zlib

import numpy as np

from artifact.container import assemble_blob, with_digest
from artifact.runtime.decoder import DecodeError, tensor_parts
from artifact.runtime.format import (
    DIGEST,
    HEAD,
    LQER,
    NAME,
    PART_TYPES,
    SHAPE,
    STREAMS,
    TENSORS,
)

KINDS = ("bit flip", "bit flip, digest fixed", "truncation", "appended bytes", "manifest edit",
         "swapped sections", "size bomb")
BOMB_BYTES = 1 << 21  # real zero streams the size bombs carry, of this many raw bytes (within the work bound)


# ----------------------------------------------------------------------------- blob surgery
def split(blob: bytes) -> tuple[dict, list[bytes]]:
    """(manifest, [stored bytes of each stream]) of a well-formed blob."""
    size, raw = int.from_bytes(blob[5:9], "little"), int.from_bytes(blob[9:13], "little")
    m = json.loads(zlib.decompress(blob[HEAD:HEAD + size], -15, raw))
    pos, streams = HEAD + size, []
    for _, _, stored in m[STREAMS]:
        streams.append(blob[pos:pos + stored])
        pos += stored
    return m, streams


def join(m, streams: list[bytes], fix_lengths: bool = True) -> bytes:
    """A blob of manifest `m` and these stream bytes (with `fix_lengths`, the table's stored
    lengths set to match them), with consistent header and trailer."""
    table = m.get(STREAMS) if isinstance(m, dict) else None
    for s, data in zip(table if fix_lengths and isinstance(table, list) else [], streams):
        if isinstance(s, list) and len(s) == 3:
            s[2] = len(data)
    return assemble_blob(m, b"".join(streams))


def reconcile(m: dict) -> dict:
    """`m` with every stream's raw length set to what its tensors read from it (where they
    parse), so that only deeper checks than the stream table can refuse it."""
    S = m.get(STREAMS)
    if not isinstance(S, list) or not all(isinstance(s, list) and len(s) == 3 for s in S):
        return m
    used = [0] * len(S)
    for t in m.get(TENSORS) or []:
        try:
            for s, dt, shape in tensor_parts(t, S):
                used[s] += math.prod(shape) * int(PART_TYPES[dt][-1])
        except (DecodeError, TypeError, KeyError, IndexError):
            continue
    for s, n in zip(S, used):
        s[1] = n
    return m


def _leaves(x, path=()):
    yield path, x
    items = x.items() if isinstance(x, dict) else enumerate(x) if isinstance(x, list) else ()
    for k, v in items:
        yield from _leaves(v, path + (k,))


def _replacements(v, rng) -> list:
    if isinstance(v, bool) or v is None:
        return [0, 1, "x", None]
    if isinstance(v, int):
        big = int(rng.integers(1, 64))
        return [-1, 0, 1, v + 1, v - 1, 2 * v, 2 ** big, 10 ** 30, 1.5, "7", None, [v], True, float("nan")]
    if isinstance(v, str):
        return ["", "x" * 300, "ans", "raw", "zstd-1", "lzma-9e", "deinterleave9+zlib-1", "deinterleave2+ans",
                v + "x", v[:-1], v.upper(), 3, None, "0" * 16]
    if isinstance(v, list):
        return [[], v + [1], v[:-1], [v], {}, "x", v[::-1], [2 ** 20] * max(1, len(v)), v + v]
    return [[], "x", 0, {}, {**v, "g": 5}, {**v, "t": 1}, {**v, "o": 0}, {**v, "zz": 1}, {**v, "b": 4},
            {**v, "l": []}, {**v, "p": [0, "f2"]}]


def _edit(m: dict, path, value, delete=False) -> dict:
    m = copy.deepcopy(m)
    node = m
    for k in path[:-1]:
        node = node[k]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return m


# ----------------------------------------------------------------------------- mutations
def _bit_flip(blob, rng, ctx):
    b = bytearray(blob)
    for _ in range(int(rng.integers(1, 5))):
        b[int(rng.integers(len(b)))] ^= 1 << int(rng.integers(8))
    return bytes(b)


def _bit_flip_fixed(blob, rng, ctx):
    return with_digest(_bit_flip(blob[:-DIGEST], rng, ctx))


def _truncation(blob, rng, ctx):
    if rng.random() < 0.5:
        return blob[:int(rng.integers(len(blob)))]
    body = blob[:-DIGEST]
    return with_digest(body[:int(rng.integers(len(body)))])


def _appended(blob, rng, ctx):
    extra = rng.bytes(int(rng.integers(1, 65)))
    way = rng.integers(3)
    if way == 0:
        return blob + extra
    if way == 1:
        return with_digest(blob[:-DIGEST] + extra)
    m, streams = copy.deepcopy(ctx["split"])  # trailing data inside one stream, its length fixed up
    j = int(rng.integers(len(streams)))
    streams[j] = streams[j] + extra
    return join(m, streams)


def _manifest_edit(blob, rng, ctx):
    m, streams = ctx["split"]
    paths = ctx["paths"]
    path = paths[int(rng.integers(len(paths)))]
    node = m
    for k in path:
        node = node[k]
    way = rng.random()
    if way < 0.1 and isinstance(node, dict):
        mm = _edit(m, path + ("zz",), 1)  # an unknown field
    elif way < 0.25 and path:
        mm = _edit(m, path, None, delete=True)
    else:
        choices = _replacements(node, rng)
        mm = _edit(m, path, choices[int(rng.integers(len(choices)))]) if path else choices[0]
    return join(mm, list(streams), fix_lengths=False)


def _swap(blob, rng, ctx):
    m, streams = copy.deepcopy(ctx["split"])
    S, T = m[STREAMS], m[TENSORS]
    way = int(rng.integers(5))
    i, j = (int(x) for x in rng.choice(len(T) if way in (1, 2) else len(S), 2, replace=False))
    if way == 0:  # two streams, bytes and table rows together
        streams[i], streams[j] = streams[j], streams[i]
        S[i], S[j] = S[j], S[i]
    elif way == 1:  # two tensor entries
        T[i], T[j] = T[j], T[i]
    elif way == 2:  # the names of two tensors (the attack of a renamed state dict)
        T[i][NAME], T[j][NAME] = T[j][NAME], T[i][NAME]
    elif way == 3:  # two streams' bytes, the table left as it was
        streams[i], streams[j] = streams[j], streams[i]
    else:  # two equal-length ranges of the stream region
        data = bytearray(b"".join(streams))
        n = int(rng.integers(1, max(2, len(data) // 4)))
        a, b = sorted(int(x) for x in rng.choice(max(1, len(data) - n), 2, replace=False))
        if b - a >= n:
            data[a:a + n], data[b:b + n] = data[b:b + n], data[a:a + n]
        out, pos = [], 0
        for s in streams:
            out.append(bytes(data[pos:pos + len(s)]))
            pos += len(s)
        streams = out
    return join(m, streams)


def _bomb_streams() -> dict[str, bytes]:
    """Real streams of BOMB_BYTES zeros in every family (ans: a one-symbol table, zero bits each)."""
    import lzma

    import brotli
    import zstandard

    zeros = bytes(BOMB_BYTES)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return {
        "zlib": c.compress(zeros) + c.flush(),
        "zstd": zstandard.ZstdCompressor(level=3, write_content_size=False).compress(zeros),
        "brotli": brotli.compress(zeros, quality=1),
        "lzma": lzma.compress(zeros, format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2, "preset": 0}]),
        # scale 8, symbol 0 (index 128) alone with frequency 256 (9 bits), state 2**31
        "ans": bytes([8, 128, 0, 9, 128, 0]) + (1 << 31).to_bytes(8, "little"),
        "raw": b"\0" * 64,
    }


def _size_bomb(blob, rng, ctx):
    m, streams = copy.deepcopy(ctx["split"])
    S, T = m[STREAMS], m[TENSORS]
    way = int(rng.integers(5))
    quantized = [t for t in T if "q" in t and t[SHAPE] and all(t[SHAPE])]
    if way == 0:  # a huge shape, stream table made to agree
        t = quantized[int(rng.integers(len(quantized)))]
        t[SHAPE] = [d * int(2 ** rng.integers(4, 24)) for d in t[SHAPE]]
        return join(reconcile(m), streams)
    if way == 1:  # a stream replaced by a real one of zeros that inflates to its claim, or past it
        alone = [t for t in quantized if t["q"].get("g") == -1]  # one scale: the codes stream alone grows
        t = (alone or quantized)[0] if rng.random() < 0.5 else quantized[int(rng.integers(len(quantized)))]
        j = t["q"]["c"]
        family = S[j][0].split("+")[-1].split("-")[0]
        streams[j] = ctx["bombs"][family]
        rows = BOMB_BYTES // max(1, math.prod(t[SHAPE][1:])) if rng.random() < 0.5 else int(2 ** rng.integers(8, 30))
        t[SHAPE] = [rows] + t[SHAPE][1:]
        return join(reconcile(m), streams)
    if way == 2:  # an LQER rank far beyond the tensor
        t = next((t for t in T if LQER in t), quantized[0])
        if LQER in t:
            r = int(2 ** rng.integers(6, 20))
            t[LQER][0][SHAPE][1] = t[LQER][1][SHAPE][0] = r
        return join(reconcile(m), streams)
    if way == 3:  # the header claims a huge manifest
        b = bytearray(blob[:-DIGEST])
        b[9:13] = int(2 ** rng.integers(20, 32) - 1).to_bytes(4, "little")
        return with_digest(bytes(b))
    # a manifest that inflates hugely: many tensors / deep nesting / a long list
    n = int(2 ** rng.integers(10, 21))
    kind = rng.integers(3)
    tail = ("[" * n + "]" * n) if kind == 0 else ",".join(["[]"] * n) if kind == 1 else ",".join(["0"] * n)
    raw = f'{{"S":[],"T":[{tail}]}}'.encode()
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    packed = c.compress(raw) + c.flush()
    head = blob[:5] + len(packed).to_bytes(4, "little") + len(raw).to_bytes(4, "little")
    return with_digest(head + packed)


MUTATORS = {"bit flip": _bit_flip, "bit flip, digest fixed": _bit_flip_fixed, "truncation": _truncation,
            "appended bytes": _appended, "manifest edit": _manifest_edit, "swapped sections": _swap,
            "size bomb": _size_bomb}


def make_case(corpus_blobs: dict[str, bytes], contexts: dict, seed: int, index: int) -> tuple[str, str, bytes]:
    """(kind, corpus label, mutated blob) of case `index`: a function of (seed, index) alone."""
    rng = np.random.default_rng([seed, index])
    kind = KINDS[index % len(KINDS)]
    labels = sorted(corpus_blobs)
    label = labels[int(rng.integers(len(labels)))]
    return kind, label, MUTATORS[kind](corpus_blobs[label], rng, contexts[label])


def contexts_for(corpus_blobs: dict[str, bytes]) -> dict:
    bombs = _bomb_streams()
    out = {}
    for label, blob in corpus_blobs.items():
        m, streams = split(blob)
        out[label] = {"split": (m, streams), "paths": [p for p, _ in _leaves(m)], "bombs": bombs}
    return out
