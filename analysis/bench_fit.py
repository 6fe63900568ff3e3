"""Record-scale fit benchmark (`golf bench-fit`).

Builds a record-scale checkpoint (default 11 layers x 512 wide, vocab 8192, GQA 8/4 heads,
mlp_mult 3: ~30 M parameters, ~26 M of them in 67 quantizable matrices) from a fixed seed with the
orthogonal init (output projections scaled, none zero) plus optionally a few SGD steps, and
calibration tokens drawn from a fixed-seed Zipf distribution (no vocab-8192 corpus ships with
the project; the figures time the machinery, not a trained model's loss). Then runs the full
fit as `golf fit` does — calibrate → measure (`default_grid` picks the large profile) → fit
(reference residual, solve, pack, repair) → write the submission → verify the blob in a fresh
process (decode with the shipped decoder, every tensor hash checked against the packed weights;
no val eval) — at one budget, then a second fit at another budget from the measurement cache,
and prints each stage's seconds, plus the solver alone on the real instance and on a random
100 tensors x 500 candidates one. Everything lands in --out (default runs/bench-fit).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from artifact.budget import count_submission, resolve_budget
from artifact.calibrate import batches_from_tokens, collect_hessians
from artifact.fit import counted_code_bytes, fit
from artifact.measure import cache_key, default_jobs, measure, state_hash
from artifact.pipeline import probe_loss_fn, probe_seqs
from artifact.runtime.decoder import tensor_hash
from artifact.runtime.errors import ArtifactError
from artifact.runtime.files import atomic_writer
from artifact.runtime.model import GPT, ModelConfig
from artifact.solve import bench_solve, solve
from artifact.submission import BLOB, write_submission

PROJECT_ROOT = Path(__file__).resolve().parent.parent
_DECODE_SCRIPT = ("import json,sys; from artifact.runtime.decoder import decode, tensor_hash; "
                  "print(json.dumps({n: tensor_hash('', n, '', w) for n, w in decode(sys.argv[1]).items()}))")


def build_checkpoint(layers: int, dim: int, vocab: int, seed: int, sgd_steps: int, tokens: np.ndarray):
    """A GPT of the record's shape from `seed` (orthogonal init), optionally `sgd_steps` steps of
    plain SGD on `tokens`. Returns (model, cfg)."""
    cfg = ModelConfig(vocab_size=vocab, num_layers=layers, model_dim=dim, num_heads=8, num_kv_heads=4,
                      mlp_mult=3, init="orthogonal", mup_proj_scale=True)
    torch.manual_seed(seed)
    model = GPT(cfg)
    if sgd_steps:
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        x = torch.from_numpy(tokens[: 8 * 257].astype(np.int64)).view(8, 257)
        for _ in range(sgd_steps):
            opt.zero_grad()
            model.loss(x[:, :-1], x[:, 1:]).backward()
            opt.step()
    model.eval()
    return model, cfg


def zipf_tokens(vocab: int, n: int, seed: int) -> np.ndarray:
    """`n` token ids with Zipf(1.1)-like frequencies over `vocab` (a fixed permutation of ranks)."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, vocab + 1) ** 1.1
    return rng.permutation(vocab)[rng.choice(vocab, size=n, p=p / p.sum())].astype(np.int64)


def _verify_fresh(blob_path: Path, packed) -> float:
    """Decode the blob in a fresh interpreter; every tensor's hash must match the packed weights."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _DECODE_SCRIPT, str(blob_path)], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise ArtifactError(f"bench-fit: fresh-process decode failed: {proc.stderr[-2000:]}")
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    want = {n: tensor_hash("", n, "", w.numpy()) for n, w in packed.dequantized.items()}
    if got != want:
        bad = sorted(n for n in want if got.get(n) != want[n])[:5]
        raise ArtifactError(f"bench-fit: decoded tensors differ from the packed ones: {bad}")
    return time.perf_counter() - t0


def _one_fit(env: dict, budget_bytes: int, out: Path, jobs: int, timings: dict, tag: str) -> dict:
    """measure (cached after the first) → fit → write → fresh-process verify, timed per stage."""
    t = time.perf_counter()
    m = measure(env["state"], env["hessians"], None, env["probe_loss"], env["calibration"], env["cache"],
                progress=env["progress"]("measure"), jobs=jobs)
    timings[f"{tag}.measure"] = time.perf_counter() - t
    budget = resolve_budget(budget_bytes)
    code = counted_code_bytes(env["cfg"].to_dict(), {"seq_len": env["seq_len"]}, budget)
    t = time.perf_counter()
    res = fit(env["state"], m, budget, code, env["hessians"], calibration=env["calibration"])
    timings[f"{tag}.fit"] = time.perf_counter() - t
    names, cands = m.solver_input()
    t = time.perf_counter()
    solve(cands, budget.bytes, fixed={"code": code, "container": res.rounds[0]["residual_assumed"]}, names=names)
    timings[f"{tag}.solve_alone"] = time.perf_counter() - t
    t = time.perf_counter()
    sub = out / f"submission-{tag}"
    shutil.rmtree(sub, ignore_errors=True)
    write_submission(sub, res.packed.entries, env["cfg"].to_dict(), {"seq_len": env["seq_len"]})
    total = count_submission(sub, budget).total
    if total > budget.bytes:
        raise ArtifactError(f"bench-fit: submission {total:,} bytes over the budget {budget.bytes:,}")
    timings[f"{tag}.write"] = time.perf_counter() - t
    timings[f"{tag}.verify"] = _verify_fresh(sub / BLOB, res.packed)
    n_cands = sum(len(c) for c in cands)
    env["log"](f"bench-fit: {tag}: " + ", ".join(f"{k.split('.', 1)[1]} {v:.1f}s" for k, v in timings.items()
                                                 if k.startswith(tag + ".")))
    return {"budget": budget.bytes, "real_total": total, "predicted_total": res.predicted_total,
            "predicted_dloss": res.predicted_loss, "rounds": len(res.rounds), "solver": res.solution.method,
            "optimal": res.solution.optimal, "tensors": len(names), "candidates": n_cands,
            "measure": m.stats, "grid_candidates_per_tensor": len(m.grid.choices())}


def run_bench(args, progress: Callable[[str], Callable] = lambda stage: None,
              log: Callable[[str], None] = lambda line: None) -> dict:
    """The benchmark of the module docstring; `args` holds the `golf bench-fit` options."""
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    out = Path(args.out)
    cache = out / "cache"
    if not args.keep_cache:
        shutil.rmtree(cache, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    t = time.perf_counter()
    tokens = zipf_tokens(args.vocab, args.cal_tokens + 64 * 1025, args.seed)
    model, cfg = build_checkpoint(args.layers, args.dim, args.vocab, args.seed, args.sgd_steps, tokens)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    timings["build"] = time.perf_counter() - t
    t = time.perf_counter()
    seq_len = 1024
    batches = batches_from_tokens(tokens, max(1, args.cal_tokens // seq_len), seq_len, 8, 0)
    h_path = cache / f"hessians-{cache_key(state_hash(state), args.cal_tokens, args.seed)}.pt"
    if h_path.is_file():  # as `golf fit` does: a second run reads its Hessians back
        hessians = torch.load(h_path, weights_only=True)
    else:
        hessians = dict(collect_hessians(model, batches, output_input_fn=model.hidden).matrices)
        with atomic_writer(h_path) as f:
            torch.save(hessians, f)
    timings["calibrate"] = time.perf_counter() - t
    n_params = sum(v.numel() for v in state.values())
    n_probe = probe_seqs(n_params, seq_len)
    probe = probe_loss_fn(model, batches_from_tokens(tokens[args.cal_tokens:], n_probe, seq_len + 1, n_probe, 0))
    calibration = {"bench": True, "seed": args.seed, "cal_tokens": args.cal_tokens, "probe": [n_probe, seq_len + 1],
                   "sgd_steps": args.sgd_steps}
    env = {"state": state, "hessians": hessians, "probe_loss": probe, "calibration": calibration, "cache": cache,
           "cfg": cfg, "seq_len": seq_len, "progress": progress, "log": log}
    jobs = args.jobs or default_jobs()
    first = _one_fit(env, args.budget, out, jobs, timings, "fit1")
    timings["first_fit_total"] = time.perf_counter() - t_all
    t = time.perf_counter()
    second = _one_fit(env, args.budget2, out, jobs, timings, "fit2")
    timings["second_fit_total"] = time.perf_counter() - t
    log("solver benchmark (random instance):")
    timings["solve_random_100x500_worst"] = bench_solve(100, 500, log=log)
    return {"model": {"layers": args.layers, "dim": args.dim, "vocab": args.vocab, "params": n_params,
                      "init": f"orthogonal, seed {args.seed}, {args.sgd_steps} SGD steps on Zipf tokens"},
            "calibration_tokens": sum(b.numel() for b in batches), "probe_tokens": n_probe * (seq_len + 1), "jobs": jobs,
            "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "load_before": args.load_before,
            "load_after": os.getloadavg(), "first": first, "second": second, "timings": timings}


def text(r: dict) -> str:
    t, m = r["timings"], r["model"]
    lines = [f"model        {m['layers']} layers x {m['dim']}, vocab {m['vocab']}, {m['params']:,} params ({m['init']})",
             f"machine      {r['cpu_count']} CPUs, {r['jobs']} measure jobs, load before "
             f"{' '.join(f'{x:.2f}' for x in r['load_before'])}, after {' '.join(f'{x:.2f}' for x in r['load_after'])}",
             f"calibration  {r['calibration_tokens']:,} tokens, probes on {r['probe_tokens']:,} tokens"]
    for tag in ("first", "second"):
        f = r[tag]
        lines.append(f"{tag} fit    budget {f['budget']:,}: real {f['real_total']:,} B (predicted {f['predicted_total']:,}), "
                     f"{f['tensors']} tensors, {f['candidates']:,} candidates ({f['measure']['measured']:,} measured, "
                     f"{f['measure']['cached']:,} cached), solver {f['solver']} optimal={f['optimal']}, {f['rounds']} round(s)")
    lines.append("stage seconds:")
    lines += [f"  {k:<28} {v:8.2f}" for k, v in t.items()]
    return "\n".join(lines)
