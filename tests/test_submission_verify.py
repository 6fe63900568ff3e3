"""Submission folders and the fresh-process round trip, on the bundled checkpoint and data.

`golf pack` writes the folder; `golf verify` runs its run.py in a fresh, guarded interpreter and
must score exactly what the packer measured in-process; a tampered blob, a missing shipped
module, an import from the project tree and an over-budget folder must each be caught.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from analysis.cli import main
from artifact.fuzz_cases import join, split
from artifact.container import TensorEntry, read_manifest_checked
from artifact.runtime.errors import ArtifactError
from artifact.pack import pack_state_dict
from artifact.recipe import load_recipe
from artifact.submission import MARKER, RUNTIME_PACKAGE, build_stub, minify_source, runtime_sources, write_submission
from artifact.verify import PROJECT_ROOT, VerifyError, verify
from train.bundled import BUNDLED_CHECKPOINT, BUNDLED_DATA
from artifact.runtime.byte_count import ByteCounter
from artifact.runtime.checkpoint import load_checkpoint, train_seq_len
from artifact.runtime.scoring import eval_flat, load_val
from artifact.runtime.model import GPT
from artifact.runtime.shards import resolve_data

CKPT, DATA = BUNDLED_CHECKPOINT, BUNDLED_DATA
RECIPE = "seed-003"  # round to nearest, no calibration: cheap
MAX_TOKENS = 4096
THREADS = torch.get_num_threads()


def pack(out: Path, *extra: str) -> Path:
    assert main(["pack", str(CKPT), "--recipe", RECIPE, "--out", str(out), "--budget", "track_10min_16mb",
                 *extra]) == 0
    return out


def run_verify(folder: Path, budget="track_10min_16mb"):
    return verify(folder, budget, DATA, max_tokens=MAX_TOKENS, device="cpu", threads=THREADS)


def cli_verify(folder: Path, capsys, *extra: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["verify", str(folder), "--data", str(DATA), "--max-tokens", str(MAX_TOKENS),
                 "--device", "cpu", *extra])
    return code, capsys.readouterr().out.strip().splitlines()[-1]


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    return pack(tmp_path_factory.mktemp("plain") / "sub", "--plain-code")


@pytest.fixture(scope="module")
def compact(tmp_path_factory) -> Path:
    return pack(tmp_path_factory.mktemp("compact") / "sub", "--compact")


@pytest.fixture
def scratch_copy(plain, tmp_path) -> Path:
    copy = tmp_path / "sub"
    shutil.copytree(plain, copy)
    return copy


@pytest.mark.slow
def test_verify_fits_and_scores_exactly_the_packed_weights(plain):
    heard = []
    result = verify(plain, "track_10min_16mb", DATA, max_tokens=MAX_TOKENS, device="cpu", threads=THREADS,
                    progress=lambda done, total, note: heard.append((done, total)))
    assert result.fits and result.line().startswith("FITS total=")
    # the fresh process's scoring progress streamed as it went, ending at its last window
    assert heard and heard[-1][0] == heard[-1][1] > 0 and "golf-progress" not in result.stderr_tail
    shipped = {f["path"]: f["bytes"] for f in json.loads((plain / MARKER).read_text())["files"]}
    assert result.count.total == sum(shipped.values())  # every shipped file, nothing else
    assert {p for p, _, role in result.count.files if role != "not counted"} == set(shipped)
    assert {"run.py", "model.blob", "config.json", f"{RUNTIME_PACKAGE}/__init__.py"} <= set(shipped)
    assert set(runtime_sources()) == set(shipped) - {"model.blob", "config.json"}
    assert f"{RUNTIME_PACKAGE}/ttt.py" not in shipped and "ttt" not in result.run  # TTT ships only with --ttt
    assert json.loads((plain / "config.json").read_text())["eval"] == {"seq_len": train_seq_len(load_checkpoint(CKPT)[2])}
    assert result.run["hashes_ok"] and all("golf-verify-" in p for p in result.run["modules"].values())

    # The same weights evaluated in this process, straight from the packer's PackResult.
    model, cfg, meta = load_checkpoint(CKPT)
    packed = pack_state_dict(model.state_dict(), load_recipe(RECIPE), predict_sizes=False)
    dequant = GPT(cfg)
    dequant.load_state_dict(packed.dequantized, strict=True)
    data = resolve_data(DATA, vocab_size=cfg.vocab_size)
    tokens, _ = load_val(data, cfg.vocab_size)
    counter = ByteCounter.from_sentencepiece(data.tokenizer, cfg.vocab_size)
    local = eval_flat(dequant, tokens[:MAX_TOKENS], counter, train_seq_len(meta) or 1024, device="cpu")
    assert result.run["tokens"] == local.tokens and result.run["bytes"] == local.bytes
    assert abs(result.val_bpb - local.val_bpb) <= 1e-9


@pytest.mark.slow
def test_compact_form_verifies_and_is_smaller(plain, compact):
    assert sorted(folder_bytes(compact)) == ["config.json", "model.blob", "run.py", MARKER]
    assert (compact / "model.blob").read_bytes() == (plain / "model.blob").read_bytes()
    small, big = run_verify(compact), run_verify(plain)
    assert small.fits and small.count.code_bytes < big.count.code_bytes / 2
    assert small.count.total < big.count.total
    assert small.val_bpb == big.val_bpb  # same blob, same weights, same score
    assert set(small.run["modules"]) == set(big.run["modules"])  # the same modules, served from the stub


@pytest.mark.slow
def test_two_packs_are_byte_identical(plain, compact, tmp_path):
    again = folder_bytes(pack(tmp_path / "again", "--plain-code"))
    assert again == folder_bytes(plain)
    assert folder_bytes(pack(tmp_path / "again_compact", "--compact")) == folder_bytes(compact)


def test_tampered_blob_is_an_error(scratch_copy, capsys):
    blob = scratch_copy / "model.blob"
    data = bytearray(blob.read_bytes())
    _, first_stream = read_manifest_checked(bytes(data))
    data[first_stream + 5] ^= 0x10  # one bit inside a tensor stream, nothing fixed up
    blob.write_bytes(bytes(data))
    code, last = cli_verify(scratch_copy, capsys)
    assert code == 2 and last == "ERROR model.blob: differs from what golf packed (SHA-256 in submission.json)"
    (scratch_copy / MARKER).unlink()  # without golf's record, golf's decoder still refuses it
    code, last = cli_verify(scratch_copy, capsys)
    assert code == 2 and last.startswith("ERROR") and "checksum mismatch" in last


def test_tensor_hash_mismatch_is_an_error_even_with_a_valid_checksum(scratch_copy):
    # Edit the manifest's hash of one tensor and rebuild the header and trailer (and drop
    # submission.json): only the per-tensor hash check can notice.
    blob = scratch_copy / "model.blob"
    manifest, streams = split(blob.read_bytes())
    victim = manifest["T"][0]
    victim["h"] = "0" * 16
    blob.write_bytes(join(manifest, streams))
    (scratch_copy / MARKER).unlink()
    with pytest.raises(VerifyError, match=f"tensor {victim['n']}: hash mismatch"):
        run_verify(scratch_copy)


@pytest.mark.slow
def test_over_budget_prints_over_and_exits_1(plain, capsys):
    code, last = cli_verify(plain, capsys, "--budget", "50000")
    assert code == 1
    assert last.startswith("OVER total=") and "limit=50,000 over_by=" in last and "val_bpb=" in last


def test_missing_shipped_module_fails_instead_of_falling_back(scratch_copy, capsys):
    (scratch_copy / RUNTIME_PACKAGE / "model.py").unlink()
    code, last = cli_verify(scratch_copy, capsys)
    assert code == 2 and "golf_runtime/model.py is listed in submission.json" in last
    (scratch_copy / MARKER).unlink()  # not packed by golf: the run itself must fail
    code, last = cli_verify(scratch_copy, capsys)
    # Either the module is simply missing, or (where the project is installed, e.g. editable) the
    # import guard refuses the installed copy: never a silent fallback to the project's model.py.
    assert code == 2 and last.startswith("ERROR")
    assert f"No module named '{RUNTIME_PACKAGE}.model'" in last


def test_import_from_the_project_tree_is_refused(scratch_copy):
    # A run.py that reaches for the installed project instead of its shipped runtime must be
    # stopped by the import guard, not quietly served the repository's modules.
    shutil.rmtree(scratch_copy / RUNTIME_PACKAGE)
    (scratch_copy / MARKER).unlink()
    entry = scratch_copy / "run.py"
    entry.write_text(f"import sys; sys.path.append({str(PROJECT_ROOT)!r})\n"
                     "from artifact.runtime.run import main\nsys.exit(main())\n")
    with pytest.raises(VerifyError, match="import guard: module 'artifact' would come from the project"):
        run_verify(scratch_copy)


def test_inspect_lists_every_tensor(plain, capsys):
    capsys.readouterr()
    assert main(["inspect", str(plain), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    model, _, _ = load_checkpoint(CKPT)
    assert [r["name"] for r in report["tensors"]] == list(model.state_dict())
    assert report["totals"]["blob_bytes"] == (plain / "model.blob").stat().st_size
    assert all(r["bits_per_weight"] > 0 and r["scheme"] for r in report["tensors"])
    assert main(["inspect", str(plain / "model.blob")]) == 0
    assert "tok_emb.weight" in capsys.readouterr().out


def _tiny_entries() -> list[TensorEntry]:
    w = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    return [TensorEntry("w", (3, 4), "float32", passthrough=w.astype(np.float16), codec="zlib-9")]


def test_write_submission_is_atomic_and_never_clobbers_a_foreign_folder(tmp_path):
    out = tmp_path / "sub"
    first = write_submission(out, _tiny_entries(), {"vocab_size": 8}, {"seq_len": 4})
    assert sorted(f["path"] for f in first["files"]) == sorted(["config.json", "model.blob", *runtime_sources()])
    (out / "stale.txt").write_text("from an older pack")
    write_submission(out, _tiny_entries(), {"vocab_size": 8}, {"seq_len": 8})  # replaces it
    assert not (out / "stale.txt").exists() and json.loads((out / "config.json").read_text())["eval"]["seq_len"] == 8
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ArtifactError, match="not a previous submission"):
        write_submission(foreign, _tiny_entries(), {}, {})
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "sub"]  # no temp folders left


def test_minified_sources_behave_the_same_and_the_stub_is_deterministic():
    source = '"""Module doc."""\n\ndef f(x):\n    """Only a docstring."""\n\n\ndef g(x):  # a comment\n' \
             '    """Doc."""\n    return [f"{i!r}:{x}" for i in range(x)]\n\n\nclass C:\n    """Doc."""\n'
    small = minify_source(source)
    assert '"""' not in small and "#" not in small and len(small) < len(source)
    env_a, env_b = {}, {}
    exec(source, env_a)
    exec(small, env_b)
    assert env_a["g"](3) == env_b["g"](3) and env_b["f"](1) is None and isinstance(env_b["C"](), object)
    sources = {"run.py": "print('hi')\n", "pkg/__init__.py": "", "pkg/m.py": source}
    assert build_stub(sources) == build_stub(dict(reversed(sources.items())))
