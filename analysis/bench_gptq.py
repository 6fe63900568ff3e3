"""GPTQ speed against the reference algorithm, side by side on the same matrices and threads.

The reference is the published formulation (IST-DASLab's `fasterquant`): float32 throughout,
damping 0.01 x mean(diag H), the upper Cholesky factor of H^-1 (Cholesky, cholesky_inverse,
Cholesky again), columns in blocks of 128 with the in-block error pushed by one rank-1 update per
column and later blocks updated lazily by one matrix product per block, act-order. It is written
here from that description (reference_gptq), on the same fixed scales and code range as ours,
so both round onto the same grid and only the algorithm's cost and its float path differ.

Matrices: every GPTQ-able matrix of a real checkpoint with its calibration Hessian, and the
record-scale synthetic GPT of `bench_pack` (11 x 512, MLP x4) with its synthetic Hessians. Each
matrix is quantized `repeats` times by each side, alternating, and the best time is kept (the
machine is shared: the minimum is the least disturbed run). Codes are compared element by element
and by Hessian-weighted distortion.

    golf bench-gptq [CKPT] [--data DIR] [--record-layers 2] [--bits 6] [--threads 1] [--repeats 3] [--json]
"""

from __future__ import annotations

import time

import pandas as pd
import torch
from torch import Tensor

from analysis.bench_pack import BenchShape, synthetic_hessians, synthetic_state_dict
from artifact.gptq import gptq_quantize
from artifact.pipeline import recipe_hessians
from artifact.quant import ClipRule, QuantSpec, quantize_tensor, weighted_error
from artifact.recipe import load_recipe
from artifact.runtime.checkpoint import load_checkpoint


def reference_gptq(w: Tensor, hessian: Tensor, scales: Tensor, lo: int, hi: int, block: int = 128,
                   damp: float = 0.01) -> Tensor:
    """The reference formulation (float32, act-order, lazy block updates) rounding onto per-row
    `scales` with codes in [lo, hi]; returns int8 codes in the original column order."""
    W = w.float().clone()
    H = hessian.float().clone()
    dead = H.diagonal() == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    perm = torch.argsort(H.diagonal(), descending=True)
    W, H = W[:, perm], H[perm][:, perm]
    H += damp * H.diagonal().mean() * torch.eye(H.shape[0])
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    s = scales.float()[:, None]
    Q = torch.zeros_like(W)
    for i1 in range(0, W.shape[1], block):
        i2 = min(i1 + block, W.shape[1])
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Q1, Err1 = torch.zeros_like(W1), torch.zeros_like(W1)
        for i in range(i2 - i1):
            col = W1[:, i]
            q = torch.clamp(torch.round(col[:, None] / s), lo, hi).flatten()
            Q1[:, i] = q
            err = (col - q * s[:, 0]) / Hinv1[i, i]
            W1[:, i:] -= err[:, None] @ Hinv1[i, i:][None, :]
            Err1[:, i] = err
        Q[:, i1:i2] = Q1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return Q[:, torch.argsort(perm)].to(torch.int8)


def compare_one(name: str, w: Tensor, h: Tensor, spec: QuantSpec, repeats: int) -> dict:
    """Both sides on one matrix, alternating runs: best-of-`repeats` seconds (each side's time
    includes fixing the scales by the spec's clip rule), identical codes, distortion ratio."""
    grid = spec.code_grid

    def reference():
        rtn = quantize_tensor(w, spec, h, name)
        return reference_gptq(w, h, rtn.scales, grid.lo, grid.hi)

    times = {"reference": float("inf"), "ours": float("inf")}
    for _ in range(repeats):
        for side, fn in (("reference", reference), ("ours", lambda: gptq_quantize(w, h, spec, name=name))):
            t = time.perf_counter()
            out = fn()
            times[side] = min(times[side], time.perf_counter() - t)
            if side == "ours":
                ours = out
            else:
                ref = out
    s = ours.scales.float()[:, None]
    d_ours = weighted_error(w, ours.codes.float() * s, h)
    d_ref = weighted_error(w, ref.float() * s, h)
    return {"matrix": name, "shape": "x".join(map(str, w.shape)), "reference_s": times["reference"],
            "ours_s": times["ours"], "ratio": times["ours"] / times["reference"],
            "codes_equal": float((ours.codes == ref).float().mean()),
            "distortion_ratio": d_ours / d_ref if d_ref > 0 else 1.0}


def checkpoint_matrices(checkpoint, data) -> tuple[dict, dict]:
    """A real checkpoint's GPTQ-able matrices and their calibration Hessians (the fit's own)."""
    model, cfg, _ = load_checkpoint(checkpoint)
    hessians, _ = recipe_hessians(model, cfg, load_recipe("record-1855"), data)
    state = model.state_dict()
    mats = {n: state[n].detach() for n, h in hessians.items() if h is not None and state[n].ndim == 2}
    return mats, hessians


def run_bench(checkpoint=None, data=None, record_layers: int = 2, bits: int = 6, threads: int = 1,
              repeats: int = 3, progress=None) -> pd.DataFrame:
    """One row per matrix plus a TOTAL row per matrix set (checkpoint, record scale)."""
    torch.set_num_threads(max(1, threads))
    spec = QuantSpec(bits=bits, clip=ClipRule.from_config("sdclip:12.85"))
    sets = []
    if checkpoint is not None:
        sets.append(("checkpoint", *checkpoint_matrices(checkpoint, data)))
    if record_layers > 0:
        shape = BenchShape(layers=record_layers)
        state, hessians = synthetic_state_dict(shape), synthetic_hessians(shape)
        sets.append(("record", {n: state[n] for n in hessians}, hessians))
    rows = []
    for set_name, mats, hess in sets:
        first = len(rows)
        for i, (name, w) in enumerate(mats.items()):
            rows.append({"set": set_name, **compare_one(name, w, hess[name], spec, repeats)})
            if progress is not None:
                progress(i + 1, len(mats), f"{set_name}: {name}")
        part = pd.DataFrame(rows[first:])
        n = part[["reference_s", "ours_s"]].sum()
        rows.append({"set": set_name, "matrix": "TOTAL", "shape": f"{len(part)} matrices",
                     "reference_s": n["reference_s"], "ours_s": n["ours_s"], "ratio": n["ours_s"] / n["reference_s"],
                     "codes_equal": float(part["codes_equal"].mean()),
                     "distortion_ratio": float(part["distortion_ratio"].mean())})
    return pd.DataFrame(rows)
