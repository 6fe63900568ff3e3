"""Test-time training (train/ttt.py): legality proven on instrumented runs of every mode (each
target scored exactly once, every token an update sees scored before it), lr 0 = the plain
eval exactly, LoRA leaves the base weights bit-identical, clear config errors, and TTT on the
real bundled checkpoint and val text changes (and lowers) the loss. `golf eval --ttt` end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from artifact.runtime.errors import ConfigError
from artifact.runtime.byte_count import ByteCounter
from train.bundled import BUNDLED_CHECKPOINT, BUNDLED_DATA
from artifact.runtime.scoring import eval_flat, eval_sliding, load_val
from artifact.runtime.model import GPT, ModelConfig
from artifact.runtime.shards import resolve_data
from artifact.runtime.ttt import (TTTConfig, TTTTrace, document_spans, document_windows, eval_documents, run_ttt)

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]
L = 64


@pytest.fixture(scope="module")
def val():
    """(bundled val tokens, their byte counter): the real held-out text."""
    data = resolve_data(BUNDLED_DATA)
    tokens, sidecar = load_val(data, 1024)
    assert sidecar is None
    return tokens, ByteCounter.from_sentencepiece(data.tokenizer, 1024)


@pytest.fixture(scope="module")
def tokens(val):
    """Four real documents, each cut to its first 600 tokens (BOS included), then one more
    token (flat eval at L = 64 keeps 37 windows: 2369 tokens)."""
    stream = val[0]
    starts = np.flatnonzero(stream == 1)[:5]
    toks = np.concatenate([stream[a:a + 600] for a in starts[:4]] + [stream[starts[4]:starts[4] + 1]])
    assert len(document_spans(toks, toks.size - 1)) == 4 and toks.size == 2401
    return toks


@pytest.fixture(scope="module")
def counter(val):
    return val[1]


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    m = GPT(ModelConfig(vocab_size=1024, num_layers=2, model_dim=64, num_heads=4, num_kv_heads=2))
    with torch.no_grad():  # zero-initialised projections would give the adapters no gradient path
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m.eval()


@pytest.fixture(scope="module")
def bundled():
    from artifact.runtime.checkpoint import load_checkpoint

    return load_checkpoint(BUNDLED_CHECKPOINT)[0].eval()


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_legal(trace: TTTTrace, n_targets: int) -> None:
    """Every target 0..n−1 scored exactly once; every token an update feeds or predicts was
    revealed (its position scored) at an earlier event. Token i is revealed by scoring target
    position i − 1; token 0 is never a target and is known from the start."""
    scored_at = np.full(n_targets, -1)
    for event, first, end in trace.scores:
        assert 0 <= first < end <= n_targets
        assert (scored_at[first:end] == -1).all(), f"targets {first}..{end} scored twice"
        scored_at[first:end] = event
    assert (scored_at >= 0).all(), f"{int((scored_at < 0).sum())} targets never scored"
    assert trace.updates, "no update happened: the check would be vacuous"
    for event, _, windows in trace.updates:
        for start, end, loss_from in windows:
            assert 0 <= start + loss_from < end <= n_targets
            seen = scored_at[max(start - 1, 0):end]  # tokens start..end: inputs and targets
            assert (seen < event).all(), f"update at event {event} used tokens scored later"


def test_the_legality_check_catches_a_train_before_score_trace():
    trace = TTTTrace()
    trace.scored((0, 8, 0))
    trace.updated("chunk", [(4, 12, 0)])  # trains on targets 8..11 before they are scored
    trace.scored((8, 16, 0))
    with pytest.raises(AssertionError, match="scored later"):
        assert_legal(trace, 16)
    twice = TTTTrace()
    twice.scored((0, 8, 0))
    twice.scored((4, 8, 2))
    with pytest.raises(AssertionError, match="scored twice"):
        assert_legal(twice, 8)


# ------------------------------------------------------------------- legality of every mode
@pytest.mark.parametrize("cfg,stride", [
    (TTTConfig(mode="chunked", chunk_tokens=512, epochs=2, lr=0.05), None),
    (TTTConfig(mode="chunked", chunk_tokens=300, lr=0.05, optimizer="adamw", frozen_blocks=1, train_seq_len=48), 16),
    (TTTConfig(mode="lora", chunk_tokens=48, epochs=2, lora_lr=0.01), None),
    (TTTConfig(mode="phased", chunk_tokens=64, lora_lr=0.01, lr=0.05, prefix_docs=2, phases=2), 32),
])
def test_every_mode_scores_each_target_once_and_trains_only_on_scored_tokens(small, tokens, counter, cfg, stride):
    trace = TTTTrace()
    res = run_ttt(small, tokens, counter, L, cfg, stride=stride, batch_seqs=4, trace=trace)
    plain = (eval_flat(small, tokens, counter, L) if stride is None
             else eval_sliding(small, tokens, counter, L, stride))
    assert_legal(trace, plain.tokens)
    assert (res.tokens, res.bytes) == (plain.tokens, plain.bytes)  # the same targets, the same bytes
    assert res.updates == len(trace.updates) > 0
    kinds = {kind for _, kind, _ in trace.updates}
    if cfg.mode == "chunked":  # the last chunk is never trained on: nothing is left to score
        assert kinds == {"chunk"}
        firsts = [first for _, first, _ in trace.scores]
        last_key = max(firsts) // cfg.chunk_tokens
        last_chunk_first = min(f for f in firsts if f // cfg.chunk_tokens == last_key)
        assert all(e <= last_chunk_first for _, _, ws in trace.updates for _, e, _ in ws)
        return
    spans = document_spans(tokens, plain.tokens)
    assert res.documents == len(spans) == 4
    assert kinds == ({"lora", "global"} if cfg.mode == "phased" else {"lora"})
    for event, kind, windows in trace.updates:
        for start, end, loss_from in windows:  # never across a document start
            assert any(a <= start and end <= b for a, b in spans)
            if kind == "lora":  # the chunk just scored, with context from its own document
                assert [s[1:] for s in trace.scores if s[0] < event][-1] == (start + loss_from, end)
            if kind == "global":  # phase boundaries after documents 1 and 2 (prefix 2, 2 phases)
                assert end <= spans[1][1]


def test_phased_global_phase_changes_the_base_model_and_the_result(small, tokens, counter):
    lora = TTTConfig(mode="lora", chunk_tokens=64, lora_lr=0.01)
    phased = TTTConfig(mode="phased", chunk_tokens=64, lora_lr=0.01, lr=0.05, prefix_docs=2, phases=1)
    a = run_ttt(small, tokens, counter, L, lora)
    b = run_ttt(small, tokens, counter, L, phased)
    assert b.updates > a.updates and b.val_loss != a.val_loss


# ------------------------------------------------------------------- lr 0 = no TTT, exactly
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_chunked_ttt_at_lr_zero_is_the_plain_eval_exactly(small, tokens, counter, optimizer):
    cfg = TTTConfig(mode="chunked", chunk_tokens=4 * L, epochs=2, lr=0.0, optimizer=optimizer, weight_decay=0.1)
    res = run_ttt(small, tokens, counter, L, cfg, batch_seqs=4)
    plain = eval_flat(small, tokens, counter, L, batch_seqs=4)
    assert res.updates > 0
    assert (res.tokens, res.bytes) == (plain.tokens, plain.bytes)
    assert res.val_loss * res.tokens == plain.val_loss * plain.tokens and res.val_bpb == plain.val_bpb
    slide = eval_sliding(small, tokens, counter, L, 16, batch_seqs=4)
    res = run_ttt(small, tokens, counter, L, cfg, stride=16, batch_seqs=4)
    assert (res.tokens, res.bytes, res.val_bpb) == (slide.tokens, slide.bytes, slide.val_bpb)


def test_lora_ttt_at_lr_zero_is_the_document_eval_exactly(small, tokens, counter):
    docs = eval_documents(small, tokens, counter, L, 48)
    res = run_ttt(small, tokens, counter, L, TTTConfig(mode="lora", chunk_tokens=48, lora_lr=0.0))
    assert res.updates > 0 and (res.tokens, res.bytes, res.val_bpb) == (docs.tokens, docs.bytes, docs.val_bpb)
    cfg = TTTConfig(mode="phased", chunk_tokens=48, lora_lr=0.0, lr=0.0, prefix_docs=2, phases=2)
    res = run_ttt(small, tokens, counter, L, cfg)
    assert res.updates > 0 and (res.tokens, res.bytes, res.val_bpb) == (docs.tokens, docs.bytes, docs.val_bpb)
    # the document eval itself, rebuilt naively: each chunk of a document on its own forward pass
    loss = 0.0
    with torch.no_grad():
        for first, end in document_spans(tokens, docs.tokens):
            for a in range(first, end, 48):
                b = min(a + 48, end)
                start = max(first, b - L)
                x = torch.from_numpy(tokens[start:b].astype(np.int64))[None]
                logp = torch.log_softmax(small(x)[0].float(), dim=-1)
                loss -= sum(float(logp[t - start, int(tokens[t + 1])]) for t in range(a, b))
    assert docs.bytes == eval_flat(small, tokens, counter, L).bytes
    assert docs.val_loss * docs.tokens == pytest.approx(loss, rel=1e-5)


def test_document_windows_cover_each_document_once_without_crossing_its_start():
    windows = document_windows((100, 350), chunk=48, seq_len=64)
    covered = [t for s, e, f in windows for t in range(s + f, e)]
    assert covered == list(range(100, 350))
    assert all(s >= 100 and e - s <= 64 and f >= 0 for s, e, f in windows)
    assert document_spans(np.array([5, 1, 7, 1, 1, 9]), 5) == [(0, 1), (1, 3), (3, 4), (4, 5)]


# ------------------------------------------------------------------- weights
def test_lora_leaves_the_base_model_bit_identical(small, tokens, counter):
    before = state(small)
    flags = [p.requires_grad for p in small.parameters()]
    res = run_ttt(small, tokens, counter, L, TTTConfig(mode="lora", chunk_tokens=64, lora_lr=0.05, epochs=3))
    assert res.updates > 0
    after = small.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert [p.requires_grad for p in small.parameters()] == flags
    assert not any(m._forward_hooks for m in small.modules())


def test_lora_adapters_start_fresh_for_every_document(small, tokens, counter):
    """The run over four documents loses exactly what four runs over each document alone lose:
    nothing learnt on one document reaches the next."""
    cfg = TTTConfig(mode="lora", chunk_tokens=64, lora_lr=0.05, epochs=2)
    whole = run_ttt(small, tokens, counter, L, cfg, stride=L)
    alone = [run_ttt(small, tokens[a:b + 1], counter, L, cfg, stride=L)
             for a, b in document_spans(tokens, tokens.size - 1)]
    assert whole.updates == sum(r.updates for r in alone) > 0
    assert whole.val_loss * whole.tokens == pytest.approx(sum(r.val_loss * r.tokens for r in alone), rel=1e-9)


def test_full_model_modes_train_a_copy_and_are_deterministic(small, tokens, counter):
    before = state(small)
    cfg = TTTConfig(mode="chunked", chunk_tokens=1024, lr=0.05, epochs=2)
    a = run_ttt(small, tokens, counter, L, cfg)
    b = run_ttt(small, tokens, counter, L, cfg)
    assert all(torch.equal(before[k], v) for k, v in small.state_dict().items())
    assert a.val_loss == b.val_loss and a.updates == b.updates > 0


def test_frozen_blocks_stay_bit_identical_while_the_rest_adapts(small, tokens, counter):
    model = GPT(small.config)
    model.load_state_dict(small.state_dict())
    before = state(model)
    cfg = TTTConfig(mode="chunked", chunk_tokens=512, lr=0.05, frozen_blocks=1)
    run_ttt(model, tokens, counter, L, cfg, in_place=True)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and not any(k.startswith("blocks.0.") for k in changed)
    assert any(k.startswith("blocks.1.") for k in changed) and "tok_emb.weight" in changed
    assert all(p.requires_grad for p in model.parameters())


# ------------------------------------------------------------------- bad configuration
@pytest.mark.parametrize("kwargs,message", [
    ({"mode": "online"}, "mode 'online' must be one of chunked, lora, phased"),
    ({"optimizer": "lion"}, "optimizer 'lion' must be one of sgd, adamw"),
    ({"lr": -0.1}, "lr -0.1 must be a finite number >= 0"),
    ({"lora_lr": float("nan")}, "lora_lr nan must be a finite number >= 0"),
    ({"momentum": 1.0}, "momentum 1.0 must be a number in"),
    ({"chunk_tokens": 0}, "chunk_tokens 0 must be >= 1"),
    ({"train_seq_len": 0}, "train_seq_len 0 must be >= 1"),
    ({"lora_rank": 0}, "lora_rank must be an integer >= 1"),
    ({"epochs": -1}, "epochs must be an integer >= 0"),
])
def test_bad_config_values_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match="ttt config: " + message.replace("(", r"\(")):
        TTTConfig(**kwargs)


def test_configs_that_do_not_fit_the_model_or_window_fail_before_scoring(small, tokens, counter):
    with pytest.raises(ConfigError, match="chunk_tokens 128 exceeds seq_len 64"):
        run_ttt(small, tokens, counter, L, TTTConfig(mode="lora", chunk_tokens=128))
    with pytest.raises(ConfigError, match="frozen_blocks 3 exceeds the model's 2 blocks"):
        run_ttt(small, tokens, counter, L, TTTConfig(frozen_blocks=3))
    with pytest.raises(ConfigError, match=r"lora_targets \['c_z'\] match no trainable nn.Linear.*blocks.0.attn.c_q"):
        run_ttt(small, tokens, counter, L, TTTConfig(mode="lora", lora_targets=("c_z",)))
    with pytest.raises(ConfigError, match="unknown key .rank."):
        TTTConfig.from_dict({"mode": "lora", "rank": 4})
    assert not any(m._forward_hooks for m in small.modules())


# ------------------------------------------------------------------- the real checkpoint and text
def test_ttt_on_the_bundled_checkpoint_lowers_the_real_val_loss(bundled, val, counter):
    toks = np.array(val[0][:2049])  # the first two held-out documents
    seq = 256
    plain = eval_flat(bundled, toks, counter, seq)
    docs = eval_documents(bundled, toks, counter, seq, 128)
    lora = run_ttt(bundled, toks, counter, seq, TTTConfig(mode="lora", chunk_tokens=128, lora_lr=0.003))
    chunked = run_ttt(bundled, toks, counter, seq, TTTConfig(mode="chunked", chunk_tokens=512, lr=0.01, epochs=2))
    assert lora.bytes == docs.bytes == chunked.bytes == plain.bytes
    assert lora.val_bpb < docs.val_bpb - 0.02  # adapters fitted on a document's past help its future
    assert chunked.val_bpb < plain.val_bpb  # measured: 2.4807 -> 2.4722


# ------------------------------------------------------------------- golf eval --ttt
def run_golf(*args) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "analysis.cli", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_golf_eval_ttt_reports_both_figures(bundled, val, counter):
    out = run_golf("eval", "--max-tokens", 1025, "--device", "cpu", "--ttt", "lora", "--ttt-chunk", 128,
                   "--ttt-lora-lr", 0.01, "--ttt-lora-targets", "c_q,c_v", "--json")
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    want = run_ttt(bundled, val[0][:1025], counter, 256,
                   TTTConfig(mode="lora", chunk_tokens=128, lora_lr=0.01, lora_targets=("c_q", "c_v")))
    t = got["ttt"]
    assert (t["mode"], t["tokens"], t["bytes"]) == ("lora", got["tokens"], got["bytes"])
    assert t["val_bpb"] == pytest.approx(want.val_bpb, rel=1e-9)
    assert t["baseline_val_bpb"] == got["val_bpb"] and t["gain_bpb"] == pytest.approx(got["val_bpb"] - t["val_bpb"])
    assert t["doc_baseline"]["val_bpb"] > t["val_bpb"] and t["config"]["lora_targets"] == ["c_q", "c_v"]
    text = run_golf("eval", "--max-tokens", 1025, "--ttt", "chunked", "--ttt-chunk", 512, "--ttt-no-cosine")
    assert text.returncode == 0, text.stderr
    assert "ttt val_bpb" in text.stdout and "without TTT" in text.stdout
    bad = run_golf("eval", "--max-tokens", 1025, "--ttt", "lora", "--ttt-chunk", 512)
    assert bad.returncode == 2 and "golf eval: error:" in bad.stderr and "exceeds seq_len 256" in bad.stderr
