"""`golf record`: the challenge's records folder from a script, train logs and model files.

The logs here are written in the line formats the challenge's scripts print (the baseline's
`step:N/M … step_avg:Xms` and `final_…_exact` lines; later records' `N/M val_loss: …`,
`stopping_early: … step: N/M`, `Total submission size …` and `total_eval_time:` lines), with
figures chosen for the test.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from analysis.cli import main
from artifact.record import SUBMISSION, RecordSpec, significance, write_record
from artifact.runtime.errors import GolfError
from artifact.train_log import parse_log

BASELINE_STYLE = """Hyperparameters and code would be here
seed:{seed}
step:0/20000 val_loss:6.9357 val_bpb:4.1077 train_time:0ms step_avg:0.02ms
step:1/20000 train_loss:6.9370 train_time:98ms step_avg:97.57ms
step:13700/20000 train_loss:2.0323 train_time:596577ms step_avg:43.55ms
step:13780/20000 val_loss:2.0606 val_bpb:1.2172 train_time:600038ms step_avg:43.54ms
stopping_early: wallclock_cap train_time:600038ms step:13780/20000
Serialized model: 67224983 bytes
Code size: 47642 bytes
Total submission size: 67272625 bytes
Serialized model int8+zlib: 15815847 bytes (payload:17178912 raw_torch:17224025 payload_ratio:3.91x)
Total submission size int8+zlib: 15863489 bytes
final_int8_zlib_roundtrip val_loss:2.0727 val_bpb:1.2244 eval_time:1401ms
final_int8_zlib_roundtrip_exact val_loss:{loss} val_bpb:{bpb}
"""

RECENT_STYLE = """Hyperparameters:
  adam_eps: 1e-08
  seed: {seed}
warmup_step: 20/20
1/20000 train_loss: 9.0087 train_time: 0.0m tok/s: 17921784
4500/20000 train_loss: 2.2771 train_time: 9.0m tok/s: 6589668
4945/20000 val_loss: 2.3539 val_bpb: 1.0756
stopping_early: wallclock_cap train_time: 599592ms step: 4945/20000
diagnostic pre-quantization post-ema val_loss:2.32848665 val_bpb:1.06395844 eval_time:6718ms
Code size (uncompressed): 157868 bytes
Code size (compressed): 31999 bytes
Serialized model quantized+brotli: 15865260 bytes
Total submission size quantized+brotli: 15897259 bytes
diagnostic quantized val_loss:2.34727563 val_bpb:1.07254371 eval_time:49995ms
quantized_ttt_phased val_loss:{loss} val_bpb:{bpb} eval_time:508785ms
total_eval_time:508.8s
"""

SEEDS = {42: (2.31944212, 1.05989454), 0: (2.32239991, 1.06124613), 1234: (2.32423994, 1.06208695)}


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def test_baseline_style_log(tmp_path):
    log = write(tmp_path / "train.log", BASELINE_STYLE.format(seed=1337, loss="2.07269931", bpb="1.22436570"))
    f = parse_log(log)
    assert f.seed == 1337 and f.code_bytes == 47642
    assert f.figures == {"val_loss": 2.07269931, "val_bpb": 1.2243657, "steps": 13780, "step_avg_ms": 43.54,
                         "artifact_bytes": 15863489, "eval_time_s": 1.401}
    # the final (exact) score line, the eval time of the last score line that has one
    assert f.sources["val_loss"][0] == 14 and f.sources["eval_time_s"][0] == 13
    assert f.sources["steps"][1].startswith("stopping_early")


def test_recent_style_log(tmp_path):
    log = write(tmp_path / "train_seed7.log", RECENT_STYLE.format(seed=42, loss="2.31944212", bpb="1.05989454"))
    f = parse_log(log)
    assert f.seed == 42  # the log's own seed line wins over the file name
    assert f.figures == {"val_loss": 2.31944212, "val_bpb": 1.05989454, "steps": 4945,
                         "step_avg_ms": round(599592 / 4945, 2), "artifact_bytes": 15897259, "eval_time_s": 508.8}
    assert f.code_bytes == 31999  # the last "Code size" line
    bare = write(tmp_path / "run_seed1234.txt", "1000/1000 val_loss: 2.5 val_bpb: 1.2\n")
    g = parse_log(bare)
    assert g.seed == 1234 and g.figures == {"val_loss": 2.5, "val_bpb": 1.2, "steps": 1000}


def spec_for(tmp_path: Path, **extra) -> RecordSpec:
    script = write(tmp_path / "in" / "my_train.py", "print('train')\n" * 100)
    codec = write(tmp_path / "in" / "golf_codec.py", "# golf codec\n" + "x = 1\n" * 50)
    logs, blobs = [], []
    for seed, (loss, bpb) in SEEDS.items():
        logs.append((None, write(tmp_path / "in" / f"train_seed{seed}.log",
                                 RECENT_STYLE.format(seed=seed, loss=f"{loss:.8f}", bpb=f"{bpb:.8f}"))))
        blobs.append((seed, write(tmp_path / "in" / f"model_{seed}.ptz", bytes(1_000_000 + seed))))
    base = dict(out=tmp_path / "record", script=script, author="A. Golfer", github_id="golfer", name="Test record",
                blurb="A test.", date="2026-05-01", code_files=[codec],
                extra_files=[write(tmp_path / "in" / "requirements.txt", "brotli\n")], logs=logs, blobs=blobs,
                sota_val_loss=2.36562)
    return RecordSpec(**{**base, **extra})


def test_three_seeds_make_the_challenges_folder(tmp_path):
    spec = spec_for(tmp_path)
    result = write_record(spec)
    out = spec.out
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["README.md", "submission.json", "golf.json", "train_gpt.py", "golf_codec.py", "requirements.txt",
         "train_seed42.log", "train_seed0.log", "train_seed1234.log"])
    assert (out / "train_gpt.py").read_bytes() == spec.script.read_bytes()
    sub = json.loads((out / SUBMISSION).read_text())
    assert list(sub) == ["author", "github_id", "name", "blurb", "date", "track", "val_loss", "val_bpb",
                         "val_loss_std", "val_bpb_std", "seeds", "seed_results"]
    assert sub["seeds"] == [42, 0, 1234] and sub["track"] == "10min_16mb"
    losses = [loss for loss, _ in SEEDS.values()]
    assert sub["val_loss"] == round(sum(losses) / 3, 8)
    mean = sum(losses) / 3
    assert sub["val_loss_std"] == round(math.sqrt(sum((x - mean) ** 2 for x in losses) / 2), 8)
    code = len(spec.script.read_bytes()) + len(spec.code_files[0].read_bytes())
    for seed, res in sub["seed_results"].items():
        assert list(res) == ["val_loss", "val_bpb", "artifact_bytes", "steps", "step_avg_ms", "eval_time_s"]
        assert res["artifact_bytes"] == code + 1_000_000 + int(seed)  # code + model, counted by golf
        assert (res["val_loss"], res["val_bpb"]) == SEEDS[int(seed)] and res["eval_time_s"] == 508.8
    facts = json.loads((out / "golf.json").read_text())
    assert facts["format"] == "golf-record" and facts["code_bytes"] == code
    assert facts["files"]["requirements.txt"]["role"] == "not counted"
    assert facts["seeds"]["42"]["log_artifact_bytes"] == 15897259
    readme = (out / "README.md").read_text()
    assert "| train_gpt.py | 1,500 | code |" in readme and f"**{code:,}**" in readme
    t = facts["significance"]
    # an independent check of the p-value: Student t with 2 degrees of freedom has the closed form
    # P(T <= t) = 1/2 + t / (2 sqrt(2 + t^2))
    assert t["df"] == 2 and t["p_value"] == pytest.approx(0.5 + t["t"] / (2 * math.sqrt(2 + t["t"] ** 2)), rel=1e-9)
    assert t["significant"] and f"p = {t['p_value']:.3g}" in readme
    assert result["submission"] == sub


def test_without_model_files_the_model_comes_from_the_log(tmp_path):
    spec = spec_for(tmp_path, blobs=[])
    sub = write_record(spec)["submission"]
    code = len(spec.script.read_bytes()) + len(spec.code_files[0].read_bytes())
    # the log's total counts its code as 31,999 compressed bytes; the folder's code is what counts
    assert sub["seed_results"]["42"]["artifact_bytes"] == code + 15897259 - 31999


def test_significance_is_the_one_sided_t_test():
    t = significance([2.30, 2.31, 2.32], 2.40)
    assert t.threshold == pytest.approx(2.395) and t.t < 0 and t.p_value < 0.01 and t.significant
    assert not significance([2.30, 2.31, 2.32], 2.31).significant
    one = significance([2.3], 2.4)
    assert one.p_value is None and not one.significant
    same = significance([2.3, 2.3], 2.4)
    assert same.p_value == 0.0 and same.t == -math.inf


def test_one_seed_has_no_std_and_no_test(tmp_path, capsys):
    spec = spec_for(tmp_path)
    spec.logs, spec.blobs = spec.logs[:1], [(None, spec.blobs[0][1])]
    sub = write_record(spec)["submission"]
    assert "val_loss_std" not in sub and sub["seeds"] == [42]
    assert "needs at least two seeds" in (spec.out / "README.md").read_text()


def test_bad_inputs_are_one_clear_error(tmp_path):
    spec = spec_for(tmp_path)
    nameless = write(tmp_path / "in" / "run.log", "100/100 val_loss: 2.5 val_bpb: 1.2\n")
    with pytest.raises(GolfError, match="names no seed"):
        write_record(spec_for(tmp_path, logs=[(None, nameless)], blobs=[]))
    with pytest.raises(GolfError, match=r"artifact_bytes, step_avg_ms, eval_time_s not found.*--figure 5\.artifact_bytes"):
        write_record(spec_for(tmp_path, logs=[(5, nameless)], blobs=[]))
    fixed = write_record(spec_for(tmp_path, logs=[(5, nameless)], blobs=[],
                                  figures={5: {"artifact_bytes": 15e6, "step_avg_ms": 90.0, "eval_time_s": 100.0}}))
    assert fixed["submission"]["seed_results"]["5"]["artifact_bytes"] == 15_000_000
    with pytest.raises(GolfError, match="pair each model file"):
        write_record(spec_for(tmp_path, blobs=[(None, spec.blobs[0][1])]))
    with pytest.raises(GolfError, match="log says seed 42"):
        write_record(spec_for(tmp_path, logs=[(7, spec.logs[0][1])], blobs=[]))
    foreign = tmp_path / "not_ours"
    write(foreign / "notes.txt", "keep me")
    with pytest.raises(GolfError, match="refusing to overwrite"):
        write_record(spec_for(tmp_path, out=foreign))
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_the_command_prints_the_summary_and_replaces_its_own_folder(tmp_path, capsys):
    spec = spec_for(tmp_path)
    args = ["record", str(spec.out), "--script", str(spec.script), "--code-file", str(spec.code_files[0]),
            "--author", "A. Golfer", "--github-id", "golfer", "--name", "Test record", "--date", "2026-05-01",
            "--sota-val-loss", "2.36562", "--figure", "42.eval_time_s=500.5"]
    for seed, path in spec.logs:
        args += ["--log", str(path)]
    for seed, path in spec.blobs:
        args += ["--blob", f"{seed}={path}"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "significant at p < 0.01" in text and "fits" in text
    assert main(args + ["--json"]) == 0  # the folder it wrote is replaced
    report = json.loads(capsys.readouterr().out)
    assert report["submission"]["seed_results"]["42"]["eval_time_s"] == 500.5
    assert report["facts"]["seeds"]["42"]["figure_sources"]["eval_time_s"] == "flag"
    assert main(args[:-2] + ["--figure", "42.nonsense=1"]) == 2
    assert "unknown figure" in capsys.readouterr().err
