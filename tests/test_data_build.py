"""`golf data build|check` on the committed real-text sample, with real SentencePiece; the
corpus reader, the document splitter and the tokenizer they rest on."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from artifact.runtime.errors import DataError
from train.corpus import iter_documents, pack_units, read_documents, split_text
from artifact.runtime.shards import HEADER_BYTES, read_shard, resolve_data, shard_name
from train.shard_writer import write_shard
from artifact.runtime.tokenizer import load_tokenizer
from train.tokenizer import encode_documents, train_tokenizer, training_texts

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "tests" / "data" / "sample"
VOCAB = 512
VAL_DOCS = 12


def golf(*argv) -> int:
    """Run `golf ...` in-process through the real entry point."""
    from analysis.cli import main

    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def docs():
    return read_documents(SAMPLE)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("build") / "data"
    assert golf("data", "build", "--corpus", SAMPLE, "--out", out, "--vocab", VOCAB,
                "--val-docs", VAL_DOCS) == 0
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- corpus ------------------------------------------------------------------------------------

def test_sample_is_a_mix_of_real_sources(docs):
    sources = {d.source for d in docs}
    assert {"sotu", "shakespeare", "austen", "bible", "devil", "jargon"} <= sources
    assert docs[0].where.endswith("austen_pride_and_prejudice_ch1.txt")  # .txt sorts first
    assert docs[1].where.endswith("sample.jsonl:1")
    assert 250_000 < sum(len(d.text.encode()) for d in docs) < 600_000
    assert len({d.source for d in docs[:VAL_DOCS]}) >= 4  # the shuffled prefix mixes sources


def test_missing_and_empty_corpus(tmp_path):
    with pytest.raises(DataError, match="no such corpus"):
        read_documents(tmp_path / "nope")
    with pytest.raises(DataError, match="empty corpus"):
        read_documents(tmp_path)
    (tmp_path / "blank.jsonl").write_text("\n\n", encoding="utf-8")
    (tmp_path / "notes.md").write_text("not a document", encoding="utf-8")
    with pytest.raises(DataError, match="empty corpus"):
        read_documents(tmp_path)


@pytest.mark.parametrize("line, message", [
    ('{"text": "ok"', "bad JSON"),
    ('{"source": "x"}', 'with a "text" field'),
    ('["text"]', 'with a "text" field'),
    ('{"text": 5}', "must be a string"),
])
def test_bad_jsonl_names_file_and_line(tmp_path, line, message):
    bad = tmp_path / "docs.jsonl"
    bad.write_text('{"text": "first"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        list(iter_documents(tmp_path))
    assert f"{bad}:2" in str(err.value) and message in str(err.value)


def test_txt_must_be_utf8(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"caf\xe9")
    with pytest.raises(DataError, match="not UTF-8"):
        read_documents(tmp_path)


def test_split_text_cuts_at_paragraphs_within_limits(docs):
    text = "\n\n".join(d.text for d in docs[:20])
    pieces = split_text(text, max_bytes=8192, target_bytes=4000)
    assert all(len(p.encode()) <= 8192 for p in pieces)
    assert len(pieces) >= len(text.encode()) // 8192
    # Nothing lost or reordered, and every cut falls at a paragraph boundary.
    assert " ".join(pieces).split() == text.split()
    assert all(f"{p}\n\n" in text or text.endswith(p) for p in pieces)
    assert split_text("short") == ["short"]
    long_line = "word " * 5000  # no paragraph or line breaks: cut at spaces
    assert all(len(p.encode()) <= 4096 for p in split_text(long_line, 4096, 2000))
    packed = pack_units(["a" * 100] * 50, target_bytes=1000)
    assert len(packed) == 50 // 9 + 1 and all(len(p) <= 1000 for p in packed)


# --- tokenizer ---------------------------------------------------------------------------------

def test_tokenizer_is_deterministic_and_has_challenge_layout(tmp_path, docs):
    texts = [d.text for d in docs[VAL_DOCS:]]
    a = train_tokenizer(texts, tmp_path / "a" / "tok", VOCAB)
    b = train_tokenizer(texts, tmp_path / "elsewhere" / "other_name", VOCAB)
    assert a.read_bytes() == b.read_bytes()
    assert a.with_suffix(".vocab").read_bytes() == b.with_suffix(".vocab").read_bytes()
    sp = load_tokenizer(a, VOCAB)
    assert [sp.id_to_piece(i) for i in range(4)] == ["<pad>", "<s>", "</s>", "<unk>"]
    assert sp.id_to_piece(4) == "<0x00>" and sp.id_to_piece(259) == "<0xFF>"
    assert sp.is_byte(4) and sp.is_byte(259) and not sp.is_byte(260)
    assert sp.encode("1984", out_type=str) == ["1", "9", "8", "4"]      # split_digits
    pieces = sp.encode("the cat", out_type=str)
    assert not pieces[0].startswith("\u2581") and "\u2581c" in "".join(pieces)  # no dummy prefix
    vocab_lines = a.with_suffix(".vocab").read_text(encoding="utf-8").splitlines()
    assert len(vocab_lines) == VOCAB and vocab_lines[1] == "<s>\t0"


def test_training_texts_follow_the_exporter():
    assert list(training_texts(["  a\x00b  ", "", " \n ", "c"])) == ["a b", "c"]


def test_encode_documents_bos_no_eos(built):
    sp = load_tokenizer(next((built / "tokenizers").glob("*.model")))
    encoded = encode_documents(sp, ["Hello there.", ""])
    assert encoded[0][0] == 1 and 2 not in encoded[0].tolist()
    assert encoded[0][1:].tolist() == sp.encode("Hello there.")
    assert encoded[1].tolist() == [1]


def test_load_tokenizer_errors(tmp_path, built):
    model = next((built / "tokenizers").glob("*.model"))
    with pytest.raises(DataError, match="not found"):
        load_tokenizer(tmp_path / "none.model")
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"this is not a model")
    with pytest.raises(DataError, match=f"{junk}: not a SentencePiece model"):
        load_tokenizer(junk)
    with pytest.raises(DataError, match="512 pieces but 1024 were expected"):
        load_tokenizer(model, 1024)


def test_too_small_corpus_for_vocab(tmp_path):
    with pytest.raises(DataError, match="fewer than the 4000 asked for|SentencePiece training failed"):
        train_tokenizer(["a tiny corpus of few words"] * 3, tmp_path / "t", 4000)


# --- build -------------------------------------------------------------------------------------

def test_build_layout_and_manifest(built, docs):
    names = sorted(_files(built))
    assert names == ["datasets/golf_sp512/golf_train_000000.bin", "datasets/golf_sp512/golf_val_000000.bin",
                     "manifest.json", "tokenizers/golf_512_bpe.model", "tokenizers/golf_512_bpe.vocab"]
    m = json.loads((built / "manifest.json").read_text())
    s = m["stats"]
    assert (s["docs_val"], s["docs_train"]) == (VAL_DOCS, len(docs) - VAL_DOCS)
    assert s["tokens_total"] == s["tokens_val"] + s["tokens_train"]
    assert m["tokenizer"]["trainer_settings"]["byte_fallback"] is True
    assert m["datasets"][0]["stats"] == s and m["vocab_size"] == VOCAB
    assert m["case_transform"] is None and m["byte_rule"] == "tokenizer tables"
    assert "user_defined_symbols" not in m["tokenizer"]["trainer_settings"]
    assert sum(v["docs"] for v in m["corpus"]["sources"].values()) == len(docs)
    assert not list(built.parent.glob(".data.*"))  # no temp folder left behind
    paths = resolve_data(built)
    assert paths.vocab_size == VOCAB and paths.tokenizer.name == "golf_512_bpe.model"


def test_shards_hold_bos_plus_ids_in_corpus_order(built, docs):
    sp = load_tokenizer(built / "tokenizers" / "golf_512_bpe.model", VOCAB)
    ds = built / "datasets" / "golf_sp512"
    val = np.asarray(read_shard(ds / "golf_val_000000.bin", VOCAB))
    train = np.asarray(read_shard(ds / "golf_train_000000.bin", VOCAB))
    expected = encode_documents(sp, [d.text for d in docs])
    assert np.array_equal(val, np.concatenate(expected[:VAL_DOCS]))
    assert np.array_equal(train, np.concatenate(expected[VAL_DOCS:]))
    assert int((val == 1).sum()) == VAL_DOCS and val[0] == 1
    assert not (val == 2).any() and not (train == 2).any()  # no EOS


def test_val_decodes_to_the_first_documents(built, docs):
    sp = load_tokenizer(built / "tokenizers" / "golf_512_bpe.model")
    val = np.asarray(read_shard(built / "datasets" / "golf_sp512" / "golf_val_000000.bin")).tolist()
    starts = [i for i, t in enumerate(val) if t == 1] + [len(val)]
    decoded = [sp.decode(val[a + 1:b]) for a, b in zip(starts, starts[1:])]
    # The tokenizer normalizes (NFKC, whitespace runs and newlines to one space); compare to that.
    assert decoded == [sp.normalize(d.text).replace("\u2581", " ") for d in docs[:VAL_DOCS]]


def test_val_docs_never_reach_the_tokenizer(tmp_path, built, docs):
    alone = train_tokenizer([d.text for d in docs[VAL_DOCS:]], tmp_path / "t", VOCAB)
    assert alone.read_bytes() == (built / "tokenizers" / "golf_512_bpe.model").read_bytes()


def test_two_builds_are_byte_identical(tmp_path, built):
    again = tmp_path / "again"
    assert golf("data", "build", "--corpus", SAMPLE, "--out", again, "--vocab", VOCAB,
                "--val-docs", VAL_DOCS) == 0
    assert _files(again) == _files(built)


def test_small_shards_cut_every_n_tokens(tmp_path, built):
    out = tmp_path / "cut"
    assert golf("data", "build", "--corpus", SAMPLE, "--out", out, "--vocab", VOCAB,
                "--val-docs", VAL_DOCS, "--shard-tokens", 7000, "--name", "tiny") == 0
    ds = out / "datasets" / "tiny_sp512"
    ref = built / "datasets" / "golf_sp512"
    for split in ("val", "train"):
        files = sorted(ds.glob(f"tiny_{split}_*.bin"))
        assert [f.name for f in files] == [shard_name("tiny", split, i) for i in range(len(files))]
        sizes = [read_shard(f).size for f in files]
        assert all(n == 7000 for n in sizes[:-1]) and 0 < sizes[-1] <= 7000
        joined = np.concatenate([np.asarray(read_shard(f)) for f in files])
        assert np.array_equal(joined, np.asarray(read_shard(ref / f"golf_{split}_000000.bin")))
    m = json.loads((out / "manifest.json").read_text())
    assert m["stats"]["files_val"] == len(list(ds.glob("tiny_val_*.bin"))) >= 2


def test_build_argument_errors(tmp_path, capsys, docs):
    assert golf("data", "build", "--corpus", SAMPLE, "--out", tmp_path / "o", "--vocab", VOCAB,
                "--val-docs", len(docs)) == 2
    assert "must be at least 1 and less than" in capsys.readouterr().err
    assert golf("data", "build", "--corpus", tmp_path / "missing", "--out", tmp_path / "o",
                "--vocab", VOCAB, "--val-docs", 1) == 2
    assert "no such corpus" in capsys.readouterr().err
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("user data")
    assert golf("data", "build", "--corpus", SAMPLE, "--out", foreign, "--vocab", VOCAB,
                "--val-docs", 3) == 2
    assert "not an earlier `golf data build`" in capsys.readouterr().err
    assert (foreign / "keep.txt").read_text() == "user data"
    assert not (tmp_path / "o").exists()


def test_rebuild_replaces_an_earlier_build(tmp_path):
    out = tmp_path / "data"
    for val in (5, 7):
        assert golf("data", "build", "--corpus", SAMPLE, "--out", out, "--vocab", 400,
                    "--val-docs", val, "--shard-tokens", 50000) == 0
    assert json.loads((out / "manifest.json").read_text())["num_val_docs"] == 7
    assert sorted(p.name for p in out.parent.iterdir()) == ["data"]


# --- check -------------------------------------------------------------------------------------

def test_check_passes_on_a_build(built, capsys):
    assert golf("data", "check", built) == 0
    out = capsys.readouterr().out
    assert "OK" in out and f"{VAL_DOCS} documents" in out
    assert golf("data", "check", built, "--json") == 0
    r = json.loads(capsys.readouterr().out)
    m = json.loads((built / "manifest.json").read_text())["stats"]
    assert r["ok"] and r["vocab_size"] == VOCAB
    assert r["splits"]["val"]["tokens"] == m["tokens_val"] and r["splits"]["train"]["documents"] == m["docs_train"]


@pytest.mark.parametrize("damage, expect", [
    ("magic", "bad magic"),
    ("truncate", "header says"),
    ("bad_id", "token id 999"),
    ("manifest", "says"),
])
def test_check_fails_on_a_corrupted_copy(tmp_path, built, capsys, damage, expect):
    copy = tmp_path / "copy"
    shutil.copytree(built, copy)
    shard = copy / "datasets" / "golf_sp512" / "golf_train_000000.bin"
    raw = bytearray(shard.read_bytes())
    if damage == "magic":
        raw[0:4] = (1).to_bytes(4, "little")
    elif damage == "truncate":
        raw = raw[:-1]
    elif damage == "bad_id":
        raw[HEADER_BYTES + 2 * 10:HEADER_BYTES + 2 * 11] = (999).to_bytes(2, "little")
    else:
        m = json.loads((copy / "manifest.json").read_text())
        m["datasets"][0]["stats"]["tokens_train"] += 1
        (copy / "manifest.json").write_text(json.dumps(m))
    shard.write_bytes(bytes(raw))
    assert golf("data", "check", copy) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and expect in out
    if damage != "manifest":
        assert str(shard) in out


def test_check_names_shard_and_id_when_tokenizer_does_not_match(tmp_path, built, docs, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(built, copy)
    model = copy / "tokenizers" / "golf_512_bpe.model"
    model.unlink()
    small = train_tokenizer([d.text for d in docs], tmp_path / "small", 400)
    shutil.copy(small, model)
    assert golf("data", "check", copy, "--json") == 1
    problems = json.loads(capsys.readouterr().out)["problems"]
    assert any("tokenizer has 400 pieces but the dataset folder golf_sp512 says 512" in p for p in problems)
    bad = [p for p in problems if "out of range for vocab size 400" in p]
    assert bad and "golf_val_000000.bin: token id" in bad[0]


def test_check_reads_the_challenge_layout(tmp_path, docs, capsys):
    root = tmp_path / "data"
    model = train_tokenizer([d.text for d in docs], root / "tokenizers" / "fineweb_1024_bpe", 1024)
    sp = load_tokenizer(model, 1024)
    ds = root / "datasets" / "fineweb10B_sp1024"
    encoded = encode_documents(sp, [d.text for d in docs])
    write_shard(ds / "fineweb_val_000000.bin", np.concatenate(encoded[:10]))
    write_shard(ds / "fineweb_train_000000.bin", np.concatenate(encoded[10:50]))
    write_shard(ds / "fineweb_train_000001.bin", np.concatenate(encoded[50:]))
    stats = {"docs_val": 10, "docs_train": len(docs) - 10, "files_val": 1, "files_train": 2,
             "tokens_val": int(sum(e.size for e in encoded[:10])),
             "tokens_train": int(sum(e.size for e in encoded[10:]))}
    (root / "manifest.json").write_text(json.dumps({"datasets": [{"name": "fineweb10B_sp1024", "stats": stats}]}))
    assert golf("data", "check", root, "--json") == 0
    r = json.loads(capsys.readouterr().out)
    assert r["ok"] and r["vocab_size"] == 1024
    assert r["splits"]["val"] == {"files": 1, "tokens": stats["tokens_val"], "documents": 10,
                                  "file_tokens": [stats["tokens_val"]]}
    assert r["splits"]["train"]["files"] == 2 and r["splits"]["train"]["documents"] == len(docs) - 10
    # A byte side-car per val shard must match its token count.
    write_shard(ds / "fineweb_val_bytes_000000.bin", np.ones(stats["tokens_val"] - 1, dtype=np.uint16))
    assert golf("data", "check", root) == 1
    assert "entries but its val shard has" in capsys.readouterr().out


def test_check_without_data_is_a_clear_error(tmp_path, capsys):
    assert golf("data", "check", tmp_path / "nothing") == 2
    assert "no such data folder" in capsys.readouterr().err
    from train.bundled import BUNDLED_DATA
    if not BUNDLED_DATA.exists():
        assert golf("data", "check") == 2
        assert "bundled data has not been built yet" in capsys.readouterr().err


def test_check_in_a_real_subprocess(built):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "analysis.cli", "data", "check", str(built), "--json"],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["ok"] is True
    bad = subprocess.run([sys.executable, "-m", "analysis.cli", "data", "build", "--corpus", str(SAMPLE),
                          "--out", str(built.parent / "x"), "--vocab", "512", "--val-docs", "0"],
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert bad.returncode == 2 and "error:" in bad.stderr and "Traceback" not in bad.stderr
