"""Codecs: bit-exact round trips, the entropy coder's bound and exact size model, estimators."""

from pathlib import Path

import numpy as np
import pytest

from artifact import codec, rans
from artifact.runtime.decoder import DecodeError, _ans_loop, ans_decode
from artifact.runtime.errors import ArtifactError, ConfigError

ALL_CODECS = ["raw", "ans", "zlib-9", "zlib-1", "zstd-22", "zstd-3", "brotli-11", "lzma-9", "lzma-6e"]


def laplace_codes(rng, n, bits=6, k=12.0):
    """Per-row SDClip-like int codes: Laplacian weights clipped at k·std, R = 2**(bits-1)-1."""
    r = 2 ** (bits - 1) - 1
    w = rng.laplace(0, 1, n)
    return np.clip(np.round(w / (k * w.std() / r)), -r, r).astype(np.int8)


def streams(rng):
    return {
        "empty": np.zeros(0, np.int8),
        "one": np.array([-7], np.int8),
        "same": np.full(5000, 3, np.int8),
        "two": np.array([-128, 127] * 300, np.int8),
        "full_range": np.arange(-128, 128, dtype=np.int8).repeat(3),
        "uniform": rng.integers(-128, 128, 4000).astype(np.int8),
        "int6": laplace_codes(rng, 20000),
        "int2": rng.choice(np.array([-1, 0, 1], np.int8), 3001, p=[0.2, 0.6, 0.2]),
        "fp16": rng.standard_normal(1001).astype(np.float16),
        "fp32": rng.standard_normal(257).astype(np.float32),
    }


@pytest.mark.parametrize("spec", ALL_CODECS)
def test_round_trip_every_codec_and_stream(spec):
    rng = np.random.default_rng(1)
    for name, x in streams(rng).items():
        blob = codec.encode(spec, x)
        back = codec.decode(spec, blob, x.dtype, x.shape)
        assert back.dtype == x.dtype and back.tobytes() == x.tobytes(), (spec, name)
        if spec in ("ans", "raw"):
            assert codec.predict_size(spec, x) == len(blob), (spec, name)


@pytest.mark.parametrize("spec", ["deinterleave2+brotli-11", "deinterleave2+ans", "deinterleave4+zstd-19",
                                  "deinterleave2+deinterleave2+zlib-9", "transpose+lzma-9",
                                  "transpose+deinterleave2+ans"])
def test_transforms_round_trip(spec):
    rng = np.random.default_rng(2)
    for x in [rng.standard_normal((33, 18)).astype(np.float16), rng.standard_normal((5, 4)).astype(np.float32),
              laplace_codes(rng, 36 * 20).reshape(36, 20), np.zeros((0, 4), np.float16)]:
        if "deinterleave4" in spec and x.dtype.itemsize < 4:
            continue
        blob = codec.encode(spec, x)
        back = codec.decode(spec, blob, x.dtype, x.shape)
        assert back.shape == x.shape and back.tobytes() == x.tobytes(), spec


def test_deinterleave_separates_fp16_bytes_and_helps():
    rng = np.random.default_rng(3)
    scales = (rng.random(4096) * 0.01 + 0.001).astype(np.float16)
    plain = len(codec.encode("brotli-11", scales))
    split = len(codec.encode("deinterleave2+brotli-11", scales))
    assert split < plain


@pytest.mark.parametrize("bad", ["", "gzip-9", "zstd", "zstd-23", "brotli-12", "ans-3", "raw-1",
                                 "zlib-9e", "deinterleave9+ans", "flip+ans", "deinterleave2+transpose+ans",
                                 "ans+zlib-9", None, 5])
def test_bad_specs_raise_config_error(bad):
    with pytest.raises(ConfigError):
        codec.parse_codec(bad)


def test_spec_parsing_normalises():
    s = codec.parse_codec(" Transpose+DEINTERLEAVE2+lzma-9e ")
    assert s.transpose and s.interleave == (2,) and s.family == "lzma" and s.extreme
    assert s.stream_codec == "deinterleave2+lzma-9e" and str(s) == "transpose+deinterleave2+lzma-9e"
    with pytest.raises(ConfigError):
        codec.encode("transpose+ans", np.zeros(5, np.int8))
    with pytest.raises(ConfigError):
        codec.encode("deinterleave4+ans", np.zeros(6, np.int8))


def test_ans_size_model_is_exact_on_many_streams():
    rng = np.random.default_rng(4)
    checked = 0
    for trial in range(150):
        n = int(rng.integers(1, 30000))
        kind = trial % 5
        if kind == 0:
            x = laplace_codes(rng, n, bits=int(rng.integers(2, 9)), k=float(rng.uniform(2, 20)))
        elif kind == 1:
            x = rng.integers(-128, 128, n).astype(np.int8)
        elif kind == 2:
            alphabet = rng.choice(256, int(rng.integers(1, 6)), replace=False).astype(np.uint8).view(np.int8)
            x = rng.choice(alphabet, n, p=rng.dirichlet(np.ones(len(alphabet)) * 0.3))
        elif kind == 3:
            x = np.minimum(rng.geometric(float(rng.uniform(0.05, 0.9)), n), 127).astype(np.int8)
        else:
            x = rng.standard_normal(n // 2 + 1).astype(np.float16).view(np.int8)
        blob = codec.encode("ans", x)
        assert codec.predict_size("ans", x) == len(blob)
        assert ans_decode(blob, x.size) == x.tobytes()
        checked += 1
    assert checked == 150


def test_ans_reaches_order0_bound_on_int6_codes():
    rng = np.random.default_rng(5)
    x = laplace_codes(rng, 512 * 512).reshape(512, 512)
    bound = codec.order0_bytes(x)
    size = len(codec.encode("ans", x))
    assert bound <= size <= bound * 1.005
    # and it beats the general compressors on the same codes
    assert size < len(codec.encode("brotli-11", x)) and size < len(codec.encode("lzma-9", x))


def test_ans_table_is_compact_and_precision_adapts():
    x = np.array([0, 1] * 500, np.int8)
    blob = rans.rans_encode(x)
    assert len(blob) <= 4 + 2 + 8 + 4 * 40  # 1000 symbols at 1 bit + a 2-entry table
    scale, q = rans.choose_table(rans.symbol_counts(x))
    assert q.sum() == 1 << scale and (q > 0).sum() == 2


def test_pure_python_ans_kernel_matches_numba():
    rng = np.random.default_rng(6)
    x = laplace_codes(rng, 3000, bits=4, k=6)
    blob = rans.rans_encode(x)
    scale, lo, span, width = blob[:4]
    end = 4 + ((span + 1) * width + 7) // 8
    _, q = rans.choose_table(rans.symbol_counts(x))
    out = np.empty(x.size, np.uint8)
    words = np.frombuffer(blob, "<u4", offset=end + 8).astype(np.int64)
    state = int.from_bytes(blob[end : end + 8], "little")
    lut = np.repeat(np.arange(256, dtype=np.uint8), q)
    p, final = _ans_loop(words, state, lut, q, np.cumsum(q) - q, scale, out)
    assert p == len(words) and final == rans.STATE_LOW and out.view(np.int8).tobytes() == x.tobytes()


def test_corrupt_ans_streams_raise_decode_error_only():
    rng = np.random.default_rng(7)
    x = laplace_codes(rng, 5000)
    blob = bytearray(rans.rans_encode(x))
    errors = 0
    for _ in range(400):
        b = bytearray(blob)
        i = int(rng.integers(len(b)))
        b[i] ^= 1 << int(rng.integers(8))
        try:
            out = ans_decode(bytes(b), x.size)
            assert len(out) == x.size
        except DecodeError:
            errors += 1
    for cut in range(0, len(blob), 7):
        with pytest.raises(DecodeError):
            ans_decode(bytes(blob[:cut]), x.size)
    with pytest.raises(DecodeError):
        ans_decode(bytes(blob), 1 << 40)  # a length the stream cannot hold: refused, not allocated
    assert errors > 300  # the final-state check catches nearly every flip


@pytest.mark.parametrize("spec", ["zlib-9", "zstd-22", "brotli-11", "lzma-9", "raw"])
def test_general_codecs_reject_wrong_lengths(spec):
    x = np.arange(3000, dtype=np.int16).view(np.int8)
    blob = codec.encode(spec, x)
    for n in (x.size - 1, x.size + 1):
        with pytest.raises(ArtifactError):
            codec.decompress_stream(spec, blob, n)
    with pytest.raises(ArtifactError):
        codec.decompress_stream(spec, blob[: len(blob) // 2], x.size)


@pytest.mark.parametrize("spec,tolerance", [("zlib-9", 0.02), ("zstd-19", 0.02), ("deinterleave2+brotli-5", 0.03)])
def test_estimators_track_real_sizes(spec, tolerance):
    rng = np.random.default_rng(8)
    x = laplace_codes(rng, 1 << 20, bits=6, k=11)
    actual = len(codec.encode(spec, x))
    predicted = codec.predict_size(spec, x)
    assert abs(predicted / actual - 1) < tolerance
    small = x[:5000]
    assert codec.predict_size(spec, small) == len(codec.encode(spec, small))  # exact when small


def real_streams():
    """Real byte streams of very different statistics: source text, a shared library."""
    import json as json_module

    lib = Path(np.__file__).parent
    paths = [Path(codec.__file__), Path(json_module.__file__), Path(np.__file__)]
    paths += sorted(lib.glob("_core/*.so"))[:2] + sorted(lib.glob("core/*.so"))[:2]
    return {p.name: np.frombuffer(p.read_bytes()[:200_000], np.int8) for p in paths}


def test_ans_exact_size_and_round_trip_on_real_streams():
    streams = real_streams()
    assert len(streams) >= 4
    for name, x in streams.items():
        blob = codec.encode("ans", x)
        assert codec.predict_size("ans", x) == len(blob), name
        assert ans_decode(blob, x.size) == x.tobytes(), name
        assert len(blob) <= codec.order0_bytes(x) * 1.005 + 300, name


def test_codec_table_reports_bound_and_prediction():
    from analysis.bench_codecs import codec_table, totals

    rng = np.random.default_rng(9)
    table = codec_table({"int6": laplace_codes(rng, 50_000)}, codecs=["zlib-9", "ans"])
    ans = table[table["codec"] == "ans"].iloc[0]
    assert ans["predicted"] == ans["bytes"] and 0 <= ans["over_bound_%"] < 0.5
    agg = totals(table)
    assert agg.loc["zlib-9", "ans_smaller_by_%"] > 5


def test_closed_form_size_from_counts_is_within_one_word():
    rng = np.random.default_rng(10)
    mismatches = 0
    for _ in range(60):
        x = laplace_codes(rng, int(rng.integers(1, 100_000)), bits=int(rng.integers(2, 9)), k=float(rng.uniform(3, 15)))
        exact = rans.rans_size(x)
        approx = rans.size_from_counts(rans.symbol_counts(x))
        assert abs(approx - exact) <= 4
        mismatches += approx != exact
    assert mismatches <= 3
