"""The fuzz worker (`artifact.fuzz`): decodes length-prefixed blobs from stdin with the shipped
decoder, one JSON result line each on stdout; its address space is capped after start-up. Kept
apart from the fuzzer so a worker imports the decoder and nothing heavier.
"""

from __future__ import annotations

import hashlib
import json
import resource
import sys
import time

import numpy as np

from artifact.container import TensorEntry, build_blob
from artifact.runtime.decoder import DecodeError, decode
from artifact.runtime.format import NAME, TENSORS

WORKER_MEMORY = 3 << 30  # address space a worker may map beyond what it holds after start-up


def output_digest(manifest: dict, weights: dict) -> str:
    """SHA-256 over every decoded tensor's name, original dtype, shape and values (name order)."""
    dtypes = {t[NAME]: t["d"] for t in manifest[TENSORS]}
    h = hashlib.sha256()
    for name in sorted(weights):
        w = np.ascontiguousarray(weights[name], "<f4")
        h.update(f"{name}\0{dtypes[name]}\0{w.shape}\0".encode())
        h.update(w.data)
    return h.hexdigest()


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak resident set size (VmHWM) to the current one (Linux)
        return True
    except OSError:
        return False


def decode_case(blob: bytes) -> dict:
    """Decode one blob here: {"outcome": decoded | clean error | crash | memory, "digest" or
    "detail", "cpu_s", "peak_bytes" (None where the OS cannot say)}. A DecodeError that carries a
    cause came from the decoder's last-resort guard, not from one of its checks: a crash."""
    measured = _reset_peak()
    rss = _status_kib("VmRSS:") if measured else 0
    t0 = time.process_time()
    try:
        m, out = decode(blob, with_manifest=True)
        result = {"outcome": "decoded", "digest": output_digest(m, out)}
        del out
    except DecodeError as e:
        cause = e.__cause__
        outcome = ("memory" if isinstance(cause, MemoryError) else "crash") if cause is not None else "clean error"
        result = {"outcome": outcome, "detail": str(e)[:200]}
    except MemoryError:
        result = {"outcome": "memory", "detail": "MemoryError"}
    except Exception as e:  # the decoder must never let anything but DecodeError out
        result = {"outcome": "crash", "detail": f"{type(e).__name__}: {e}"[:200]}
    result["cpu_s"] = time.process_time() - t0
    result["peak_bytes"] = (_status_kib("VmHWM:") - rss) * 1024 if measured else None
    return result


def main() -> None:
    """The worker loop: 8-byte little-endian length, blob; one result line per blob."""
    stdin, stdout = sys.stdin.buffer, sys.stdout
    decode(build_blob([TensorEntry("w", (4, 4), "float32", np.ones((4, 4), np.int8), np.ones(4, np.float16),
                                   codec="ans", bits=2)]))  # compiles the rANS kernel before any case
    cap = _status_kib("VmSize:") * 1024 + WORKER_MEMORY
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    stdout.write("ready\n")
    stdout.flush()
    while True:
        head = stdin.read(8)
        if len(head) < 8:
            return
        blob = stdin.read(int.from_bytes(head, "little"))
        stdout.write(json.dumps(decode_case(blob)) + "\n")
        stdout.flush()
