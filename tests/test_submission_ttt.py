"""Submissions that score with test-time training (artifact/docs/val_bpb.md), end to end.

`golf pack --ttt MODE --ttt-...` records the TTT settings in config.json's eval section and ships
golf_runtime/ttt.py (counted); the shipped run.py then scores the val stream with `ttt.run_ttt`
after decoding the weights. `golf verify` runs it in a fresh, guarded process: its TTT figure must
equal run_ttt in this process on the same decoded weights and tokens. Without --ttt nothing of TTT
ships; a bad TTT setting in config.json is one clear error.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from analysis.cli import main
from artifact.runtime.decoder import decode
from artifact.runtime.errors import ConfigError
from artifact.submission import MARKER, RUNTIME_DIR, RUNTIME_PACKAGE, plan_files
from artifact.verify import VerifyError, verify
from train.bundled import BUNDLED_CHECKPOINT, BUNDLED_DATA
from artifact.runtime.byte_count import ByteCounter
from artifact.runtime.scoring import eval_flat, load_val
from artifact.runtime.model import GPT, ModelConfig
from artifact.runtime.shards import resolve_data
from artifact.runtime.ttt import TTTConfig, run_ttt

CKPT, DATA = BUNDLED_CHECKPOINT, BUNDLED_DATA
RECIPE = "seed-003"  # round to nearest, no calibration: cheap
MAX_TOKENS = 4096  # a small val prefix: a few documents
TTT_FLAGS = ("--ttt", "lora", "--ttt-lora-rank", "4", "--ttt-chunk", "64", "--ttt-lora-lr", "0.003")
BUDGET = "track_10min_16mb"
TTT_FILE = f"{RUNTIME_PACKAGE}/ttt.py"  # where the TTT module ships


def pack(out: Path, *extra: str) -> Path:
    assert main(["pack", str(CKPT), "--recipe", RECIPE, "--out", str(out), "--budget", BUDGET, *extra]) == 0
    return out


def shipped(folder: Path) -> dict[str, int]:
    return {f["path"]: f["bytes"] for f in json.loads((folder / MARKER).read_text())["files"]}


def cli_verify(folder: Path, capsys) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = main(["verify", str(folder), "--data", str(DATA), "--max-tokens", str(MAX_TOKENS), "--device", "cpu"])
    return code, capsys.readouterr().out.strip().splitlines()


@pytest.fixture(scope="module")
def ttt_plain(tmp_path_factory) -> Path:
    return pack(tmp_path_factory.mktemp("ttt_plain") / "sub", "--plain-code", *TTT_FLAGS)


@pytest.fixture(scope="module")
def no_ttt_plain(tmp_path_factory) -> Path:
    return pack(tmp_path_factory.mktemp("no_ttt") / "sub", "--plain-code")


@pytest.fixture(scope="module")
def ttt_result(ttt_plain):
    return verify(ttt_plain, BUDGET, DATA, max_tokens=MAX_TOKENS, device="cpu", threads=1)


@pytest.fixture
def scratch_copy(ttt_plain, tmp_path) -> Path:
    """A copy to edit; without golf's submission.json, so that the run itself meets the edit."""
    copy = tmp_path / "sub"
    shutil.copytree(ttt_plain, copy)
    (copy / MARKER).unlink()
    return copy


def in_process_scores(folder: Path):
    """(plain EvalResult, TTTResult) of the folder's decoded weights and TTT settings, here."""
    config = json.loads((folder / "config.json").read_text())
    model = GPT(ModelConfig.from_dict(config["model"]))
    model.load_state_dict({k: torch.from_numpy(v) for k, v in decode(folder / "model.blob").items()}, strict=True)
    model.eval()
    vocab = model.config.vocab_size
    data = resolve_data(DATA, vocab_size=vocab)
    tokens, _ = load_val(data, vocab)
    tokens = tokens[:MAX_TOKENS]
    counter = ByteCounter.from_sentencepiece(data.tokenizer, vocab)
    seq_len = config["eval"]["seq_len"]
    cfg = TTTConfig.from_dict(config["eval"]["ttt"])
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as the verified run (threads=1): same kernels, same sums
    try:
        plain = eval_flat(model, tokens, counter, seq_len, device="cpu")
        ttt = run_ttt(model, tokens, counter, seq_len, cfg, device="cpu")
    finally:
        torch.set_num_threads(before)
    return plain, ttt


@pytest.mark.slow
def test_ttt_submission_scores_exactly_run_ttt_in_a_fresh_process(ttt_plain, ttt_result):
    config = json.loads((ttt_plain / "config.json").read_text())
    assert config["eval"]["ttt"] == TTTConfig(mode="lora", lora_rank=4, chunk_tokens=64, lora_lr=0.003).to_dict()
    run = ttt_result.run
    shipped_ttt = run["modules"][f"{RUNTIME_PACKAGE}.ttt"]
    assert ttt_result.fits and shipped_ttt.endswith("/" + TTT_FILE)
    assert "golf-verify-" in shipped_ttt  # the shipped copy, not the project's

    plain, ttt = in_process_scores(ttt_plain)
    assert (run["ttt"]["tokens"], run["ttt"]["bytes"]) == (ttt.tokens, ttt.bytes) == (plain.tokens, plain.bytes)
    assert run["ttt"]["updates"] == ttt.updates > 0 and run["ttt"]["documents"] == ttt.documents > 1
    assert abs(ttt_result.val_bpb - ttt.val_bpb) <= 1e-9  # the score is the TTT figure
    assert abs(ttt_result.plain_val_bpb - plain.val_bpb) <= 1e-9
    assert ttt.val_bpb != plain.val_bpb  # the adapters did train on scored tokens
    line = ttt_result.line()
    assert line.startswith("FITS total=") and f"val_bpb={ttt.val_bpb:.8f} (ttt lora; plain_val_bpb=" in line


@pytest.mark.slow
def test_ttt_module_ships_and_is_counted_only_with_ttt(ttt_plain, no_ttt_plain, ttt_result):
    with_ttt, without = shipped(ttt_plain), shipped(no_ttt_plain)
    source = (RUNTIME_DIR / "ttt.py").read_bytes()
    assert with_ttt[TTT_FILE] == len(source) and (ttt_plain / TTT_FILE).read_bytes() == source
    assert TTT_FILE not in without
    assert json.loads((no_ttt_plain / "config.json").read_text())["eval"] == {"seq_len": 256}
    # Everything else is the same file: the code bytes grow by ttt.py plus the longer config.json.
    assert set(with_ttt) - set(without) == {TTT_FILE}
    assert {p: b for p, b in with_ttt.items() if p not in (TTT_FILE, "config.json")} == \
        {p: b for p, b in without.items() if p != "config.json"}
    counted = {p: b for p, b, role in ttt_result.count.files if role != "not counted"}
    assert counted[TTT_FILE] == len(source)
    grew = ttt_result.count.code_bytes - sum(b for p, b in without.items() if p != "model.blob")
    assert grew == len(source) + with_ttt["config.json"] - without["config.json"]


def test_plan_files_ships_the_ttt_module_exactly_with_ttt_settings():
    assert TTT_FILE in plan_files([], {}, {"seq_len": 8, "ttt": {"mode": "lora"}}, blob=b"")
    assert TTT_FILE not in plan_files([], {}, {"seq_len": 8}, blob=b"")
    with pytest.raises(ConfigError, match="must be a dict of TTT settings"):
        plan_files([], {}, {"seq_len": 8, "ttt": "lora"}, blob=b"")


@pytest.mark.slow
def test_compact_ttt_submission_verifies_and_golf_verify_prints_both_figures(tmp_path, ttt_result, capsys):
    compact = pack(tmp_path / "compact", "--compact", *TTT_FLAGS)
    assert sorted(shipped(compact)) == ["config.json", "model.blob", "run.py"]
    code, lines = cli_verify(compact, capsys)
    assert code == 0, lines
    text = "\n".join(lines)
    assert re.search(r"^ttt          lora, chunk 64, \d+ chunks, \d+ documents, \d+ updates", text, re.M)
    found = re.search(r"^ttt val_bpb  ([0-9.]+)  \(plain ([0-9.]+), gain", text, re.M)
    # default threads here, one thread in ttt_result: equal up to float summation order
    assert found and abs(float(found[1]) - ttt_result.val_bpb) < 1e-6
    assert abs(float(found[2]) - ttt_result.plain_val_bpb) < 1e-6
    assert lines[-1].startswith("FITS total=") and "(ttt lora; plain_val_bpb=" in lines[-1]


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.update(lora_rank=0), "config.json eval.ttt: ttt config: lora_rank must be an integer >= 1"),
    (lambda t: t.update(bogus=1), "config.json eval.ttt: ttt config: unknown key 'bogus'"),
    (lambda t: t.update(chunk_tokens=512), "config.json eval.ttt: ttt config: chunk_tokens 512 exceeds seq_len 256"),
    (lambda t: t.update(momentum="high"), "config.json eval.ttt: "),
])
def test_bad_ttt_setting_in_config_is_one_clear_error(scratch_copy, capsys, edit, message):
    path = scratch_copy / "config.json"
    config = json.loads(path.read_text())
    edit(config["eval"]["ttt"])
    path.write_text(json.dumps(config))
    code, lines = cli_verify(scratch_copy, capsys)
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith("ERROR run.py failed (exit 2): ConfigError: " + message)


def test_ttt_settings_without_the_shipped_module_fail_before_decoding(scratch_copy):
    (scratch_copy / TTT_FILE).unlink()
    with pytest.raises(VerifyError, match=r"ConfigError: config.json eval.ttt: .*golf_runtime\.ttt"):
        verify(scratch_copy, BUDGET, DATA, max_tokens=MAX_TOKENS, device="cpu", threads=1)


def test_pack_refuses_bad_ttt_flags_before_writing(tmp_path, capsys):
    out = tmp_path / "sub"
    code = main(["pack", str(CKPT), "--recipe", RECIPE, "--out", str(out), "--ttt", "lora", "--ttt-chunk", "512"])
    assert code == 2 and not out.exists()
    assert "chunk_tokens 512 exceeds seq_len 256" in capsys.readouterr().err
