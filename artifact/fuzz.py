"""Fuzzing the shipped decoder: mutate real artifacts, decode each in a limited worker, count outcomes.

`corpus(checkpoint)` packs slices of a real checkpoint's tensors into one small blob per stream
codec (raw, ans, zlib, zstd, brotli, lzma), each holding every scheme the format has: per-row,
grouped (transposed) and per-tensor codes, ternary, an LQER correction with a row order, fp32 /
fp16 / bf16 passthrough, a shared stream, an all-zero block and an empty tensor.
`run_fuzz(corpus, cases, seed)` derives case i from (seed, i) alone — a mutation kind in turn, a
corpus blob, then the mutation — and decodes it in one of `jobs` worker processes, each with an
address-space cap; a case past its wall-clock limit kills its worker. Outcomes:

  clean error        the decoder refused it with a deliberate DecodeError
  identical output   it decoded to exactly the original tensors (names, dtypes, values)
  silent difference  it decoded, to something else
  crash              any other exception (including one the decoder's last-resort guard caught),
                     or the worker died
  hang               more than CPU_LIMIT CPU seconds, or killed at the wall-clock limit
  memory             a MemoryError (a worker's address space is capped), or a peak above what
                     the blob's size allows: 16 bytes per unit of its work bound
                     (format.WORK_FLOOR + WORK_PER_BYTE x its bytes: a raw byte plus 4x for a
                     float32 element and its temporaries), + 16 MiB

The mutations are `artifact.fuzz_cases`'. `small_blob_bombs` + `measure_blobs`: hand-made
blobs under 4 KB that ask for as much work as the bounds allow, each in a fresh worker.
"""

from __future__ import annotations

import json
import math
import os
import selectors
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from artifact.container import (
    QuantBlock,
    TensorEntry,
    bf16_bits,
    build_blob,
    with_digest,
)
from artifact.fuzz_cases import KINDS, contexts_for, join, make_case, reconcile, split
from artifact.fuzz_worker import output_digest
from artifact.lqer import lqer
from artifact.quant import ClipRule, QuantSpec, quantize_tensor
from artifact.runtime.checkpoint import load_checkpoint
from artifact.runtime.decoder import decode
from artifact.runtime.errors import GolfError
from artifact.runtime.format import (
    SHAPE,
    TENSORS,
    WORK_FLOOR,
    WORK_PER_BYTE,
)
from artifact.runtime.progress import Progress, Reporter

CODECS = ("raw", "ans", "zlib-9", "zstd-19", "brotli-11", "lzma-9e")
OUTCOMES = ("clean error", "identical output", "silent difference", "crash", "hang", "memory")
FAILURES = OUTCOMES[2:]
PROJECT_ROOT = Path(__file__).resolve().parent.parent
CPU_LIMIT = 1.0  # seconds of CPU one decode may take
WALL_LIMIT = 20.0  # seconds before a case's worker is killed (a loaded machine is slow, not hung)


# ----------------------------------------------------------------------------- corpus
def _rows(w: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    w = w.reshape(w.shape[0], -1) if w.dim() > 1 else w.reshape(1, -1)
    return w[:rows, :cols].contiguous().float()


def _quantized(name, w, spec, codec, scales_codec, **extra) -> TensorEntry:
    q = quantize_tensor(w, spec, name=name)
    return TensorEntry(name, tuple(w.shape), "float32", q.codes.numpy(), q.scales.numpy(), q.group_size, codec,
                       bits=q.bits, scales_codec=scales_codec, **extra)


def corpus_entries(state: dict[str, torch.Tensor], codec: str) -> list[TensorEntry]:
    """Real tensors (slices of `state`'s matrices and vectors) in every scheme, stored with `codec`."""
    mats = [v for v in state.values() if v.dim() == 2 and min(v.shape) >= 32]
    vecs = [v.flatten() for v in state.values() if v.dim() == 1 and v.numel() >= 16]
    side = f"deinterleave2+{codec}"
    a, b, c = _rows(mats[0], 48, 64), _rows(mats[1 % len(mats)], 32, 64), _rows(mats[2 % len(mats)], 40, 64)
    w_hat = torch.from_numpy(np.asarray(quantize_tensor(c, QuantSpec("per_row", 3)).dequantize()))
    low = lqer(c, w_hat, 2, name="lqer")
    factors = tuple(QuantBlock(f.codes.numpy(), f.scales.numpy(), f.group_size, codec) for f in (low.a, low.b))
    tern = quantize_tensor(b[:16], QuantSpec("ternary"), name="ternary")
    v = vecs[0][:64] if vecs else a[0]
    bf = bf16_bits(a[1].to(torch.bfloat16).float().numpy())
    return [
        _quantized("row.int6", a, QuantSpec("per_row", 6, ClipRule.from_config("sdclip:12.85")), codec, side),
        _quantized("group.int4", b, QuantSpec("per_row", 4, group_size=16), f"transpose+{codec}", side),
        _quantized("tensor.int8", a[:4].flatten(), QuantSpec("per_tensor", 8), codec, side),
        TensorEntry("ternary", (16, 64), "float32", tern.codes.numpy(), tern.scales.numpy(), tern.group_size, codec,
                    bits=2, scales_codec=side),
        _quantized("lqer.int3", c, QuantSpec("per_row", 3), codec, side, lqer=factors,
                   row_order=np.arange(40)[::-1].copy()),
        _quantized("shared.a", a[:8], QuantSpec("per_row", 5), codec, side, stream="g"),
        _quantized("shared.b", b[:8], QuantSpec("per_row", 5), codec, side, stream="g"),
        TensorEntry("zeros", (8, 32), "float32", np.zeros((8, 32), np.int8), np.ones(8, np.float16), None, codec,
                    bits=2, scales_codec=side),
        TensorEntry("empty", (0, 8), "float32", np.zeros((0, 8), np.int8), np.zeros(0, np.float16), None, codec,
                    bits=8, scales_codec=side),
        TensorEntry("norm.f32", tuple(v.shape), "float32", passthrough=v.numpy(), codec=f"deinterleave4+{codec}"),
        TensorEntry("gain.f16", (2, 32), "float16", passthrough=a[2:4, :32].half().numpy(), codec=side),
        TensorEntry("mix.bf16", (64,), "bfloat16", passthrough=bf, codec=codec, stream="bf16"),
    ]


def corpus(checkpoint) -> dict[str, bytes]:
    """{codec: blob}: one small real artifact per stream codec (see the module docstring)."""
    model, _, _ = load_checkpoint(checkpoint)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    return {codec: build_blob(corpus_entries(state, codec)) for codec in CODECS}


class _Worker:
    """One worker process; cases go in as length-prefixed blobs, results come back as lines."""

    def __init__(self):
        env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-c", "from artifact.fuzz_worker import main; main()"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     cwd=PROJECT_ROOT, env=env)
        self.buffer, self.case, self.deadline = b"", None, 0.0
        os.set_blocking(self.proc.stdout.fileno(), False)
        start = time.monotonic()
        while (line := self.read_line()) == b"" and time.monotonic() - start < 120:
            time.sleep(0.05)
        if line != b"ready":
            self.kill()
            raise GolfError(f"fuzz worker did not start ({line!r})")

    def send(self, case: tuple, wall_limit: float) -> None:
        self.case, self.deadline = case, time.monotonic() + wall_limit
        blob = case[-1]
        try:
            self.proc.stdin.write(len(blob).to_bytes(8, "little") + blob)
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # read_line reports the death

    def read_line(self) -> bytes | None:
        """The next complete line, b"" when none yet, None when the worker has died."""
        while b"\n" not in self.buffer:
            try:
                chunk = os.read(self.proc.stdout.fileno(), 1 << 16)
            except BlockingIOError:
                return b""
            if not chunk:
                return None
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line

    def result(self) -> dict | None:
        """The current case's result when there is one (hang past the deadline), else None."""
        line = self.read_line()
        if line is None:
            code = self.proc.wait()
            return {"outcome": "memory" if code == -9 else "crash", "detail": f"worker died (exit {code})"}
        if line:
            return json.loads(line)
        if time.monotonic() > self.deadline:
            self.kill()
            return {"outcome": "hang", "detail": "no result before the wall-clock limit"}
        return None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


# ----------------------------------------------------------------------------- the run
SMALL_BLOB = 4096  # "small" blobs, for the worst-case figures


def memory_allowance(blob_len: int) -> int:
    """The most a decode of a blob this long may add to its process's peak (module docstring)."""
    return 16 * (WORK_FLOOR + WORK_PER_BYTE * blob_len) + (16 << 20)


@dataclass
class FuzzReport:
    """Counts per (mutation kind, outcome), the failures, and the worst decodes seen (over all
    cases and over blobs under SMALL_BLOB bytes): CPU seconds and peak memory added."""

    cases: int
    seed: int
    counts: dict = field(default_factory=dict)  # kind -> outcome -> count
    failures: list = field(default_factory=list)  # {index, kind, corpus, outcome, blob_bytes, detail}
    worst: dict = field(default_factory=dict)  # "cpu_s" / "peak_bytes" / "small cpu_s" / ... -> {value, index, ...}
    seconds: float = 0.0
    corpus_bytes: dict = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return sum(c[o] for c in self.counts.values() for o in FAILURES)

    def to_dict(self) -> dict:
        return {"cases": self.cases, "seed": self.seed, "counts": self.counts, "failed": self.failed,
                "failures": self.failures[:50], "worst": self.worst, "seconds": self.seconds,
                "corpus_bytes": self.corpus_bytes}

    def note(self, index: int, kind: str, blob_len: int, result: dict) -> None:
        for key in ("cpu_s", "peak_bytes"):
            value = result.get(key)
            for slot in [key] + ([f"small {key}"] if blob_len < SMALL_BLOB else []):
                if value is not None and value > self.worst.get(slot, {}).get("value", -1):
                    self.worst[slot] = {"value": value, "index": index, "kind": kind, "blob_bytes": blob_len}


def classify(result: dict, reference: str, blob_len: int) -> str:
    """The outcome class of a worker's result against the original's output digest."""
    outcome = result["outcome"]
    if outcome == "decoded":
        outcome = "identical output" if result["digest"] == reference else "silent difference"
    if outcome in FAILURES:
        return outcome
    if result.get("cpu_s", 0.0) > CPU_LIMIT:
        return "hang"
    peak = result.get("peak_bytes")
    return "memory" if peak is not None and peak > memory_allowance(blob_len) else outcome


def run_fuzz(corpus_blobs: dict[str, bytes], cases: int, seed: int = 0, jobs: int = 2,
             progress: Progress | None = None, wall_limit: float = WALL_LIMIT) -> FuzzReport:
    """Decode `cases` mutated blobs in `jobs` limited workers; count outcomes per mutation kind."""
    if cases < 1 or jobs < 1:
        raise GolfError(f"fuzz: cases ({cases}) and jobs ({jobs}) must be >= 1")
    t0 = time.perf_counter()
    contexts = contexts_for(corpus_blobs)
    references = {label: output_digest(*decode(b, with_manifest=True)) for label, b in corpus_blobs.items()}
    report = FuzzReport(cases=cases, seed=seed, corpus_bytes={k: len(v) for k, v in corpus_blobs.items()})
    report.counts = {k: {o: 0 for o in OUTCOMES} for k in KINDS}
    tick = Reporter(progress, cases, "fuzz")
    workers: list[_Worker] = []
    sel = selectors.DefaultSelector()
    next_case = done = 0
    try:
        workers = [_Worker() for _ in range(min(jobs, cases))]
        while done < cases:
            for w in workers:
                if w.case is None and next_case < cases:
                    w.send((next_case, *make_case(corpus_blobs, contexts, seed, next_case)), wall_limit)
                    next_case += 1
            busy = [w for w in workers if w.case is not None]
            for w in busy:
                sel.register(w.proc.stdout, selectors.EVENT_READ)
            sel.select(max(0.0, min(w.deadline for w in busy) - time.monotonic()))
            for w in busy:
                sel.unregister(w.proc.stdout)
            for slot, w in enumerate(workers):
                result = w.result() if w.case is not None else None
                if result is None:
                    continue
                index, kind, label, blob = w.case
                w.case = None
                if w.proc.poll() is not None:
                    workers[slot] = _Worker()
                outcome = classify(result, references[label], len(blob))
                report.counts[kind][outcome] += 1
                report.note(index, kind, len(blob), result)
                if outcome in FAILURES:
                    report.failures.append({"index": index, "kind": kind, "corpus": label, "outcome": outcome,
                                            "blob_bytes": len(blob), "detail": result.get("detail", "")})
                done += 1
                tick(done, lambda: f"{report.failed} failures")
    finally:
        sel.close()
        for w in workers:
            w.kill()
    report.seconds = time.perf_counter() - t0
    return report


def replay(corpus_blobs: dict[str, bytes], seed: int, index: int) -> tuple[str, str, bytes]:
    """Case `index` of a run with `seed` (kind, corpus label, blob), to decode it by hand."""
    return make_case(corpus_blobs, contexts_for(corpus_blobs), seed, index)


# ----------------------------------------------------------------------------- worst small blobs
def _largest(entry_for, budget_bytes: int = SMALL_BLOB) -> bytes:
    """The blob of `entry_for(n)` for the largest n (halving down) the writer accepts under
    `budget_bytes`: a blob that asks for as much decoding work as its size allows."""
    n = WORK_FLOOR
    while n > 1:
        try:
            blob = build_blob(entry_for(n))
            if len(blob) <= budget_bytes:
                return blob
        except GolfError:
            pass
        n = n * 3 // 4
    raise GolfError("fuzz: no blob fits")


def _forged_hash(blob: bytes) -> bytes:
    m, streams = split(blob)
    for t in m[TENSORS]:
        t["h"] = "0" * 16
    return join(m, streams)


def small_blob_bombs() -> dict[str, bytes]:
    """Hand-made blobs under SMALL_BLOB bytes that ask for the most work they can (and the
    shapes of the issue's reports: a tiny rANS stream claiming ~2**30 symbols, a 4 GiB ask)."""
    def zeros(codec):
        return lambda n: [TensorEntry("z", (n,), "float32", np.zeros(n, np.int8), np.array(1.0, np.float32),
                                      codec=codec, bits=2)]

    def lqer_rank(n):
        side = max(1, int(math.isqrt(n // 8)))
        r = max(1, n // (side * side) - 2)
        f = (QuantBlock(np.zeros((side, r), np.int8), np.array(1.0, np.float16), None, "ans"),
             QuantBlock(np.zeros((r, side), np.int8), np.array(1.0, np.float16), None, "ans"))
        return [TensorEntry("l", (side, side), "float32", np.zeros((side, side), np.int8), np.array(1.0, np.float32),
                            codec="ans", bits=2, lqer=f)]

    def claim(blob, n):
        m, streams = split(blob)
        m[TENSORS][0][SHAPE] = [n]
        return join(reconcile(m), streams)

    bombs = {
        "zeros at the work bound, ans (valid)": _largest(zeros("ans")),
        "zeros at the work bound, zlib, wrong hash": _forged_hash(_largest(zeros("zlib-9"))),
        "zeros at the work bound, brotli, wrong hash": _forged_hash(_largest(zeros("brotli-11"))),
        "LQER rank at the work bound, wrong hash": _forged_hash(_largest(lqer_rank)),
    }
    small = build_blob(zeros("ans")(16))
    bombs["rANS stream claiming 2**27 symbols"] = claim(small, 1 << 27)
    bombs["tensor claiming 2**32 elements"] = claim(small, 1 << 32)
    for name, lists in (("manifest at its bound", 20_000), ("manifest inflating 1,000x", 200_000)):
        noise = np.random.default_rng(0).bytes(1000).hex()  # incompressible: it buys inflation room
        raw = (f'{{"x":"{noise}","S":[],"T":[' + ",".join(["[]"] * lists) + "]}").encode()
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        packed = c.compress(raw) + c.flush()
        bombs[name] = with_digest(small[:5] + len(packed).to_bytes(4, "little") + len(raw).to_bytes(4, "little")
                                  + packed)
    return bombs


def measure_blobs(blobs: dict[str, bytes], wall_limit: float = WALL_LIMIT) -> list[dict]:
    """Decode each blob in a fresh limited worker: outcome, CPU seconds, peak bytes added."""
    rows = []
    for name, blob in blobs.items():
        worker = _Worker()
        try:
            worker.send((0, name, name, blob), wall_limit)
            result = None
            while result is None:
                time.sleep(0.01)
                result = worker.result()
        finally:
            worker.kill()
        rows.append({"blob": name, "bytes": len(blob), "outcome": result["outcome"],
                     "detail": result.get("detail", ""), "cpu_s": result.get("cpu_s"),
                     "peak_bytes": result.get("peak_bytes")})
    return rows
