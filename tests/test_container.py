"""The container: round trips of every scheme, determinism, inspect, and a fuzzed reader."""

import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from artifact import fuzz
from artifact.fuzz_cases import join, reconcile, split
from artifact.container import (
    with_digest,
    QuantBlock,
    TensorEntry,
    bf16_bits,
    build_blob,
    inspect,
    read_artifact,
    write_artifact,
)
from artifact.runtime import decoder
from artifact.runtime.decoder import HEAD, DecodeError, apply_lqer, dequantize
from artifact.runtime.errors import ArtifactError, GolfError
from artifact.submission import write_runtime_package
from train.bundled import BUNDLED_CHECKPOINT

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


# ---------------------------------------------------------------- untrusted blobs


def test_fuzz_finds_no_crash_hang_memory_or_silent_difference():
    # 2,100 mutated real blobs of every codec (300 per mutation kind), each decoded in a worker
    # with an address-space cap: every one is a deliberate DecodeError or decodes to exactly the
    # original tensors. `golf fuzz` runs the same at 20,000+ cases.
    blobs = fuzz.corpus(BUNDLED_CHECKPOINT)
    assert sorted(blobs) == sorted(fuzz.CODECS)
    report = fuzz.run_fuzz(blobs, 2100, seed=11, jobs=2)
    assert report.failed == 0, report.failures[:5]
    for kind in fuzz.KINDS:
        assert sum(report.counts[kind].values()) == 300
        assert report.counts[kind]["clean error"] >= 250, kind
    # corruption the trailer sees is never decoded
    assert report.counts["bit flip"]["clean error"] == report.counts["truncation"]["clean error"] == 300
    assert report.worst["cpu_s"]["value"] < fuzz.CPU_LIMIT


def test_small_blobs_cannot_ask_for_much_work():
    rows = {r["blob"]: r for r in fuzz.measure_blobs(fuzz.small_blob_bombs())}
    assert all(r["bytes"] < fuzz.SMALL_BLOB for r in rows.values())
    assert rows["zeros at the work bound, ans (valid)"]["outcome"] == "decoded"  # legit zero tensors decode
    for name, r in rows.items():
        assert r["outcome"] in ("decoded", "clean error"), (name, r)
        # 4 M units of work at most: a few hundredths of a second, ~16 MiB (CPU time, not wall:
        # the machine is shared)
        assert r["cpu_s"] < 0.5 and (r["peak_bytes"] or 0) < 64 << 20, (name, r)
    assert "more decoding work" in rows["rANS stream claiming 2**27 symbols"]["detail"]


def test_every_decoded_fact_is_covered(blob):
    m, streams = split(blob)
    # names swapped, trailer recomputed: the per-tensor hashes (which cover names) refuse it
    swapped = json.loads(json.dumps(m))
    swapped["T"][0]["n"], swapped["T"][1]["n"] = swapped["T"][1]["n"], swapped["T"][0]["n"]
    with pytest.raises(DecodeError, match="hash mismatch"):
        decoder.decode(join(swapped, streams))
    # so are which tensors there are and their order: dropping the empty tensor (no stream bytes
    # to miss) or swapping two entries is refused
    dropped = json.loads(json.dumps(m))
    dropped["T"] = [t for t in dropped["T"] if t["n"] != "empty"]
    with pytest.raises(DecodeError, match="hash mismatch"):
        decoder.decode(join(dropped, streams))
    # the original dtype is covered too
    relabel = json.loads(json.dumps(m))
    relabel["T"][0]["d"] = "float16" if relabel["T"][0]["d"] != "float16" else "float32"
    with pytest.raises(DecodeError, match="hash mismatch"):
        decoder.decode(join(relabel, streams))
    # one flipped manifest bit without recomputing the trailer: the SHA-256 trailer refuses it
    flipped = bytearray(blob)
    flipped[HEAD + 3] ^= 1
    with pytest.raises(DecodeError, match="checksum mismatch"):
        decoder.decode(bytes(flipped))


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["T"].clear(), "no tensors"),
    (lambda m: m["T"][1].update(n=m["T"][0]["n"]), "duplicate tensor name"),
    (lambda m: m["T"][0].update(n=""), "without a name"),
    (lambda m: m["T"][0].update(zz=1), r"unknown or missing field\(s\) \['zz'\]"),
    (lambda m: m["T"][0]["q"].update(zz=1), r"\['zz'\]"),
    (lambda m: m["T"][0].pop("b"), r"\['b'\]"),
    (lambda m: m["T"][0]["q"].pop("c"), r"\['c'\]"),
    (lambda m: m.update(zz=1), r"manifest: unknown or missing field\(s\) \['zz'\]"),
    (lambda m: m["T"][0].update(b=9), "bad bit width"),
])
def test_bad_manifests_are_refused_by_name(blob, edit, message):
    m, streams = split(blob)
    edit(m)
    with pytest.raises(DecodeError, match=message):
        decoder.decode(join(m, streams))


def test_trailing_stream_data_is_refused_in_every_codec():
    blobs = {c: build_blob(entries()[:1] + [TensorEntry("p", (64,), "float32", codec=c,
                                                         passthrough=np.linspace(-1, 1, 64, dtype=np.float32))])
             for c in fuzz.CODECS}
    for b in blobs.values():
        m, streams = split(b)
        j = m["T"][-1]["p"][0]
        streams[j] += b"\x00\x01\x02\x03"
        with pytest.raises(DecodeError, match="cleanly|corrupt|not 256|decodes to"):
            decoder.decode(join(m, streams))


def test_absurd_sizes_are_refused_before_allocation(blob):
    m, streams = split(blob)
    for shape in ([2**20, 2**20], [2**40], [2**27, 2], [2**15, 2**15, 2**15]):
        mm = json.loads(json.dumps(m))
        mm["T"][0]["s"] = shape
        tracemalloc.start()
        with pytest.raises(DecodeError, match="too many|bad|lengths|work"):
            decoder.decode(join(reconcile(mm), streams))  # the stream table made to agree
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < 16 << 20
    head = bytearray(blob[:-decoder.DIGEST])
    head[9:13] = (2**31).to_bytes(4, "little")
    with pytest.raises(DecodeError, match="manifest length"):
        decoder.decode(with_digest(bytes(head)))


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
