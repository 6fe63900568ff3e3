"""The tamper suite: submissions built to fool `golf verify`, each of which must end in ERROR; and
the containment of the code verify runs (environment, HOME, writes, network, memory, CPU, time).

Every tampered folder gets a fresh, consistent submission.json (`reseal`): the attacker can
rewrite golf's record too, so what catches each case is a deeper check, named in the table.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest

from analysis.cli import main
from artifact.fuzz_cases import join, split
from artifact.budget import count_submission, resolve_budget
from artifact.container import TensorEntry, build_blob
from artifact.runtime.decoder import decode
from artifact.submission import MARKER
from artifact.verify import verify
from train.bundled import BUNDLED_CHECKPOINT, BUNDLED_DATA
from train.data_build import build_dataset

BUDGET = "track_10min_16mb"
MAX_TOKENS = 2048
SAMPLE = Path(__file__).parent / "data" / "sample"


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tamper") / "sub"
    assert main(["pack", str(BUNDLED_CHECKPOINT), "--recipe", "seed-003", "--out", str(out), "--budget", BUDGET,
                 "--plain-code"]) == 0
    return out


@pytest.fixture(scope="module")
def zeroed_blob(packed, tmp_path_factory) -> bytes:
    """model.blob's structure with every weight zero (a valid blob golf's decoder accepts)."""
    m, _ = split((packed / "model.blob").read_bytes())
    weights = decode(packed / "model.blob")
    return build_blob([TensorEntry(t["n"], tuple(t["s"]), t["d"], passthrough=np.zeros_like(weights[t["n"]]),
                                   codec="zlib-9") for t in m["T"]])


@pytest.fixture(scope="module")
def small_tokenizer_data(tmp_path_factory) -> Path:
    """The bundled data with its tokenizer swapped for a 512-piece one under the same file name."""
    built = tmp_path_factory.mktemp("tok512") / "built"
    build_dataset(SAMPLE, built, vocab_size=512, val_docs=4, name="golf")
    root = tmp_path_factory.mktemp("swapped") / "data"
    shutil.copytree(BUNDLED_DATA, root)
    shutil.copy(built / "tokenizers" / "golf_512_bpe.model", root / "tokenizers" / "golf_1024_bpe.model")
    return root


def reseal(folder: Path) -> None:
    """Rewrite golf's submission.json to list the folder's counted files as they are now."""
    marker = folder / MARKER
    record = json.loads(marker.read_text())
    count = count_submission(folder, resolve_budget(BUDGET))
    record["files"] = [{"path": rel, "bytes": size, "sha256": hashlib.sha256((folder / rel).read_bytes()).hexdigest()}
                       for rel, size, role in count.files if role != "not counted"]
    marker.write_text(json.dumps(record))


def entry(folder: Path, code: str) -> None:
    """Replace run.py with `code` (the shipped golf_runtime package stays beside it)."""
    (folder / "run.py").write_text(textwrap.dedent(code))


def smuggled_relative(folder: Path, zeroed: bytes) -> None:
    # the real weights in a not-counted log file, read by run.py; model.blob all zeros
    shutil.copy(folder / "model.blob", folder / "train_log_w.txt")
    (folder / "model.blob").write_bytes(zeroed)
    entry(folder, """
        import os, shutil, sys
        D = os.path.dirname(os.path.abspath(__file__))
        sys.path.insert(0, D)
        shutil.copy(os.path.join(D, "train_log_w.txt"), os.path.join(D, "model.blob"))
        from golf_runtime.run import main
        sys.exit(main(folder=D))
    """)


def smuggled_absolute(folder: Path, zeroed: bytes) -> None:
    # the same, but run.py reads the log from the ORIGINAL folder's absolute path (not the copy)
    shutil.copy(folder / "model.blob", folder / "train_log_w.txt")
    (folder / "model.blob").write_bytes(zeroed)
    entry(folder, f"""
        import os, sys
        D = os.path.dirname(os.path.abspath(__file__))
        sys.path.insert(0, D)
        import golf_runtime.run as run
        real = run.decode
        run.decode = lambda path: real({str(folder / "train_log_w.txt")!r})
        sys.exit(run.main(folder=D))
    """)


def lying_fabricated(folder: Path, zeroed: bytes) -> None:
    # run.py scores nothing and prints a made-up result line, modules and all
    entry(folder, """
        import json, os, sys
        D = os.path.dirname(os.path.abspath(__file__))
        mods = {f"golf_runtime.{m}": os.path.join(D, "golf_runtime", m + ".py")
                for m in ("decoder", "model", "scoring", "run")}
        print(json.dumps({"hashes_ok": True, "n_tensors": 42, "val_bpb": 1.0, "val_loss": 1.7, "tokens": 1920,
                          "bytes": 4000, "mode": "flat", "seq_len": 128, "stride": None, "device": "cpu",
                          "decode_seconds": 0.01, "eval_seconds": 0.1, "modules": mods}))
    """)


def lying_better_figure(folder: Path, zeroed: bytes) -> None:
    # run.py scores honestly, then reports a val_bpb 0.05 better than it earned
    entry(folder, """
        import io, json, os, sys, contextlib
        D = os.path.dirname(os.path.abspath(__file__))
        sys.path.insert(0, D)
        from golf_runtime.run import main
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            code = main(folder=D)
        out = json.loads(buf.getvalue().strip().splitlines()[-1])
        out["val_bpb"] -= 0.05
        out["val_loss"] -= 0.05
        print(json.dumps(out))
        sys.exit(code)
    """)


def scores_other_weights(folder: Path, zeroed: bytes) -> None:
    # run.py decodes the blob, then scores slightly different weights (and reports that honestly)
    entry(folder, """
        import os, sys
        D = os.path.dirname(os.path.abspath(__file__))
        sys.path.insert(0, D)
        import golf_runtime.run as run
        real = run.decode
        def tweaked(path):
            w = real(path)
            w["tok_emb.weight"] = w["tok_emb.weight"] * 1.01
            return w
        run.decode = tweaked
        sys.exit(run.main(folder=D))
    """)


def renamed_tensors(folder: Path, zeroed: bytes) -> None:
    # the names of two same-shape tensors swapped, the checksum (trailer) recomputed
    m, streams = split((folder / "model.blob").read_bytes())
    a, b = (i for i, t in enumerate(m["T"]) if t["n"] in ("blocks.0.attn.c_q.weight", "blocks.0.attn.proj.weight"))
    m["T"][a]["n"], m["T"][b]["n"] = m["T"][b]["n"], m["T"][a]["n"]
    (folder / "model.blob").write_bytes(join(m, streams))


def edited_config(folder: Path, zeroed: bytes) -> None:
    # config.json says one layer fewer: the decoded state no longer fits the model built
    config = json.loads((folder / "config.json").read_text())
    config["model"]["num_layers"] -= 1
    (folder / "config.json").write_text(json.dumps(config))


TAMPER_CASES = {
    "smuggled weights in a not-counted file (relative path)": (smuggled_relative, None),
    "smuggled weights in a not-counted file (absolute path)": (smuggled_absolute, None),
    "lying run.py: a made-up result line": (lying_fabricated, None),
    "lying run.py: a better figure than it scored": (lying_better_figure, None),
    "run.py scores weights other than model.blob's": (scores_other_weights, None),
    "renamed tensors (checksum recomputed)": (renamed_tensors, None),
    "edited config.json": (edited_config, None),
    "tokenizer swap (512 pieces for the 1024-vocab data)": (None, "small_tokenizer_data"),
}


@pytest.mark.parametrize("case", list(TAMPER_CASES))
def test_tampered_submissions_end_in_error(case, packed, zeroed_blob, tmp_path, request, capsys):
    build, data = TAMPER_CASES[case]
    folder = tmp_path / "sub"
    shutil.copytree(packed, folder)
    if build is not None:
        build(folder, zeroed_blob)
        reseal(folder)
    data_dir = request.getfixturevalue(data) if data else BUNDLED_DATA
    capsys.readouterr()
    code = main(["verify", str(folder), "--data", str(data_dir), "--max-tokens", str(MAX_TOKENS), "--device", "cpu"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    print(f"\nTAMPER | {case} | exit {code} | {last}")
    assert code == 2 and last.startswith("ERROR "), last


# ------------------------------------------------------------------- containment
@pytest.fixture(scope="module")
def fences(tmp_path_factory) -> dict:
    """What the harness can enforce on this machine (a throwaway process confines itself)."""
    import subprocess
    import sys

    from artifact.contain import HARNESS_SOURCE

    box = tmp_path_factory.mktemp("probe")
    code = HARNESS_SOURCE + (f"\nprint(json.dumps(confine({str(box)!r}, "
                             "{'memory_bytes': 1 << 33, 'cpu_seconds': 60, 'file_bytes': 1 << 20})))\n")
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_the_run_sees_no_secrets_no_network_and_cannot_write_outside(packed, tmp_path, monkeypatch, fences):
    if fences["not enforced"]:
        pytest.skip(f"this OS does not offer: {', '.join(fences['not enforced'])} (verify reports it)")
    outside = tmp_path / "outside.txt"
    monkeypatch.setenv("GOLF_TEST_SECRET", "hunter2")
    folder = tmp_path / "sub"
    shutil.copytree(packed, folder)
    (folder / MARKER).unlink()
    entry(folder, f"""
        import os, socket, sys
        D = os.path.dirname(os.path.abspath(__file__))
        problems = []
        if "GOLF_TEST_SECRET" in os.environ:
            problems.append("secret visible")
        if not os.environ.get("HOME", "/").startswith(os.path.dirname(D)):
            problems.append("HOME is " + os.environ.get("HOME", "?"))
        for target in ({str(outside)!r}, os.path.expanduser("~") + "/../../escape.txt"):
            try:
                open(target, "w").write("x")
                problems.append("wrote " + target)
            except OSError:
                pass
        try:
            socket.create_connection(("1.1.1.1", 53), timeout=2)
            problems.append("network reachable")
        except OSError:
            pass
        open(os.path.join(D, "scratch.txt"), "w").write("its own folder is writable")
        if problems:
            sys.exit("; ".join(problems))
        sys.path.insert(0, D)
        from golf_runtime.run import main
        sys.exit(main(folder=D))
    """)
    result = verify(folder, BUDGET, BUNDLED_DATA, max_tokens=MAX_TOKENS, device="cpu")
    assert result.fits and not outside.exists()
    c = result.containment
    assert c["not enforced"] == [] and "network namespace" in c["network"] and "landlock" in c["writes"]


@pytest.mark.parametrize("hog, flags, message", [
    ("import numpy; x = numpy.ones(3 * 10**9 // 8); x[::4096] = 2", ["--max-memory", "1.5"], "MemoryError"),
    ("while True: pass", ["--max-cpu", "3"], "killed by SIGXCPU (its CPU-time limit)"),
    ("import subprocess; subprocess.Popen(['sleep', '600']); import time; time.sleep(600)", ["--timeout", "20"],
     "did not finish within 20 s"),
])
def test_limits_end_a_runaway_run_in_error(hog, flags, message, packed, tmp_path, capsys):
    folder = tmp_path / "sub"
    shutil.copytree(packed, folder)
    (folder / MARKER).unlink()
    entry(folder, hog + "\n")
    capsys.readouterr()
    code = main(["verify", str(folder), "--data", str(BUNDLED_DATA), "--max-tokens", str(MAX_TOKENS),
                 "--device", "cpu", *flags])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert code == 2 and last.startswith("ERROR") and message in last, last


def test_untampered_copy_fits_with_either_rescore(packed):
    # the control (the same folder untouched FITS, so the cases above fail for their tampering),
    # re-scored here and in a contained child (the path of a model whose code ships in the folder)
    here = verify(packed, BUDGET, BUNDLED_DATA, max_tokens=MAX_TOKENS, device="cpu", threads=1)
    assert here.fits and here.line().startswith("FITS ")
    there = verify(packed, BUDGET, BUNDLED_DATA, max_tokens=MAX_TOKENS, device="cpu", threads=1,
                   rescore_contained=True)
    assert there.score == here.score and there.line() == here.line()


def test_verify_leaves_no_process_behind(packed, tmp_path, fences):
    if "processes" not in fences:
        pytest.skip("no PID namespace on this OS: a process that leaves its session may outlive verify")
    folder = tmp_path / "sub"
    shutil.copytree(packed, folder)
    (folder / MARKER).unlink()
    marker = f"golf-stray-{os.getpid()}"
    entry(folder, f"""
        import os, subprocess, sys
        subprocess.Popen(["sh", "-c", "exec -a {marker} sleep 300"], start_new_session=True)
        D = os.path.dirname(os.path.abspath(__file__))
        sys.path.insert(0, D)
        from golf_runtime.run import main
        sys.exit(main(folder=D))
    """)
    verify(folder, BUDGET, BUNDLED_DATA, max_tokens=MAX_TOKENS, device="cpu")
    alive = [p for p in os.listdir("/proc") if p.isdigit() and _cmdline(p).startswith(marker)]
    assert alive == []


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_a_mismatched_tokenizer_is_an_error_for_eval_too(small_tokenizer_data, capsys):
    capsys.readouterr()
    code = main(["eval", str(BUNDLED_CHECKPOINT), "--data", str(small_tokenizer_data), "--max-tokens", "4096"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "tokenizer has 512 pieces but the dataset" in err
    dataset = small_tokenizer_data / "datasets" / "golf_sp1024"
    bare = small_tokenizer_data.parent / "bare"  # a dataset folder that does not declare its vocab
    bare.mkdir(exist_ok=True)
    for f in dataset.iterdir():
        shutil.copy(f, bare / f.name.replace("golf_", "x_"))
    shutil.copy(small_tokenizer_data / "tokenizers" / "golf_1024_bpe.model", bare / "x.model")
    code = main(["eval", str(BUNDLED_CHECKPOINT), "--data", str(bare), "--max-tokens", "4096"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "has no piece in" in err and "512 pieces" in err
