"""Failing CLI cases end in one clear line and a non-zero exit, overwrite nothing golf did not
write, and leave nothing behind (nor a traceback)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from analysis.cli import main
from artifact.fuzz_cases import join, split
from artifact.container import TensorEntry
from artifact.runtime.errors import FileError
from artifact.runtime.files import replace_folder
from train.bundled import BUNDLED_CHECKPOINT

ROOT = Path(__file__).resolve().parents[1]


def run_cli(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str, command: str) -> str:
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith(f"golf {command}: error: ") and "Traceback" not in err, err
    return lines[-1]


def tree(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_ctrl_c_while_starting_is_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "analysis.cli", "--version"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.6)  # inside the imports (torch takes seconds)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the imports finished before the signal (an unusually fast machine)")
    assert proc.returncode == 130 and err.strip() == "golf: interrupted", err


def test_fit_refuses_a_users_folder_before_any_work(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "recipe.toml").write_text("# my own recipe\n")
    before = tree(out)
    code, _, err = run_cli(capsys, "fit", "--out", out, "--cache", tmp_path / "cache")
    line = one_error_line(err, "fit")
    assert code == 2 and "is not a previous fit" in line and "recipe.toml" in line
    assert tree(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no cache made


def test_fit_refuses_an_unwritable_cache_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    code, _, err = run_cli(capsys, "fit", "--out", tmp_path / "out", "--cache", blocker / "cache", "--dry-run")
    line = one_error_line(err, "fit")
    assert code == 2 and "cannot write the measurement cache" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_pack_over_budget_exits_1_with_an_over_line(tmp_path, capsys):
    code, out, _ = run_cli(capsys, "pack", BUNDLED_CHECKPOINT, "--recipe", "seed-003", "--out", tmp_path / "sub",
                           "--budget", "1000")
    assert code == 1 and out.strip().splitlines()[-1].startswith("OVER total=")


def test_pack_refuses_missing_data_even_without_calibration(tmp_path, capsys):
    code, _, err = run_cli(capsys, "pack", BUNDLED_CHECKPOINT, "--recipe", "seed-003", "--out", tmp_path / "sub",
                           "--data", tmp_path / "nonexistent")
    assert code == 2 and "nonexistent: no such data folder" in one_error_line(err, "pack")
    assert list(tmp_path.iterdir()) == []


def test_inspect_of_an_entry_without_bits_is_one_line(tmp_path, capsys):
    from artifact.container import build_blob

    e = TensorEntry("w", (4, 4), "float32", np.ones((4, 4), np.int8), np.ones(4, np.float16), codec="ans", bits=2)
    m, streams = split(build_blob([e]))
    del m["T"][0]["b"]
    (tmp_path / "m.blob").write_bytes(join(m, streams))
    code, _, err = run_cli(capsys, "inspect", tmp_path / "m.blob")
    assert code == 2 and "tensor w: unknown or missing field(s) ['b']" in one_error_line(err, "inspect")


def test_a_failed_folder_swap_leaves_the_old_folder_and_nothing_else(tmp_path, monkeypatch):
    out = tmp_path / "sub"
    out.mkdir()
    (out / "a.txt").write_text("previous")
    real = os.replace

    def failing(src, dst):
        if Path(src).name.startswith(".sub.tmp-"):  # the new folder cannot take the name
            raise OSError(30, "Read-only file system")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(FileError, match="sub: cannot write the folder: Read-only file system"):
        replace_folder(out, lambda tmp: (tmp / "b.txt").write_text("new"))
    assert tree(out) == {"a.txt": b"previous"} and [p.name for p in tmp_path.iterdir()] == ["sub"]
