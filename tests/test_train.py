"""The trainer on real text: loader semantics, optimiser groups and schedules, presets, and
short `tiny-cpu` runs (loss goes down, reproducible, checkpoint round trip, CLI, torchrun)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from artifact.runtime.errors import ConfigError, DataError
from artifact.runtime.byte_count import ByteCounter
from artifact.runtime.checkpoint import load_checkpoint
from artifact.runtime.scoring import eval_flat
from train.loader import BatchLoader, BosAlignedLoader, TokenStream
from train.loop import check_batch_split, train
from train.train_config import TrainConfig
from artifact.runtime.model import GPT, ModelConfig
from train.optim import (
    Muon,
    build_optimizers,
    lr_multiplier,
    muon_momentum_at,
    newton_schulz5,
)
from train.presets import list_presets, load_preset
from artifact.runtime.shards import load_tokens, resolve_data
from train.shard_writer import write_shard

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_run(sample_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "tiny"
    figures = train("tiny-cpu", sample_data, out)
    return out, figures


def _log_values(out: Path, key: str) -> list[float]:
    text = (out / "train_log.txt").read_text()
    return [float(v) for v in re.findall(rf"{key}:([0-9.]+)", text)]


# ------------------------------------------------------------------------------------ loader

def _write_counting_shards(folder: Path, sizes: list[int]) -> list[Path]:
    files, start = [], 0
    for i, n in enumerate(sizes):
        files.append(write_shard(folder / f"t_train_{i:06d}.bin", np.arange(start, start + n) % 1000))
        start += n
    return files


def test_loader_ranks_take_disjoint_spans_of_one_chunk(tmp_path):
    files = _write_counting_shards(tmp_path, [50, 30, 40])
    batches = [BatchLoader(files, rank=r, world_size=2).next_batch(16, 4, 2) for r in range(2)]
    # local tokens = 16 / (2 ranks * 2 micro-steps) = 4; one chunk of 2 * (4 + 1) tokens.
    (x0, y0), (x1, y1) = batches
    assert x0.tolist() == [[0, 1, 2, 3]] and y0.tolist() == [[1, 2, 3, 4]]
    assert x1.tolist() == [[5, 6, 7, 8]] and y1.tolist() == [[6, 7, 8, 9]]
    assert x0.dtype == torch.int64


def test_token_stream_crosses_shards_and_wraps(tmp_path):
    files = _write_counting_shards(tmp_path, [5, 3])
    stream = TokenStream(files)
    assert stream.take(7).tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert stream.take(4).tolist() == [7, 0, 1, 2]  # wrapped to the first shard


def test_loader_rejects_ids_beyond_vocab_and_bad_batch(tmp_path):
    files = _write_counting_shards(tmp_path, [100])
    with pytest.raises(Exception, match="t_train_000000.bin.*vocab"):
        BatchLoader(files, vocab_size=50).next_batch(64, 8)
    with pytest.raises(ConfigError, match="multiple of seq_len"):
        BatchLoader(files).next_batch(60, 8)


def _write_documents(folder: Path, lengths: list[int]) -> list[Path]:
    """One shard of documents [BOS=1, 100, 101, ...] (content ids count up across documents)."""
    tokens, nxt = [], 100
    for n in lengths:
        tokens += [1] + list(range(nxt, nxt + n - 1))
        nxt += n - 1
    return [write_shard(folder / "d_train_000000.bin", np.array(tokens))]


def test_bos_aligned_loader_starts_at_documents_splits_long_ones_and_counts_drops(tmp_path):
    files = _write_documents(tmp_path, [5, 3, 12, 4, 2])
    loader = BosAlignedLoader(files, bos_id=1)
    seqs = [loader.next_sequence(5).tolist() for _ in range(6)]
    assert seqs == [
        [1, 100, 101, 102, 103],   # a whole document
        [1, 104, 105, 1, 106],     # two documents; the 12-token one is cut ...
        [107, 108, 109, 110, 111],  # ... but its tail is a whole sequence long: split, not dropped
        [112, 113, 114, 115, 116],
        [1, 117, 118, 119, 1],     # cut in the last document: its 1-token tail (120) is dropped
        [1, 100, 101, 102, 103],   # wrapped around to the first document
    ]
    assert loader.tokens_skipped == 1


def test_bos_aligned_ranks_see_the_sequences_of_one_process_with_micro_steps(tmp_path):
    files = _write_documents(tmp_path, [7, 30, 9, 4, 50, 3, 11] * 3)
    single = BosAlignedLoader(files, 1)
    micro = [single.next_batch(32, 8, 2) for _ in range(6)]  # 3 steps x 2 micro-steps of 2 sequences
    ranks = [BosAlignedLoader(files, 1, rank=r, world_size=2) for r in range(2)]
    for step in range(3):
        for r in range(2):
            x, y = ranks[r].next_batch(32, 8, 1)
            assert x.shape == (2, 8) and torch.equal(x[:, 1:], y[:, :-1])
            assert torch.equal(x, micro[2 * step + r][0]) and torch.equal(y, micro[2 * step + r][1])
    assert not torch.equal(micro[0][0], micro[1][0])


def test_bos_aligned_without_bos_is_a_data_error(tmp_path):
    files = [write_shard(tmp_path / "n_train_000000.bin", np.arange(2, 300))]
    with pytest.raises(DataError, match="no BOS"):
        BosAlignedLoader(files, 1).next_batch(64, 8)


def test_training_with_bos_aligned_loader(sample_data, tmp_path):
    figures = train("tiny-cpu", sample_data, tmp_path / "bos", {"iterations": 6, "val_every": 0, "loader": "bos_aligned"})
    assert figures["steps"] == 6 and np.isfinite(figures["val_bpb"])
    assert "loader:bos_aligned" in (tmp_path / "bos/train_log.txt").read_text()


def test_world_size_that_does_not_split_the_batch_fails_before_any_work(tmp_path):
    cfg = TrainConfig(seq_len=64, batch_tokens=2048, grad_accum_steps=1)
    assert check_batch_split(cfg, 2) == 2048
    with pytest.raises(ConfigError, match="world size 3"):
        check_batch_split(cfg, 3)
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "3", "LOCAL_RANK": "0"}
    proc = _golf("train", "--preset", "tiny-cpu", "--out", str(tmp_path / "never"), env=env)
    assert proc.returncode == 2 and "world size 3" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "never").exists()


# ---------------------------------------------------------------------------------- optimiser

def test_optimizer_groups_follow_the_baseline():
    cfg = TrainConfig()
    for tied in (True, False):
        model = GPT(ModelConfig(vocab_size=64, num_layers=3, model_dim=32, num_heads=2, num_kv_heads=1, tie_embeddings=tied))
        opts = build_optimizers(model, cfg)
        names = {id(p): n for n, p in model.named_parameters()}
        grouped = [(type(o).__name__, g["base_lr"], names[id(p)]) for o in opts for g in o.param_groups for p in g["params"]]
        assert sorted(n for *_, n in grouped) == sorted(names.values())  # every parameter exactly once
        muon = {n for kind, _, n in grouped if kind == "Muon"}
        assert muon == {n for n, p in model.named_parameters() if n.startswith("blocks.") and p.ndim == 2
                        and "resid_mix" not in n}
        lr_of = {n: lr for _, lr, n in grouped}
        assert lr_of["tok_emb.weight"] == (0.05 if tied else 0.6)
        assert lr_of["blocks.0.resid_mix"] == lr_of["skip_weights"] == lr_of["blocks.2.attn.q_gain"] == 0.04
        if not tied:
            assert lr_of["lm_head.weight"] == 0.008
        adam = [o for o in opts if isinstance(o, torch.optim.Adam)]
        assert all(o.defaults["betas"] == (0.9, 0.95) and o.defaults["eps"] == 1e-8 for o in adam)


def test_newton_schulz_orthogonalises_and_muon_scales_tall_matrices():
    g = torch.randn(96, 32, generator=torch.Generator().manual_seed(0))
    x = newton_schulz5(g)
    singular = torch.linalg.svdvals(x)
    assert x.shape == g.shape
    assert singular.min() > 0.5 and singular.max() < 1.3  # NS5 maps every singular value near 1
    p = torch.nn.Parameter(torch.zeros(96, 32))
    p.grad = g.clone()
    Muon([p], lr=1.0, momentum=0.0, nesterov=False).step()
    assert torch.allclose(-p.detach(), x * (96 / 32) ** 0.5, atol=1e-6)


def test_schedules():
    # Step-based warm-down over the last 10 of 100 steps.
    assert lr_multiplier(50, 0.0, 100, 10, None) == 1.0
    assert lr_multiplier(95, 0.0, 100, 10, None) == pytest.approx(0.5)
    # Wall-clock: 10 ms per step so far, 1000 ms cap, 20-step warm-down = the last 200 ms.
    assert lr_multiplier(50, 500.0, 10_000, 20, 1000.0) == 1.0
    assert lr_multiplier(90, 900.0, 10_000, 20, 1000.0) == pytest.approx(0.5)
    cfg = TrainConfig()
    assert muon_momentum_at(0, cfg) == pytest.approx(0.85)
    assert muon_momentum_at(250, cfg) == pytest.approx(0.90)
    assert muon_momentum_at(10_000, cfg) == pytest.approx(0.95)


# ------------------------------------------------------------------------------------ presets

def test_bundled_presets_load():
    assert {"baseline", "baseline-cpu", "tiny-cpu"} <= set(list_presets())
    base = load_preset("baseline")
    assert base.model == ModelConfig()
    assert (base.train.batch_tokens, base.train.iterations, base.train.warmdown_iters) == (524_288, 20_000, 1200)
    assert base.train.max_wallclock_seconds == 600.0
    cpu = load_preset("baseline-cpu")
    assert cpu.model.vocab_size == 1024 and cpu.train.seq_len == 256 and cpu.train.device == "cpu"


@pytest.mark.parametrize("body,needle", [
    ("[train]\nlearning_rate = 0.1\n", "learning_rate"),
    ("[model]\nnum_layerz = 2\n", "num_layerz"),
    ("[optim]\nlr = 1\n", "optim"),
    ("[train]\niterations = \"many\"\n", "iterations"),
    ("[train\n", "malformed"),
    ("[train]\nqat_recipe = \"nope\"\n", "qat_recipe"),
    ("[train]\nwarmdown_shape = \"square\"\n", "warmdown_shape"),
])
def test_bad_preset_raises_config_error_naming_key_and_file(tmp_path, body, needle):
    path = tmp_path / "mine.toml"
    path.write_text(body)
    with pytest.raises(ConfigError) as err:
        load_preset(path)
    assert "mine.toml" in str(err.value) and needle in str(err.value)


def test_unknown_preset_name_lists_known():
    with pytest.raises(ConfigError, match="baseline-cpu"):
        load_preset("no-such-preset")


# ------------------------------------------------------------------------------- training runs

def test_tiny_cpu_loss_goes_down_and_beats_unigram(tiny_run):
    out, figures = tiny_run
    losses = _log_values(out, "train_loss")
    val_bpb = _log_values(out, "val_bpb")
    assert losses[-1] < losses[0] - 1.0
    assert val_bpb[-1] < val_bpb[0]
    assert figures["val_bpb"] == pytest.approx(val_bpb[-1], abs=1e-4)
    assert figures["val_bpb"] < figures["unigram_bpb"]
    assert figures["steps"] == 40 and figures["tokens_seen"] == 40 * 2048
    assert re.search(r"^step:40/40 train_loss:[0-9.]+ train_time:\d+ms step_avg:[0-9.]+ms$",
                     (out / "train_log.txt").read_text(), re.M)


def test_checkpoint_round_trip_gives_identical_val(tiny_run, sample_data):
    out, figures = tiny_run
    model, cfg, meta = load_checkpoint(out)
    assert cfg == load_preset("tiny-cpu").model
    assert meta["val_bpb"] == figures["val_bpb"] and meta["preset"] == "tiny-cpu"
    paths = resolve_data(sample_data)
    tokens = load_tokens(paths.val_files, 1024)
    counter = ByteCounter.from_sentencepiece(paths.tokenizer, 1024)
    result = eval_flat(model, tokens, counter, 64, 64, "cpu")
    assert result.val_bpb == pytest.approx(figures["val_bpb"], rel=1e-9)
    assert result.tokens == figures["val_tokens"]


def test_same_seed_same_weights_other_seed_differs(sample_data, tmp_path):
    short = {"iterations": 8, "val_every": 0, "warmdown_iters": 3}
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        train("tiny-cpu", sample_data, tmp_path / name, {**short, "seed": seed})
    assert (tmp_path / "a/model.pt").read_bytes() == (tmp_path / "b/model.pt").read_bytes()
    a = torch.load(tmp_path / "a/model.pt", weights_only=True)
    c = torch.load(tmp_path / "c/model.pt", weights_only=True)
    assert not torch.equal(a["blocks.0.attn.c_q.weight"], c["blocks.0.attn.c_q.weight"])


def test_compile_warmup_steps_are_undone(sample_data, tmp_path):
    """Baseline semantics: warm-up steps run, then weights, optimiser state and data restart."""
    common = {"iterations": 6, "val_every": 0, "warmdown_iters": 2}
    train("tiny-cpu", sample_data, tmp_path / "cold", {**common, "warmup_steps": 0})
    train("tiny-cpu", sample_data, tmp_path / "warm", {**common, "warmup_steps": 3})
    assert (tmp_path / "cold/model.pt").read_bytes() == (tmp_path / "warm/model.pt").read_bytes()


def test_wallclock_cap_stops_early(sample_data, tmp_path):
    figures = train("tiny-cpu", sample_data, tmp_path / "capped",
                    {"iterations": 100_000, "max_wallclock_seconds": 0.5, "val_every": 0})
    assert 0 < figures["steps"] < 100_000
    assert "stopping_early: wallclock_cap" in (tmp_path / "capped/train_log.txt").read_text()


def test_vocab_mismatch_is_a_clear_error(sample_data, tmp_path):
    preset = tmp_path / "v512.toml"
    preset.write_text((REPO / "train/presets/tiny-cpu.toml").read_text().replace("vocab_size = 1024", "vocab_size = 512"))
    with pytest.raises(DataError, match="vocab"):
        train(preset, sample_data, tmp_path / "never")


# --------------------------------------------------------------------------- command line

def _golf(*args, env=None):
    return subprocess.run([sys.executable, "-m", "analysis.cli", *args], cwd=REPO, capture_output=True,
                          text=True, env=env, timeout=300)


def test_cli_train_json(sample_data, tmp_path):
    proc = _golf("train", "--preset", "tiny-cpu", "--data", str(sample_data), "--out", str(tmp_path / "cli"),
                 "--max-steps", "5", "--seed", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout)  # logs went to stderr, stdout is pure JSON
    assert figures["steps"] == 5 and figures["seed"] == 3
    assert "step:5/5 val_loss" in proc.stderr
    assert Path(figures["checkpoint"], "model.pt").is_file()


def test_cli_errors_are_one_line(sample_data, tmp_path):
    proc = _golf("train", "--preset", "tiny-cpu", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "x"))
    assert proc.returncode == 2
    assert "golf train: error:" in proc.stderr and "Traceback" not in proc.stderr
    proc = _golf("train", "--preset", "tiny-cpu", "--data", str(sample_data), "--out", str(tmp_path / "y"),
                 "--set", "matrix_lrr=0.1")
    assert proc.returncode == 2 and "matrix_lrr" in proc.stderr


@pytest.mark.slow
def test_torchrun_two_ranks_match_one_process_with_two_micro_steps(sample_data, tmp_path):
    """gloo DDP over 2 CPU ranks sees exactly the tokens of one process doing 2 micro-steps, and
    Muon splits its work across ranks (with weight decay, and EMA-averaged final weights); the
    weights must agree to float rounding."""
    common = ["--preset", "tiny-cpu", "--data", str(sample_data), "--max-steps", "6", "--set", "val_every=0",
              "--set", "muon_weight_decay=0.1", "--set", "ema_decay=0.5", "--set", "embed_weight_decay=0.05"]
    single = _golf("train", *common, "--out", str(tmp_path / "one"), "--set", "grad_accum_steps=2")
    assert single.returncode == 0, single.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "analysis.cli", "train", *common, "--out", str(tmp_path / "two"), "--set", "grad_accum_steps=1"],
        cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two_log = (tmp_path / "two/train_log.txt").read_text()
    assert "world_size:2" in two_log and "averaged (ema_decay:0.5)" in two_log
    a = torch.load(tmp_path / "one/model.pt", weights_only=True)
    b = torch.load(tmp_path / "two/model.pt", weights_only=True)
    for name in a:
        assert torch.allclose(a[name], b[name], atol=2e-4, rtol=1e-3), name


def test_bench_train_reports_ms_per_step_and_tokens_per_second():
    proc = _golf("bench-train", "--presets", "tiny-cpu,baseline-cpu", "--steps", "2", "--warmup", "1",
                 "--device", "cpu", "--cpu-batch-seqs", "2", "--set", "muon_orthogonalizer=\"polar_express\"", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["results"]
    assert [r["preset"] for r in rows] == ["tiny-cpu", "baseline-cpu"]
    for r in rows:
        assert r["device"] == "cpu" and r["steps"] == 2 and r["ms_per_step"] > 0
        assert r["tokens_per_step"] == 2 * r["seq_len"]
        assert r["tokens_per_second"] == pytest.approx(r["tokens_per_step"] * 1000 / r["ms_per_step"], rel=0.01)
    bad = _golf("bench-train", "--presets", "tiny-cpu", "--steps", "1", "--set", "ema_decay=2.0")
    assert bad.returncode == 2 and "ema_decay" in bad.stderr
