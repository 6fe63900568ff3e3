"""Encoder side of the order-0 rANS entropy coder (the decoder: `artifact.runtime.decoder`).

Stream layout (all little-endian), for n > 0 symbols; n itself comes from the manifest:

    scale  u8    precision: the frequencies sum to M = 2**scale
    lo     u8    first symbol index of the table (index = byte ^ 0x80, so int8 codes are ordered)
    span   u8    number of table entries - 1
    width  u8    bits per frequency
    table        span+1 frequencies, `width` bits each, MSB first (np.packbits), zero-padded
    state  u64   the coder's final state (the decoder's initial one)
    words  u32[] renormalisation words in decoding order

An empty stream (n = 0) is zero bytes. The state lives in [L, 2**63) with L = 2**31 and moves 32
bits at a time, so a symbol triggers at most one renormalisation; decoding must end in state L
with every word consumed, which the decoder checks.

The size is EXACT without writing anything: `rans_size` runs the same kernel in counting mode
(`out` of length 0), so the renormalisations counted are the ones the encoder would emit.

The kernels are compiled by numba on first use, so importing this module needs no numba (an
exported codec whose recipe codes no `ans` stream never imports it).
"""

import numpy as np

from artifact.runtime.format import ANS_LOW

STATE_LOW = ANS_LOW  # L: the state never falls below it between symbols
MAX_SCALE = 16
MIN_SCALE = 8
HEADER_BYTES = 4
STATE_BYTES = 8


def _jit(fn):
    """`fn` compiled by numba at its first call (cached on disk beside this file when it is one)."""
    compiled = []

    def call(*args):
        if not compiled:
            import numba  # the rANS coder's one dependency, imported only when a stream is coded

            try:
                compiled.append(numba.njit(cache=True, nogil=True)(fn))
            except RuntimeError:  # no source file to cache against (an exported codec): compile per process
                compiled.append(numba.njit(nogil=True)(fn))
        return compiled[0](*args)
    return call


@_jit
def _encode_kernel(idx, freq, cum, scale, out):
    """Encode `idx` (symbol indices) backwards; write words to `out` unless it is empty.

    Returns (number of words, final state). Words come out in reverse decoding order.
    Unsigned 64-bit throughout: numba turns mixed signed/unsigned arithmetic into floats.
    """
    x = np.uint64(STATE_LOW)
    count_only = out.shape[0] == 0
    k = 0
    shift, sc = np.uint64(63 - scale), np.uint64(scale)
    for i in range(idx.shape[0] - 1, -1, -1):
        s = idx[i]
        f = np.uint64(freq[s])
        if (x >> shift) >= f:  # x ≥ f·2**(63-scale): encoding would leave [L, 2**63)
            if not count_only:
                out[k] = np.uint32(x & np.uint64(0xFFFFFFFF))
            k += 1
            x >>= np.uint64(32)
        d = x // f
        x = (d << sc) + (x - d * f) + np.uint64(cum[s])
    return k, x


@_jit
def _count_kernel(idx):
    counts = np.zeros(256, np.int64)
    for v in idx:
        counts[v] += 1
    return counts


def as_bytes_array(data):
    """A flat uint8 view of an array or bytes-like object (no copy when contiguous)."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(data, np.uint8)
    return np.ascontiguousarray(data).view(np.uint8).ravel()


def _symbol_indices(data):
    return as_bytes_array(data) ^ np.uint8(0x80)


def symbol_counts(data):
    """Counts of the 256 symbol indices (index = byte ^ 0x80: int8 value + 128)."""
    return _count_kernel(_symbol_indices(data))


def quantize_counts(counts, scale):
    """Integer frequencies summing to 2**scale that minimise the coded size of `counts`.

    Every present symbol gets at least 1. The cost Σ c·log2(M/q) is separable and convex in q,
    so moving single units from the cheapest decrement to the best increment until no move
    helps reaches the optimum. Deterministic (ties break on the lowest index).
    """
    counts = np.asarray(counts, dtype=np.int64)
    total_m = 1 << scale
    present = counts > 0
    if present.sum() > total_m:
        raise ValueError(f"{int(present.sum())} symbols do not fit precision 2**{scale}")
    n = counts.sum()
    q = np.where(present, np.maximum(1, np.floor(counts * total_m / max(n, 1))), 0).astype(np.int64)
    c = counts.astype(np.float64)
    while True:
        gain = np.where(present, c * np.log2((q + 1) / np.maximum(q, 1)), -np.inf)
        loss = np.where(q > 1, c * np.log2(np.maximum(q, 2) / np.maximum(q - 1, 1)), np.inf)
        excess = q.sum() - total_m
        if excess < 0:
            q[np.argmax(gain)] += 1
        elif excess > 0:
            q[np.argmin(loss)] -= 1
        else:
            up, down = int(np.argmax(gain)), int(np.argmin(loss))
            if up == down or gain[up] <= loss[down] + 1e-9:
                return q
            q[up] += 1
            q[down] -= 1


def table_bytes(q):
    """Serialized frequency table (header + packed widths) for frequencies `q` (len 256)."""
    nz = np.flatnonzero(q)
    lo, hi = int(nz[0]), int(nz[-1])
    scale = int(q.sum()).bit_length() - 1
    span = q[lo:hi + 1]
    width = int(span.max()).bit_length()
    bits = ((span[:, None] >> np.arange(width - 1, -1, -1)) & 1).astype(np.uint8)
    return bytes([scale, lo, hi - lo, width]) + np.packbits(bits.ravel()).tobytes()


def _table_len(q):
    nz = np.flatnonzero(q)
    return HEADER_BYTES + ((int(nz[-1] - nz[0]) + 1) * int(q.max()).bit_length() + 7) // 8


def choose_table(counts):
    """The precision and frequencies minimising table bytes + ideal coded bytes of `counts`."""
    counts = np.asarray(counts, dtype=np.int64)
    present = counts > 0
    best = None
    for scale in range(max(MIN_SCALE, int(present.sum() - 1).bit_length()), MAX_SCALE + 1):
        q = quantize_counts(counts, scale)
        ideal_bits = float((counts[present] * (scale - np.log2(q[present]))).sum())
        cost = _table_len(q) * 8 + ideal_bits
        if best is None or cost < best[0] - 1e-9:
            best = (cost, scale, q)
    return best[1], best[2]


def _prepare(data):
    idx = _symbol_indices(data)
    scale, q = choose_table(_count_kernel(idx))
    cum = (np.cumsum(q) - q).astype(np.int64)
    return idx, scale, q, cum


def rans_encode(data):
    """Compress the bytes of `data` (read as int8 symbols) into the stream described above."""
    if as_bytes_array(data).size == 0:
        return b""
    idx, scale, q, cum = _prepare(data)
    out = np.empty(idx.shape[0] // 2 + 2, dtype=np.uint32)  # ≤ 16 bits per symbol
    k, state = _encode_kernel(idx, q, cum, scale, out)
    words = out[:k][::-1].astype("<u4")
    return table_bytes(q) + int(state).to_bytes(8, "little") + words.tobytes()


def rans_size(data):
    """Exact byte length of `rans_encode(data)`, by counting renormalisations (no output)."""
    if as_bytes_array(data).size == 0:
        return 0
    idx, scale, q, cum = _prepare(data)
    k, _ = _encode_kernel(idx, q, cum, scale, np.empty(0, dtype=np.uint32))
    return _table_len(q) + STATE_BYTES + 4 * k


def order0_bytes(data):
    """The order-0 entropy bound of the bytes of `data`, in bytes (a float)."""
    c = symbol_counts(data)
    n = c.sum()
    if n == 0:
        return 0.0
    p = c[c > 0] / n
    return float(-(c[c > 0] * np.log2(p)).sum() / 8)


def size_from_counts(counts) -> int:
    """Closed-form size from symbol counts alone: table + state + ceil(ideal bits / 32) words.

    Not exact (the real coder's renormalisations depend on the order of the symbols) but
    within a few words of `rans_size`; use it to sweep candidates from histograms."""
    counts = np.asarray(counts, dtype=np.int64)
    if counts.sum() == 0:
        return 0
    scale, q = choose_table(counts)
    present = counts > 0
    bits = float((counts[present] * (scale - np.log2(q[present]))).sum())
    return _table_len(q) + STATE_BYTES + 4 * max(0, int(np.ceil((bits - 32) / 32)))
