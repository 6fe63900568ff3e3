"""The container: round trips of every scheme, determinism, inspect, and a fuzzed reader."""

import json
import os
import subprocess
import sys
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest

from artifact.runtime import decoder
from artifact.container import (
    QuantBlock,
    TensorEntry,
    bf16_bits,
    build_blob,
    inspect,
    read_artifact,
    write_artifact,
)
from artifact.runtime.decoder import HEAD, DecodeError, apply_lqer, dequantize
from artifact.runtime.errors import ArtifactError, GolfError
from artifact.submission import write_runtime_package

ROOT = Path(__file__).resolve().parents[1]


def codes(rng, shape, r=31):
    return np.clip(np.round(rng.laplace(0, r / 5, shape)), -r, r).astype(np.int8)


def scales(rng, n):
    return (rng.random(n) * 0.02 + 0.001).astype(np.float16)


def entries(seed=0):
    """One entry per scheme the format supports."""
    rng = np.random.default_rng(seed)
    a, b = codes(rng, (40, 4), 1), codes(rng, (4, 64), 7)
    bf = (rng.standard_normal((8, 3)).astype(np.float32).view(np.uint32) & 0xFFFF0000).view(np.float32)
    return [
        TensorEntry("row.int6", (64, 48), "bfloat16", codes(rng, (64, 48)), scales(rng, 64), None, "ans", bits=6),
        TensorEntry("group.int4", (32, 64), "float32", codes(rng, (32, 64), 7), scales(rng, 128), 16, "zstd-22"),
        TensorEntry("tensor.int8", (100,), "float32", codes(rng, (100,), 127), np.array(0.01, np.float32), None, "zlib-9"),
        TensorEntry("ternary", (16, 32), "float32", codes(rng, (16, 32), 1), scales(rng, 16), None, "ans"),
        TensorEntry("pass.f32", (50,), "float32", passthrough=rng.standard_normal(50).astype(np.float32),
                    codec="deinterleave4+brotli-11"),
        TensorEntry("pass.f16", (5, 10), "float16", passthrough=rng.standard_normal((5, 10)).astype(np.float16),
                    codec="deinterleave2+brotli-11"),
        TensorEntry("pass.bf16", (8, 3), "bfloat16", passthrough=bf16_bits(bf), codec="lzma-9"),
        TensorEntry("lqer.perm.T", (40, 64), "float32", codes(rng, (40, 64)), scales(rng, 40), None,
                    "transpose+brotli-11", row_order=rng.permutation(40),
                    lqer=(QuantBlock(a, np.array(0.003, np.float16)),
                          QuantBlock(b, (rng.random((4, 1)) * 0.01).astype(np.float16), 64, "zstd-3"))),
        TensorEntry("shared.a", (16, 16), "float32", codes(rng, (16, 16)), scales(rng, 16), None, "ans", stream="g"),
        TensorEntry("shared.b", (16, 16), "float32", codes(rng, (16, 16)), scales(rng, 16), None, "ans", stream="g"),
        TensorEntry("empty", (0, 8), "float32", np.zeros((0, 8), np.int8), np.zeros(0, np.float16), None, "ans"),
    ]


def expected(e: TensorEntry):
    if e.passthrough is not None:
        v = e.passthrough
        return (v.astype(np.uint32) << 16).view(np.float32) if v.dtype == np.uint16 else v.astype(np.float32)
    s = e.scales.reshape(()) if e.scales.size == 1 else e.scales
    w = dequantize(e.codes, s, e.group_size)
    if e.lqer:
        f = [dequantize(q.codes, q.scales.reshape(()) if q.scales.size == 1 else q.scales, q.group_size) for q in e.lqer]
        w = apply_lqer(w, *f)
    return w


@pytest.fixture(scope="module")
def blob():
    return build_blob(entries())


def test_round_trip_every_scheme_bit_exact(blob, tmp_path):
    path = tmp_path / "model.golf"
    assert write_artifact(entries(), path) == len(blob) == path.stat().st_size
    out = read_artifact(path)
    es = entries()
    assert list(out) == [e.name for e in es]
    for e in es:
        assert out[e.name].dtype == np.float32 and out[e.name].shape == tuple(e.shape)
        assert np.array_equal(out[e.name], expected(e)), e.name
    lq = es[7]
    assert not np.array_equal(out[lq.name], dequantize(lq.codes, lq.scales))  # the LQER term was added


def test_same_entries_give_identical_bytes_across_processes(blob):
    assert build_blob(entries()) == blob
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from tests.test_container import entries;"
            "from artifact.container import build_blob; sys.stdout.buffer.write(build_blob(entries()))")
    other = subprocess.run([sys.executable, "-c", code, str(ROOT)], capture_output=True, check=True, cwd=ROOT)
    assert other.stdout == blob


def test_shipped_decoder_runs_alone_in_a_fresh_process(blob, tmp_path):
    write_runtime_package(tmp_path, ("decoder",))
    (tmp_path / "m.golf").write_bytes(blob)
    code = ("import sys; sys.path.insert(0, '.'); from golf_runtime import decoder; import numpy as np;"
            "out = decoder.decode('m.golf');"
            "assert not any(m.split('.')[0] in ('artifact','train','analysis') for m in sys.modules);"
            "import torch; t = decoder.decode_torch('m.golf');"
            "print(len(out), t['row.int6'].dtype, t['pass.f16'].dtype, float(sum(np.abs(v).sum() for v in out.values())))")
    run = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    total = sum(float(np.abs(expected(e)).sum()) for e in entries())
    n, dt1, dt2, s = run.stdout.split()
    assert int(n) == len(entries()) and dt1 == "torch.bfloat16" and dt2 == "torch.float16"
    assert abs(float(s) - total) < 1e-3 * total


def test_inspect_reports_from_the_manifest(blob, tmp_path):
    path = tmp_path / "a.golf"
    path.write_bytes(blob)
    rep = inspect(path)
    rows = {r["name"]: r for r in rep["tensors"]}
    assert rep["totals"]["blob_bytes"] == len(blob)
    assert rep["totals"]["params"] == sum(int(np.prod(e.shape)) for e in entries())
    assert rep["totals"]["stream_bytes"] + rep["totals"]["overhead_bytes"] == len(blob)
    # every stored byte is attributed exactly once: tensors + header/manifest/checksum = the blob
    assert sum(r["bytes"] for r in rows.values()) == rep["totals"]["tensor_bytes"] == rep["totals"]["stream_bytes"]
    for r in rows.values():
        assert r["bytes"] == r["codes_bytes"] + r["scales_bytes"] + r["lqer_bytes"]
    assert rows["shared.a"]["shared"] and not rows["row.int6"]["shared"]
    assert list(rep.to_frame()["name"]) == [e.name for e in entries()]
    own = [s for s in rep["streams"] if s["codec"] == "ans" and s["raw_bytes"] == 64 * 48]
    assert rows["row.int6"]["codes_bytes"] == own[0]["bytes"]
    assert rows["row.int6"]["scheme"] == "int6 per-row" and rows["group.int4"]["scheme"] == "int4 group 16"
    assert rows["tensor.int8"]["scheme"] == "int8 per-tensor" and rows["pass.bf16"]["scheme"] == "bf16"
    assert rows["lqer.perm.T"]["lqer_bytes"] > 0 and rows["lqer.perm.T"]["codec"] == "transpose+brotli-11"
    assert rows["ternary"]["bits"] == 2 and 0 < rows["ternary"]["bits_per_weight"] < 8


@pytest.mark.parametrize("bad", [
    dict(codes=np.zeros((4, 4), np.int16)),
    dict(codes=np.zeros((4, 5), np.int8)),
    dict(scales=np.full(4, np.nan, np.float16)),
    dict(scales=np.ones(3, np.float16)),
    dict(scales=np.ones(4, np.float64)),
    dict(group_size=3, scales=np.ones(8, np.float16)),
    dict(dtype="int64"),
    dict(codec="gzip-3"),
    dict(row_order=np.array([0, 0, 1, 2])),
])
def test_bad_entries_raise_clear_errors(bad):
    base = dict(name="w", shape=(4, 4), dtype="float32", codes=np.zeros((4, 4), np.int8),
                scales=np.ones(4, np.float16), group_size=None, codec="ans")
    base.update(bad)
    with pytest.raises(GolfError) as info:
        build_blob([TensorEntry(**base)])
    assert "tensor w:" in str(info.value) or "codec" in str(info.value)


def test_duplicates_and_missing_files():
    e = entries()[:1]
    with pytest.raises(ArtifactError):
        build_blob(e + e)
    with pytest.raises(ArtifactError, match="cannot read"):
        read_artifact("/nonexistent/model.golf")


# ---------------------------------------------------------------- fuzzing


def split(blob):
    size, raw = int.from_bytes(blob[5:9], "little"), int.from_bytes(blob[9:13], "little")
    m = json.loads(zlib.decompress(blob[HEAD : HEAD + size], -15, raw))
    return m, blob[HEAD + size : -4]


def assemble(m, data, head_edit=None):
    """A blob with a (possibly edited) manifest, consistent lengths and a valid checksum."""
    text = json.dumps(m, separators=(",", ":")).encode()
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    packed = c.compress(text) + c.flush()
    body = bytearray(decoder.MAGIC + bytes([decoder.VERSION]) + len(packed).to_bytes(4, "little")
                     + len(text).to_bytes(4, "little") + packed + data)
    if head_edit:
        head_edit(body)
    return recrc(bytes(body))


def recrc(body):
    return body + zlib.crc32(body).to_bytes(4, "little")


def leaves(x, path=()):
    if isinstance(x, dict):
        yield path, x
        for k, v in x.items():
            yield from leaves(v, path + (k,))
    elif isinstance(x, list):
        yield path, x
        for i, v in enumerate(x):
            yield from leaves(v, path + (i,))
    else:
        yield path, x


def replaced(m, path, value, delete=False):
    m = json.loads(json.dumps(m))
    node = m
    for k in path[:-1]:
        node = node[k]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return m


def mutations(v):
    if isinstance(v, bool) or v is None:
        return [0, 1, "x"]
    if isinstance(v, int):
        return [-1, 0, v + 1, v - 1, 2**31, 2**40, 2**62, 10**30, 1.5, "7", None, [v], True]
    if isinstance(v, str):
        return ["", "x" * 300, "ans", "raw", "zstd-1", "deinterleave9+zlib-1", "deinterleave2+ans", v + "x", 3]
    if isinstance(v, list):
        return [[], v + [1], v[:-1], [v], {}, "x", v[::-1], [2**20] * max(1, len(v))]
    return [[], "x", 0, {}, {**v, "g": 5}, {**v, "t": 1}, {**v, "o": 0}]


def decode_outcome(b):
    """'error' on DecodeError; 'ok' when decoding succeeds, which is only allowed when every
    decoded tensor is exactly one of the originals (an edit of a name, a label, a codec level,
    an ignored key, or of the empty tensor)."""
    try:
        out = decoder.decode(b)
    except DecodeError as e:
        assert "MemoryError" not in str(e)
        return "error"
    originals = [expected(e) for e in entries()]
    for w in out.values():
        assert any(w.shape == o.shape and np.array_equal(w, o) for o in originals)
    return "ok"


def test_fuzzed_blobs_raise_only_decode_error(blob):
    rng = np.random.default_rng(11)
    m, data = split(blob)
    decoder.decode(blob)  # warm the ans kernel so timings below are the fuzz itself
    tracemalloc.start()
    start = time.time()
    outcomes = {"ok": 0, "error": 0}
    ok_paths = set()
    # 1. random bit flips anywhere, checksum left alone (must all fail on it) and recomputed
    for i in range(1500):
        b = bytearray(blob)
        pos = int(rng.integers(len(b)))
        b[pos] ^= 1 << int(rng.integers(8))
        fixed = i % 2 == 1 and pos < len(b) - 4
        b = recrc(bytes(b[:-4])) if fixed else bytes(b)
        outcomes[decode_outcome(b)] += 1
        if not fixed:
            with pytest.raises(DecodeError):
                decoder.read_manifest(b)
    # 2. truncation at every region (and every 5th byte), with and without a fixed checksum
    for cut in sorted(set(range(0, len(blob), 5)) | {0, 1, 4, 5, 8, 9, 12, 13, len(blob) - 4, len(blob) - 1}):
        for b in (blob[:cut], recrc(blob[:cut]), blob[:cut] + blob[-4:]):
            if b == blob:  # cutting exactly the checksum and putting it back is no corruption
                continue
            with pytest.raises(DecodeError):
                decoder.decode(b)
    # 3. every header field edited (checksum recomputed)
    for pos in range(HEAD):
        for val in (0, 1, 0x7F, 0xFF):
            b = bytearray(blob[:-4])
            if b[pos] == val:
                continue
            b[pos] = val
            with pytest.raises(DecodeError):
                decoder.decode(recrc(bytes(b)))
    # 4. every manifest field replaced / deleted (lengths and checksum kept consistent)
    for path, v in list(leaves(m)):
        if not path:
            continue
        cases = [replaced(m, path, x) for x in mutations(v) if not (x == v and type(x) is type(v))]
        cases.append(replaced(m, path, None, delete=True))
        for mm in cases:
            result = decode_outcome(assemble(mm, data))
            outcomes[result] += 1
            if result == "ok":
                ok_paths.add(path)
    # 5. stream payload bytes shuffled between streams, edited stream table
    for _ in range(200):
        b = bytearray(data)
        i, j = sorted(rng.integers(0, len(b), 2))
        b[i:j] = bytes(reversed(b[i:j]))
        outcomes[decode_outcome(assemble(m, bytes(b)))] += 1
    elapsed = time.time() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 64 << 20, f"peak traced memory {peak / 2**20:.1f} MiB"
    # Success only where decode_outcome found the exact original weights: descriptive fields
    # (names, dtype labels, bits, codec levels), truthy "t", equivalent groupings, the empty tensor.
    assert not any("h" in p for p in ok_paths)  # a wrong hash never passes
    assert outcomes["ok"] < outcomes["error"] / 10
    assert outcomes["error"] > 3000
    print(f"fuzz: {sum(outcomes.values())} decodes, {outcomes}, {elapsed:.1f} s, peak {peak / 2**20:.1f} MiB")


def test_absurd_sizes_are_refused_before_allocation(blob):
    m, data = split(blob)
    t0 = m["T"][0]
    stream = t0["q"]["c"]
    for shape in ([2**20, 2**20], [2**40], [2**31, 1], [2**15, 2**15, 2**15]):
        mm = json.loads(json.dumps(m))
        mm["T"][0]["s"] = shape
        # make the stream table agree so only the size checks can stop it
        mm["S"][stream][1] = int(np.prod(shape, dtype=np.float64))
        tracemalloc.start()
        with pytest.raises(DecodeError, match="too many|bad|lengths"):
            decoder.decode(assemble(mm, data))
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < 16 << 20
    with pytest.raises(DecodeError, match="manifest length"):
        decoder.decode(assemble(m, data, head_edit=lambda b: b.__setitem__(slice(9, 13), (2**31).to_bytes(4, "little"))))


def test_foreign_files_are_refused(tmp_path):
    for junk in (b"", b"GOLF", b"PK\x03\x04" + os.urandom(100), os.urandom(5000)):
        p = tmp_path / "x.golf"
        p.write_bytes(junk)
        with pytest.raises(ArtifactError):
            read_artifact(p)
        with pytest.raises(ArtifactError):
            inspect(p)


def test_apportion_splits_exactly_by_largest_remainder():
    from artifact.container import apportion

    assert apportion(10, [1, 1, 1]) == [4, 3, 3]  # ties go to the earlier part
    assert apportion(7, [5, 3, 0]) == [4, 3, 0]  # 4.375, 2.625, 0: the larger remainder gets the byte
    assert apportion(5, [0, 0]) == [3, 2] and apportion(0, [3, 4]) == [0, 0] and apportion(9, []) == []
    rng = np.random.default_rng(0)
    for _ in range(200):
        weights = rng.integers(0, 10_000, rng.integers(1, 30)).tolist()
        total = int(rng.integers(0, 10**6))
        shares = apportion(total, weights)
        assert sum(shares) == total and all(s >= 0 for s in shares)
        if sum(weights):  # each share is its exact quota rounded down or up
            assert all(abs(s - total * w / sum(weights)) < 1 for s, w in zip(shares, weights))


def test_own_stream_bytes_equal_the_size_model(blob):
    from artifact import codec

    rows = {r["name"]: r for r in inspect(blob)["tensors"]}
    for e in entries():
        if e.stream is None and e.passthrough is None and e.row_order is None and e.codes.size:
            assert rows[e.name]["codes_bytes"] == codec.predict_size(e.codec, e.codes), e.name
