"""val_bpb evaluation: windows (each target exactly once), flat and sliding eval against naive
per-window loops, the side-car byte rule, the unigram reference, and `golf eval` end to end."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from artifact.runtime.errors import DataError
from artifact.runtime.byte_count import ByteCounter
from artifact.runtime.checkpoint import save_checkpoint
from artifact.runtime.scoring import (count_sliding_windows, eval_flat, eval_sliding, flat_kept_tokens, load_val,
                                      sliding_windows)
from train.unigram import unigram_bpb
from artifact.runtime.model import GPT, ModelConfig
from artifact.runtime.shards import load_tokens, resolve_data, shard_name
from train.shard_writer import write_shard
from artifact.runtime.tokenizer import load_tokenizer
from train.tokenizer import encode_documents, train_tokenizer

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "tests" / "data" / "sample" / "sample.jsonl"
VOCAB = 1024


def sample_texts() -> list[str]:
    return [json.loads(line)["text"] for line in SAMPLE.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """A dataset in the challenge's layout: tokenizer trained on the sample, the first 8
    documents as val (`[BOS] + encode(text)` each), the rest as train."""
    root = tmp_path_factory.mktemp("data")
    texts = sample_texts()
    model = train_tokenizer(texts, root / "tokenizers" / f"golf_{VOCAB}_bpe", VOCAB)
    sp = load_tokenizer(model, VOCAB)
    docs = encode_documents(sp, texts)
    ds = root / "datasets" / f"golf_sp{VOCAB}"
    write_shard(ds / shard_name("golf", "val", 0), np.concatenate(docs[:8])[:6000])
    write_shard(ds / shard_name("golf", "train", 0), np.concatenate(docs[8:]))
    return root


@pytest.fixture(scope="module")
def counter(data_root):
    return ByteCounter.from_sentencepiece(resolve_data(data_root).tokenizer, VOCAB)


@pytest.fixture(scope="module")
def val_tokens(data_root):
    tokens, sidecar = load_val(resolve_data(data_root), VOCAB)
    assert sidecar is None and tokens.size == 6000
    return tokens


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = GPT(ModelConfig(vocab_size=VOCAB, num_layers=2, model_dim=64, num_heads=4, num_kv_heads=2))
    with torch.no_grad():  # zero-initialised projections would make every window alike
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m.eval()


def naive_sums(model, tokens, windows, counter, sidecar=None) -> tuple[float, int, int]:
    """Σ loss, Σ bytes, count over windows, one window and one target at a time (float64 sums)."""
    loss, nbytes, count = 0.0, 0, 0
    with torch.no_grad():
        for start, end, score_from in windows:
            x = torch.from_numpy(tokens[start:end].astype(np.int64))[None]
            logp = F.log_softmax(model(x)[0].float(), dim=-1)
            for j in range(score_from, end - start):
                t = start + j  # target position: predicts tokens[t + 1]
                loss -= float(logp[j, int(tokens[t + 1])])
                if sidecar is None:
                    nbytes += int(counter.count(tokens[t:t + 1], tokens[t + 1:t + 2])[0])
                else:
                    nbytes += int(sidecar[t + 1])
                count += 1
    return loss, nbytes, count


# ------------------------------------------------------------------- windows
@pytest.mark.parametrize("total,L,S", [
    (5, 8, 2),  # N < L
    (3, 8, 8),
    (64, 16, 4),  # N − 1 a multiple of S
    (65, 16, 4),
    (67, 16, 16),  # S = L
    (40, 8, 1),  # S = 1
    (100, 32, 7),
    (17, 16, 15),
    (1, 4, 2),
])
def test_sliding_windows_score_every_target_exactly_once(total, L, S):
    windows = sliding_windows(total, L, S)
    hits = np.zeros(total, dtype=int)
    for k, (start, end, score_from) in enumerate(windows):
        assert start == k * S and end == min(start + L, total) and 0 < end - start <= L
        assert score_from == (0 if k == 0 else L - S)
        assert start + score_from < end  # every window scores something
        hits[start + score_from:end] += 1
        if k > 0:
            assert end - (start + score_from) <= S
    assert hits.tolist() == [1] * total
    assert count_sliding_windows(total, L, S) == len(windows)


def test_flat_truncation_rule():
    assert flat_kept_tokens(6000, 256) == 5889  # floor(5999 / 256) * 256 + 1
    assert flat_kept_tokens(257, 256) == 257 and flat_kept_tokens(513, 256) == 513


# ------------------------------------------------------------------- eval against naive loops
def test_eval_sliding_equals_naive_per_target_loop(model, val_tokens, counter):
    tokens = val_tokens[:701]
    L, S = 64, 24
    result = eval_sliding(model, tokens, counter, L, S, batch_seqs=5)
    loss, nbytes, count = naive_sums(model, tokens, sliding_windows(700, L, S), counter)
    assert result.tokens == count == 700 and result.bytes == nbytes
    assert result.val_loss * result.tokens == pytest.approx(loss, rel=1e-5)
    assert result.val_bpb == pytest.approx(loss / (math.log(2) * nbytes), rel=1e-5)
    assert result.mode == "sliding" and result.stride == S and result.windows == count_sliding_windows(700, L, S)


def test_eval_flat_equals_naive_windows_and_ignores_the_tail(model, val_tokens, counter):
    L = 64
    tokens = np.array(val_tokens[:1000])  # (1000 − 1) // 64 = 15 windows; 39 tail targets dropped
    result = eval_flat(model, tokens, counter, L, batch_seqs=4)
    windows = [(k * L, (k + 1) * L, 0) for k in range(15)]
    loss, nbytes, count = naive_sums(model, tokens, windows, counter)
    assert result.tokens == count == 960 and result.bytes == nbytes and result.windows == 15
    assert result.val_loss * result.tokens == pytest.approx(loss, rel=1e-5)
    changed = tokens.copy()
    changed[961:] = changed[961:][::-1]  # the tail beyond floor((N−1)/L)·L + 1 tokens
    again = eval_flat(model, changed, counter, L, batch_seqs=7)
    assert (again.tokens, again.bytes) == (result.tokens, result.bytes)
    assert again.val_loss == pytest.approx(result.val_loss, rel=1e-6)
    changed[960] = (int(changed[960]) + 1) % VOCAB  # the last scored target: must matter
    assert eval_flat(model, changed, counter, L).val_loss != pytest.approx(result.val_loss, rel=1e-9)


def test_sliding_with_stride_equal_to_length_matches_flat_when_nothing_is_cut(model, val_tokens, counter):
    tokens = val_tokens[:4 * 64 + 1]
    flat = eval_flat(model, tokens, counter, 64)
    slide = eval_sliding(model, tokens, counter, 64, 64)
    assert (flat.tokens, flat.bytes) == (slide.tokens, slide.bytes)
    assert flat.val_loss == pytest.approx(slide.val_loss, rel=1e-6)


def test_too_few_tokens_and_bad_ids_are_clear_errors(model, val_tokens, counter):
    with pytest.raises(DataError, match="needs at least 65 tokens"):
        eval_flat(model, val_tokens[:64], counter, 64)
    small = GPT(ModelConfig(vocab_size=512, num_layers=1, model_dim=32, num_heads=2, num_kv_heads=1))
    with pytest.raises(DataError, match="beyond the model's vocab of 512"):
        eval_flat(small, val_tokens[:200], counter, 64)


# ------------------------------------------------------------------- side-car
def test_sidecar_bytes_replace_the_tables(model, val_tokens, counter):
    tokens = val_tokens[:400]
    side = np.random.default_rng(1).integers(0, 9, size=tokens.size).astype(np.uint16)
    table = eval_sliding(model, tokens, counter, 64, 32)
    result = eval_sliding(model, tokens, counter, 64, 32, sidecar=side)
    assert result.bytes == int(side[1:].sum()) != table.bytes
    assert result.val_loss == pytest.approx(table.val_loss, rel=1e-9)
    flat = eval_flat(model, tokens, None, 64, sidecar=side)
    assert flat.bytes == int(side[1:flat_kept_tokens(400, 64)].sum())
    with pytest.raises(DataError, match="399 byte entries for 400 tokens"):
        eval_flat(model, tokens, counter, 64, sidecar=side[:-1])


def test_load_val_reads_sidecars_and_checks_their_length(tmp_path):
    ds = tmp_path / "datasets" / "caps_sp1024"
    a, b = np.array([1, 5, 6, 7], np.uint16), np.array([1, 8, 9], np.uint16)
    write_shard(ds / shard_name("caps", "val", 0), a)
    write_shard(ds / shard_name("caps", "val", 1), b)
    write_shard(ds / shard_name("caps", "val_bytes", 0), [0, 3, 1, 2])
    write_shard(ds / shard_name("caps", "val_bytes", 1), [0, 4, 4])
    tokens, side = load_val(resolve_data(tmp_path), VOCAB)
    assert tokens.tolist() == [1, 5, 6, 7, 1, 8, 9] and side.tolist() == [0, 3, 1, 2, 0, 4, 4]
    write_shard(ds / shard_name("caps", "val_bytes", 1), [0, 4])
    with pytest.raises(DataError, match="2 byte entries but caps_val_000001.bin holds 3 tokens"):
        load_val(resolve_data(tmp_path), VOCAB)


# ------------------------------------------------------------------- unigram reference
def test_unigram_bpb_is_the_add_one_unigram_on_flat_targets(val_tokens, counter):
    train = np.array([1, 300, 300, 301, 1, 300], dtype=np.uint16)
    val = np.array(val_tokens[:9])  # L = 4: 2 windows, targets val[1:9]
    counts = np.bincount(train, minlength=VOCAB) + 1.0
    logp = np.log(counts / counts.sum())
    expected = -logp[val[1:9]].sum() / (math.log(2) * counter.count(val[:8], val[1:9]).sum())
    assert unigram_bpb(train, np.concatenate([val, [300, 300]]), counter, 4) == pytest.approx(expected, rel=1e-12)


def test_a_trained_unigram_beats_uniform(data_root, val_tokens, counter):
    train = load_tokens(resolve_data(data_root).require_train())
    uni = unigram_bpb(train, val_tokens, counter, 256)
    n = flat_kept_tokens(val_tokens.size, 256)
    uniform = (n - 1) * math.log2(VOCAB) / counter.count(val_tokens[:n - 1], val_tokens[1:n]).sum()
    assert 1.0 < uni < uniform


# ------------------------------------------------------------------- golf eval end to end
def run_golf(*args) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "analysis.cli", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_golf_eval_cli_flat_and_sliding(tmp_path, data_root, model, val_tokens, counter):
    ckpt = save_checkpoint(tmp_path / "ckpt", model, model.config, {"seq_len": 128})
    flat = run_golf("eval", ckpt, "--data", data_root, "--max-tokens", 2000, "--device", "cpu", "--json")
    assert flat.returncode == 0, flat.stderr
    got = json.loads(flat.stdout)
    want = eval_flat(model, val_tokens[:2000], counter, 128)
    assert (got["mode"], got["seq_len"], got["stride"]) == ("flat", 128, None)  # seq_len from meta
    assert (got["tokens"], got["bytes"]) == (want.tokens, want.bytes) == (15 * 128, want.bytes)
    assert got["val_bpb"] == pytest.approx(want.val_bpb, rel=1e-6)

    slide = run_golf("eval", ckpt, "--data", data_root, "--seq-len", 64, "--stride", 16,
                     "--batch-seqs", 3, "--json")
    assert slide.returncode == 0, slide.stderr
    # --json with stderr captured (a script, not a terminal): one JSON line and nothing else at all
    assert slide.stderr == "" and len(slide.stdout.strip().splitlines()) == 1
    got = json.loads(slide.stdout)
    want = eval_sliding(model, val_tokens, counter, 64, 16)
    assert (got["mode"], got["stride"], got["tokens"], got["bytes"]) == ("sliding", 16, 5999, want.bytes)
    assert got["val_bpb"] == pytest.approx(want.val_bpb, rel=1e-6)

    text = run_golf("eval", ckpt, "--data", data_root, "--max-tokens", 300)
    assert text.returncode == 0 and "val_bpb" in text.stdout and "tokens/s" in text.stdout
    assert "eval" in text.stderr and "eta" in text.stderr  # progress, in a log: plain lines with an ETA


@pytest.mark.slow
def test_golf_eval_cli_refuses_a_tokenizer_larger_than_the_model(tmp_path, data_root):
    small = GPT(ModelConfig(vocab_size=512, num_layers=1, model_dim=32, num_heads=2, num_kv_heads=1))
    ckpt = save_checkpoint(tmp_path / "small", small, small.config, {})
    ds = data_root / "datasets" / f"golf_sp{VOCAB}"
    out = run_golf("eval", ckpt, "--data", ds, "--json")
    assert out.returncode == 2 and out.stdout == ""
    assert "golf eval: error:" in out.stderr and "512" in out.stderr
    bad = run_golf("eval", ckpt, "--data", tmp_path / "nowhere")
    assert bad.returncode == 2 and "no such checkpoint" not in bad.stderr and "nowhere" in bad.stderr
