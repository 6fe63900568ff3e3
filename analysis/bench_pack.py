"""Packing and decoding benchmark at record scale: GPTQ of every matrix of an 11-layer, 512-wide,
vocab-8192, MLP x4 GPT (~36 M parameters), the int6 artifact's bytes, and the decode of that
artifact by the shipped decoder alone in a fresh Python process (time and peak memory).

The model is synthetic but shaped exactly like the trainer's GPT (names and shapes written out
here, so the benchmark does not depend on the trainer's model code): Gaussian weights with std 1/sqrt(fan_in), per-row
gain spread and a few heavy-tailed outliers; per input space an SPD Hessian X^T X from
correlated activations with a decaying spectrum and a few loud channels (the MLP's output
projection sees relu² activations). Q/K/V share one Hessian, as calibration gives them. All of
it comes from one fixed seed, so two runs pack the same bytes.

    golf bench-pack [--layers 11 --dim 512 --vocab 8192 --mlp-mult 4] [--recipe seed-001]
                    [--threads 2] [--json]

Targets: GPTQ of all matrices <= 120 s and decode <= 5 s on the 2-core CPU.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from artifact.container import write_artifact
from artifact.pack import pack_state_dict
from artifact.recipe import load_recipe
from artifact.runtime.errors import ArtifactError, ConfigError
from artifact.runtime.progress import Progress
from artifact.submission import write_runtime_package

TARGET_GPTQ_S = 120.0
TARGET_DECODE_S = 5.0


@dataclass(frozen=True)
class BenchShape:
    """The GPT's shape (defaults: the record scale, 11 layers x 512, vocab 8192)."""

    layers: int = 11
    dim: int = 512
    vocab: int = 8192
    mlp_mult: int = 4
    heads: int = 8
    kv_heads: int = 4
    seed: int = 1234

    def check(self) -> None:
        if min(self.layers, self.dim, self.vocab, self.mlp_mult, self.heads, self.kv_heads) < 1:
            raise ConfigError("bench_pack: layers, dim, vocab, mlp-mult, heads and kv-heads must be >= 1")
        if self.dim % self.heads or self.heads % self.kv_heads:
            raise ConfigError(f"bench_pack: dim {self.dim} must divide by heads {self.heads}, "
                              f"heads by kv-heads {self.kv_heads}")


# ------------------------------------------------------------------------------ the model

def gpt_shapes(s: BenchShape) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the trainer's GPT state dict (tied embedding, U-Net skip weights)."""
    d, kv, m = s.dim, s.kv_heads * (s.dim // s.heads), s.mlp_mult * s.dim
    shapes: dict[str, tuple[int, ...]] = {
        "tok_emb.weight": (s.vocab, d),
        "skip_weights": (min(s.layers // 2, s.layers - s.layers // 2), d),
    }
    for i in range(s.layers):
        p = f"blocks.{i}."
        shapes.update({
            p + "attn_scale": (d,), p + "mlp_scale": (d,), p + "resid_mix": (2, d),
            p + "attn.q_gain": (s.heads,), p + "attn.c_q.weight": (d, d),
            p + "attn.c_k.weight": (kv, d), p + "attn.c_v.weight": (kv, d),
            p + "attn.proj.weight": (d, d), p + "mlp.fc.weight": (m, d), p + "mlp.proj.weight": (d, m),
        })
    return shapes


def _matrix(rows: int, cols: int, std: float, g: torch.Generator) -> Tensor:
    """Gaussian weights with a per-row gain spread and ~0.05% heavy-tailed outliers (x4..x12)."""
    w = torch.randn(rows, cols, generator=g) * std
    w *= torch.exp(0.25 * torch.randn(rows, 1, generator=g))  # rows differ in scale, as trained ones do
    n_out = max(1, rows * cols // 2000)
    idx = torch.randint(0, rows * cols, (n_out,), generator=g)
    w.view(-1)[idx] *= 4.0 + 8.0 * torch.rand(n_out, generator=g)
    return w


def synthetic_state_dict(s: BenchShape) -> dict[str, Tensor]:
    """A float32 state dict with `gpt_shapes(s)`, deterministic in `s.seed`."""
    g = torch.Generator().manual_seed(s.seed)
    out: dict[str, Tensor] = {}
    for name, shape in gpt_shapes(s).items():
        if len(shape) == 2 and shape[0] * shape[1] > 65_536:
            std = 0.02 if name == "tok_emb.weight" else shape[1] ** -0.5
            out[name] = _matrix(shape[0], shape[1], std, g)
        elif name.endswith("resid_mix"):
            out[name] = torch.stack([1.0 + 0.1 * torch.randn(shape[1], generator=g), 0.1 * torch.randn(shape[1], generator=g)])
        else:  # scales and gains near one
            out[name] = 1.0 + 0.1 * torch.randn(shape, generator=g)
    return out


# ------------------------------------------------------------------------------ the Hessians

def _mixing(d: int, g: torch.Generator) -> Tensor:
    """A fixed random map that correlates the channels of a d-wide activation."""
    return torch.randn(d, d, generator=g) / d ** 0.5


def synthetic_hessian(d: int, mixing: Tensor, g: torch.Generator, relu2: bool = False) -> Tensor:
    """X^T X / n (float32, d x d, SPD) for n = 2d samples of correlated activations: latent
    factors with a power-law spectrum, mixed, with a few loud channels; `relu2` squares the
    positive part (the MLP's hidden activation), which adds a strong mean direction."""
    n = 2 * d
    spectrum = torch.arange(1, d + 1, dtype=torch.float32) ** -0.8
    z = torch.randn(n, d, generator=g) * spectrum.sqrt()
    x = z @ mixing
    loud = torch.randperm(d, generator=g)[: max(1, d // 128)]
    x[:, loud] *= 6.0
    if relu2:
        x = torch.relu(x * d ** 0.5).square()
    x = x + 0.05 * torch.randn(n, d, generator=g)  # isotropic floor: full rank
    return (x.T @ x) / n


def synthetic_hessians(s: BenchShape) -> dict[str, Tensor]:
    """One Hessian per input space of every matrix (Q/K/V share the attention input's)."""
    g = torch.Generator().manual_seed(s.seed + 1)
    d, m = s.dim, s.mlp_mult * s.dim
    mix_d, mix_m = _mixing(d, g), _mixing(m, g)
    out: dict[str, Tensor] = {}
    for i in range(s.layers):
        p = f"blocks.{i}."
        h_attn = synthetic_hessian(d, mix_d, g)
        for part in ("c_q", "c_k", "c_v"):
            out[p + f"attn.{part}.weight"] = h_attn
        out[p + "attn.proj.weight"] = synthetic_hessian(d, mix_d, g)
        out[p + "mlp.fc.weight"] = synthetic_hessian(d, mix_d, g)
        out[p + "mlp.proj.weight"] = synthetic_hessian(m, mix_m, g, relu2=True)
    out["tok_emb.weight"] = synthetic_hessian(d, mix_d, g)  # the tied head's input: final norm
    return out


# ------------------------------------------------------------------------------ decode child

_CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
t0 = time.perf_counter()
from golf_runtime import decoder
t1 = time.perf_counter()
out = decoder.decode(sys.argv[2])
t2 = time.perf_counter()
assert set(sys.modules) & {"artifact", "torch"} == set(), "decoder pulled in project or torch modules"
hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")]
print(json.dumps({"import_s": t1 - t0, "decode_s": t2 - t1, "tensors": len(out),
                  "params": sum(int(w.size) for w in out.values()), "vmhwm_kb": hwm[0] if hwm else None}))
"""


def decode_in_fresh_process(artifact_path: str) -> dict:
    """Decode `artifact_path` with the shipped decoder alone (its runtime modules copied into an
    empty folder, `python -I`);
    return the child's timings, its wall time and its peak RSS.

    Two peak figures: the child's own VmHWM (its address space after exec: the true peak), and
    getrusage(RUSAGE_CHILDREN).ru_maxrss, which Linux inflates to at least the parent's resident
    size at spawn (the high-water mark survives fork/vfork + exec), so it is an upper bound."""
    with tempfile.TemporaryDirectory(prefix="golf-decoder-") as folder:
        write_runtime_package(folder, ("decoder",))
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-I", "-c", _CHILD, folder, artifact_path],
                              cwd=folder, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise ArtifactError(f"{artifact_path}: standalone decoder failed: {proc.stderr.strip()[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    result["rusage_children_maxrss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    hwm = result.get("vmhwm_kb")
    result["peak_mb"] = hwm / 1024 if hwm else result["rusage_children_maxrss_mb"]
    return result


# ------------------------------------------------------------------------------ the run

def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_bench(s: BenchShape, recipe_name: str = "seed-001", threads: int = 2, progress: Progress | None = None) -> dict:
    """Build, pack (timed), write and decode (timed, fresh process); return the figures."""
    s.check()
    torch.set_num_threads(max(1, min(2, threads)))
    recipe = load_recipe(recipe_name)
    stages = []

    def stage(label: str, seconds: float, nbytes: int | None = None, peak: float | None = None) -> None:
        stages.append({"stage": label, "seconds": round(seconds, 3), "bytes": nbytes,
                       "peak_mb": round(peak if peak is not None else _peak_mb(), 1)})

    t0 = time.perf_counter()
    sd = synthetic_state_dict(s)
    stage("build state dict", time.perf_counter() - t0)
    t0 = time.perf_counter()
    hessians = synthetic_hessians(s)
    stage("build Hessians", time.perf_counter() - t0)

    n_matrices = sum(1 for n, t in sd.items() if t.ndim == 2 and n.endswith(".weight"))
    marks: list[float] = []
    names: list[str] = []

    def on_tensor(done: int, total: int, name: str) -> None:
        marks.append(time.perf_counter())
        names.append(name)
        if progress is not None:
            progress(done, total, name)

    t0 = time.perf_counter()
    packed = pack_state_dict(sd, recipe, hessians, progress=on_tensor, predict_sizes=False)
    t1 = time.perf_counter()
    quantize_s = marks[-1] - t0  # clip search + GPTQ of every tensor
    stage("quantize: clip + GPTQ (all tensors)", quantize_s)
    stage("pack: entries + dequantize + errors", t1 - marks[-1])
    gptq_ok = sum(1 for r in packed.rows if r["gptq"])
    by_kind: dict[str, float] = {}
    for name, start, end in zip(names, [t0] + marks[:-1], marks):
        kind = name.split(".", 2)[-1] if name.startswith("blocks.") else name
        by_kind[kind] = round(by_kind.get(kind, 0.0) + end - start, 3)

    with tempfile.TemporaryDirectory(prefix="golf-bench-") as folder:
        path = os.path.join(folder, "model.golf")
        t0 = time.perf_counter()
        nbytes = write_artifact(packed.entries, path)
        stage("write artifact (compress)", time.perf_counter() - t0, nbytes)
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        child = decode_in_fresh_process(path)
    stage("decode (child, in-process)", child["decode_s"], nbytes, child["peak_mb"])
    stage("decode (child, wall incl. startup)", child["wall_s"], None, child["peak_mb"])

    params = sum(t.numel() for t in sd.values())
    if child["params"] != params or child["tensors"] != len(sd):
        raise ArtifactError(f"decoded {child['tensors']} tensors / {child['params']} params, "
                            f"packed {len(sd)} / {params}")
    return {
        "shape": asdict(s), "recipe": recipe.name, "torch_threads": torch.get_num_threads(),
        "params": params, "tensors": len(sd), "matrices": n_matrices, "gptq_matrices": gptq_ok,
        "artifact_bytes": nbytes, "artifact_sha256": digest, "bits_per_param": nbytes * 8 / params,
        "gptq_s": round(quantize_s, 3), "quantize_s_by_tensor_kind": by_kind, "gptq_target_s": TARGET_GPTQ_S,
        "decode_s": round(child["decode_s"], 3), "decode_target_s": TARGET_DECODE_S,
        "decode_wall_s": round(child["wall_s"], 3), "decoder_import_s": round(child["import_s"], 3),
        "child_peak_mb": round(child["peak_mb"], 1),
        "child_rusage_children_maxrss_mb": round(child["rusage_children_maxrss_mb"], 1), "parent_peak_mb": round(_peak_mb(), 1),
        "load_average": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
        "stages": stages,
    }


def _verdict(value: float, target: float) -> str:
    return "ok" if value <= target else "OVER"


def format_table(r: dict) -> str:
    """The stage table and the verdict lines."""
    s = r["shape"]
    head = (f"model: {s['layers']}L d{s['dim']} vocab {s['vocab']} mlp x{s['mlp_mult']} — "
            f"{r['params']:,} params, {r['matrices']} matrices ({r['gptq_matrices']} GPTQ'd); "
            f"recipe {r['recipe']}; torch threads {r['torch_threads']}")
    lines = [head, f"{'stage':<38}{'seconds':>10}{'bytes':>14}{'peak MB':>10}"]
    for st in r["stages"]:
        b = f"{st['bytes']:,}" if st["bytes"] is not None else ""
        lines.append(f"{st['stage']:<38}{st['seconds']:>10.2f}{b:>14}{st['peak_mb']:>10.1f}")
    gptq = (f"GPTQ all matrices: {r['gptq_s']:.1f} s "
            f"(target <= {r['gptq_target_s']:.0f} s: {_verdict(r['gptq_s'], r['gptq_target_s'])})")
    decode = (f"decode: {r['decode_s']:.2f} s in-process, {r['decode_wall_s']:.2f} s wall "
              f"(target <= {r['decode_target_s']:.0f} s: {_verdict(r['decode_s'], r['decode_target_s'])}); "
              f"child peak {r['child_peak_mb']:.0f} MB (VmHWM; RUSAGE_CHILDREN says "
              f"{r['child_rusage_children_maxrss_mb']:.0f} MB, inflated by the parent at spawn), "
              f"parent peak {r['parent_peak_mb']:.0f} MB")
    size = (f"artifact: {r['artifact_bytes']:,} bytes ({r['bits_per_param']:.3f} bits/param), "
            f"sha256 {r['artifact_sha256'][:16]}")
    load = f"load average (1/5/15 min) at the end: {' '.join(map(str, r['load_average']))} on {r['cpus']} CPUs"
    return "\n".join(lines + [gptq, decode, size, load])
