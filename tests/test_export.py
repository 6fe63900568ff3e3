"""`golf export`: one self-contained file that packs and unpacks by a recipe, checked against golf.

On the bundled checkpoint (a record-1855 recipe, through `golf pack` itself) and on a model golf
does not define (tests/llama_style_model.py, a recipe using every packing feature), the exported
file runs in a fresh interpreter that cannot import golf (`verify.guarded_command`: the import
guard of `golf verify`) and must give: Hessians bit-identical to golf's calibration, a blob
byte-identical to golf's pack, and tensors bit-identical to golf's decoder. Same machine, same
thread count on both sides, so every figure is compared exactly.
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from analysis.cli import main
from artifact.container import build_blob
from artifact.export import (Export, baked_recipe_source, build_export, export_recipe, is_export,
                             recipe_libraries, write_export)
from artifact.fit import recipe_data, recipe_toml
from artifact.pack import calibrate_for_recipe, pack_state_dict
from artifact.recipe import load_recipe
from artifact.runtime.checkpoint import load_checkpoint
from artifact.runtime.decoder import decode_torch
from artifact.runtime.errors import ConfigError
from artifact.runtime.shards import load_tokens, resolve_data
from artifact.source_bundle import BundleError, bundle, check_bundle
from artifact.submission import write_runtime_package
from artifact.verify import guarded_command
from tests.llama_style_model import LlamaStyle
from train.bundled import BUNDLED_CHECKPOINT, BUNDLED_DATA

THREADS = 2
HERE = Path(__file__).resolve().parent

# The record-1855 recipe with a calibration small enough for a test (the export bakes in whatever
# the recipe says; only the amount of calibration differs from the bundled recipe).
RECORD_CHILD = """extends = "record-1855"
name = "record-1855-small-calibration"
[calibration]
n_seqs = 8
seq_len = 256
"""

# Every packing feature on a model with its own names: GPTQ (plain, damped, grouped), magnitude
# pruning, SDClip, Hessian SDClip, a grouped clip search, ternary codes, a raw passthrough, LQER
# ranked and scaled by the Hessian, ±1 pruning to a byte target, and five codecs (ans with
# numba, brotli, zstd, extreme lzma with a transpose, zlib).
FOREIGN_RECIPE = """name = "export-foreign"
codec = "ans"
scales_codec = "deinterleave2+brotli-11"
passthrough_codec = "deinterleave2+zstd-19"

[[rules]]
match = "layers.*.attention.w[qkv].weight"
bits = 6
clip = "sdclip:12"
gptq = true
prune = 0.02

[[rules]]
match = "layers.*.attention.wo.weight"
bits = 5
clip = "hsdclip:12,0.2"
gptq = { damp = 0.02, block_size = 64 }

[[rules]]
match = "layers.*.feed_forward.w[13].weight"
bits = 4
clip = "search:row"
group_size = 64
gptq = true
codec = "transpose+lzma-2e"

[[rules]]
match = "layers.*.feed_forward.w2.weight"
scheme = "ternary"
group_size = 64
codec = "zlib-9"

[[rules]]
match = "tok_embeddings.weight"
bits = 7
clip = "sdclip:14"
gptq = true

[[rules]]
match = "*norm.weight"
scheme = "raw"

[lqer]
rank = 4
top_k = 2
rank_by = "hessian"
scaling = "diag"

[calibration]
n_seqs = 8
seq_len = 128
output_key = "tok_embeddings.weight"
"""

# Runs in the fresh, guarded interpreter next to golf_codec.py: calibrate, pack, unpack.
DRIVER = r"""
import json, sys
import numpy as np
import torch

torch.set_num_threads(int(sys.argv[2]))
sys.path.insert(0, ".")
import golf_codec as gc

kind = sys.argv[1]
if kind == "bundled":
    from golf_runtime.checkpoint import load_checkpoint
    model = load_checkpoint(sys.argv[3])[0]
else:
    from llama_style_model import LlamaStyle
    model = LlamaStyle()
    model.load_state_dict(torch.load("state.pt", weights_only=True))
model.eval()
batches = gc.calibration_batches(np.load("tokens.npy"))
hessians = gc.collect_hessians(model, batches, output_input=model.hidden)
state = {k: v.detach() for k, v in model.state_dict().items()}
blob = gc.pack(state, hessians)
open("exported.blob", "wb").write(blob)
torch.save(hessians, "hessians.pt")
torch.save(gc.unpack(blob), "unpacked.pt")
leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("artifact", "train", "analysis", "tests"))
print(json.dumps({"recipe": gc.RECIPE.name, "leaked": leaked, "bytes": len(blob)}))
"""


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


def train_tokens():
    paths = resolve_data(BUNDLED_DATA)
    return load_tokens(paths.require_train(), 1024)


def run_exported(folder: Path, export: Export, kind: str, tokens: np.ndarray, *extra: str) -> dict:
    """Write the exported file and the driver into `folder` and run them behind the import guard."""
    write_export(export, folder / "golf_codec.py")
    (folder / "drive.py").write_text(DRIVER)
    cal = export.recipe.calibration
    np.save(folder / "tokens.npy", np.asarray(tokens[: cal.offset + cal.n_seqs * cal.seq_len]))
    proc = subprocess.run(guarded_command("drive.py", [kind, THREADS, *extra]), cwd=folder, capture_output=True,
                          text=True, timeout=900, stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def assert_same_hessians(theirs: dict, ours: dict) -> None:
    assert theirs.keys() == ours.keys()
    for name, h in ours.items():
        if h is None:
            assert theirs[name] is None, name
        else:
            assert theirs[name].dtype == h.dtype and torch.equal(theirs[name], h), name


def assert_unpacks_like_golf(unpacked: dict, blob: bytes) -> None:
    ours = decode_torch(blob)
    assert list(unpacked) == list(ours)
    for name, t in ours.items():
        assert unpacked[name].dtype == t.dtype and torch.equal(unpacked[name], t), name


@pytest.mark.slow
def test_exported_record_recipe_packs_the_bundled_checkpoint_byte_for_byte(tmp_path, threads):
    recipe_file = tmp_path / "record-small.toml"
    recipe_file.write_text(RECORD_CHILD)
    assert main(["pack", str(BUNDLED_CHECKPOINT), "--recipe", str(recipe_file), "--out", str(tmp_path / "sub"),
                 "--budget", "track_10min_16mb"]) == 0
    golf_blob = (tmp_path / "sub" / "model.blob").read_bytes()

    recipe = load_recipe(recipe_file)
    export = build_export(recipe)
    folder = tmp_path / "fresh"
    write_runtime_package(folder, start=("checkpoint",))  # the shipped GPT, copied: importable there
    tokens = train_tokens()
    result = run_exported(folder, export, "bundled", tokens, BUNDLED_CHECKPOINT)
    assert result == {"recipe": recipe.name, "leaked": [], "bytes": len(golf_blob)}
    assert (folder / "exported.blob").read_bytes() == golf_blob

    model = load_checkpoint(BUNDLED_CHECKPOINT)[0]
    golf_hessians = calibrate_for_recipe(model, recipe, tokens, model.hidden)
    assert_same_hessians(torch.load(folder / "hessians.pt", weights_only=True), golf_hessians)
    assert_unpacks_like_golf(torch.load(folder / "unpacked.pt", weights_only=True), golf_blob)


def trained_llama(tokens: np.ndarray, steps: int = 3) -> LlamaStyle:
    """The foreign model after a few Adam steps on real text (weights no longer at their init)."""
    torch.manual_seed(0)
    model = LlamaStyle()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ids = torch.from_numpy(np.asarray(tokens[: 4 * 65], dtype=np.int64)).reshape(4, 65)
    for _ in range(steps):
        opt.zero_grad()
        model(ids[:, :-1], ids[:, 1:]).backward()
        opt.step()
    return model.eval()


@pytest.mark.slow
def test_exported_codec_packs_a_foreign_model_like_golf(tmp_path, threads):
    tokens = train_tokens()
    model = trained_llama(tokens)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    assert state["tok_embeddings.weight"].dtype == torch.bfloat16
    base = load_recipe(_write(tmp_path / "foreign.toml", FOREIGN_RECIPE))
    hessians = calibrate_for_recipe(model, base, tokens, model.hidden)
    natural = len(build_blob(pack_state_dict(state, base, hessians, predict_sizes=False).entries))
    # ±1 pruning to 1% under the natural size: the binary search over real blobs runs too
    recipe = load_recipe(tmp_path / "foreign.toml", {"prune_pm1": {"target_bytes": natural * 99 // 100}})
    packed = pack_state_dict(state, recipe, hessians, predict_sizes=False)
    golf_blob = build_blob(packed.entries)
    assert packed.pm1_pruned > 0 and len(golf_blob) <= natural * 99 // 100 and len(packed.lqer_targets) == 2

    export = build_export(recipe)
    assert export.libraries == ("brotli", "numba", "zstandard")
    folder = tmp_path / "fresh"
    folder.mkdir()
    shutil.copy(HERE / "llama_style_model.py", folder)
    torch.save(state, folder / "state.pt")
    result = run_exported(folder, export, "foreign", tokens)
    assert result == {"recipe": "export-foreign", "leaked": [], "bytes": len(golf_blob)}
    assert (folder / "exported.blob").read_bytes() == golf_blob
    assert_same_hessians(torch.load(folder / "hessians.pt", weights_only=True), hessians)
    unpacked = torch.load(folder / "unpacked.pt", weights_only=True)
    assert_unpacks_like_golf(unpacked, golf_blob)
    assert unpacked["tok_embeddings.weight"].dtype == torch.bfloat16


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_the_recipe_is_baked_in_exactly():
    for name in ("record-1855", "seed-004", "baseline-int8-zlib"):
        recipe = export_recipe(name)
        namespace: dict = {}
        exec(compile(baked_recipe_source(recipe), name, "exec"), namespace)
        baked = namespace["RECIPE"]
        assert baked.name == recipe.name and baked.path is None and baked.description == ""
        assert baked.rules == recipe.rules and baked.lqer == recipe.lqer and baked.default == recipe.default
        assert baked.calibration == recipe.calibration and baked.prune_pm1 == recipe.prune_pm1
        assert (baked.codec, baked.scales_codec, baked.passthrough_codec) == \
            (recipe.codec, recipe.scales_codec, recipe.passthrough_codec)


def test_the_export_bundles_only_what_the_entry_points_reach():
    export = build_export(export_recipe("record-1855"), compact=False)
    modules = set(export.modules)
    assert {"export_entry", "pack", "quant", "gptq", "lqer", "prune", "codec", "container", "calibrate",
            "recipe", "decoder", "format", "errors"} <= modules
    # the measurement, the fit, the CLI, file helpers and the size models are not shipped
    assert modules.isdisjoint({"measure", "fit", "solve", "files", "config", "submission", "pipeline", "cli"})
    text = export.source.decode()
    for gone in ("def pack_state_dict", "def predict_size", "def _row(", "def parse_recipe", "def load_recipe"):
        assert gone not in text, gone
    assert "import brotli" in text and "import zstandard" in text  # inside functions only
    tree = ast.parse(text)
    top = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    top |= {n.module.split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom)}
    assert top == {"sys", "importlib", export.package}  # the plain form's own imports: the finder alone


def test_only_the_codec_libraries_the_recipe_names_are_needed():
    assert recipe_libraries(export_recipe("record-1855")) == ("brotli",)
    assert recipe_libraries(export_recipe("baseline-int8-zlib")) == ()
    assert recipe_libraries(export_recipe("seed-000")) == ("zstandard",)
    compact = build_export(export_recipe("baseline-int8-zlib"))
    assert b"import sys,base64,json,lzma\n" in compact.source and b"brotli" not in compact.source.split(b"S=")[0]


def test_exported_file_is_deterministic_and_smaller_compact(tmp_path):
    recipe = export_recipe("seed-004")
    a, b = build_export(recipe), build_export(recipe)
    plain = build_export(recipe, compact=False)
    assert a.source == b.source
    assert a.bytes < plain.bytes / 2 and a.to_dict()["plain_bytes"] == plain.bytes
    assert plain.to_dict()["compact_bytes"] == a.bytes
    # two exported codecs live side by side in one process (their packages differ)
    assert build_export(export_recipe("record-1855")).package != a.package


def test_export_reads_a_fit_folder_and_prints_its_counted_bytes(tmp_path, capsys):
    fit_dir = tmp_path / "fit"
    fit_dir.mkdir()
    choices = {"blocks.0.attn.qkv.weight": "int6/sdclip:12/gptq/r4/p0/ans",
               "tok_emb.weight": "int8/sdclip:20/gptq/r0/p0.02/brotli-11"}
    (fit_dir / "recipe.toml").write_text(recipe_toml(recipe_data(choices, {"n_seqs": 4, "seq_len": 64})))
    out = tmp_path / "golf_codec.py"
    capsys.readouterr()
    assert main(["export", str(fit_dir), "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["bytes"] == out.stat().st_size and report["recipe"] == "fit" and report["compact"]
    assert report["libraries"] == ["brotli", "numba"] and is_export(out)
    text = out.read_bytes()
    assert main(["export", str(fit_dir), "--out", str(out)]) == 0  # a previous export is replaced
    line = capsys.readouterr().out
    assert f"{len(text):,} bytes" in line and out.read_bytes() == text


def test_export_refuses_to_overwrite_a_foreign_file_and_bad_input(tmp_path, capsys):
    script = tmp_path / "train_gpt.py"
    script.write_text("print('my training script')\n")
    assert main(["export", "record-1855", "--out", str(script)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert script.read_text() == "print('my training script')\n"
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "x.py")]) == 2
    assert "no recipe.toml" in capsys.readouterr().err
    assert main(["export", "no-such-recipe", "--out", str(tmp_path / "x.py")]) == 2
    with pytest.raises(ConfigError):
        export_recipe(tmp_path / "missing.toml")


def test_the_bundle_check_catches_a_name_pruned_away():
    with pytest.raises(BundleError, match="undefined names"):
        check_bundle({"a": "def f():\n    return helper() + 1\n"})
    with pytest.raises(BundleError, match="does not define"):
        check_bundle({"a": "from .b import g\n", "b": "def f():\n    return 1\n"})
    with pytest.raises(BundleError, match="does not define"):
        check_bundle({"a": "from . import b\nx = b.g\n", "b": "def f():\n    return 1\n"})
    files = bundle({"artifact.runtime.format": ["MAGIC"]})
    assert files == {"format": "MAGIC = b'GOLF'\n"}


def test_exported_codec_runs_from_a_plain_import_too(tmp_path):
    # The plain form (no compression) loads and reports the same recipe, behind the guard.
    export = build_export(export_recipe("baseline-int8-zlib"), compact=False)
    write_export(export, tmp_path / "golf_codec.py")
    (tmp_path / "check.py").write_text("import sys\nsys.path.insert(0, '.')\nimport golf_codec as g\n"
                                       "print(g.RECIPE.name, sorted(m for m in sys.modules if 'golf_codec' in m)[:3])\n")
    proc = subprocess.run(guarded_command("check.py"), cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("baseline-int8-zlib ['_golf_codec_")
