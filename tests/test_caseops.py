"""CaseOps (train.caseops): the transform is lossless on the whole real corpus and on adversarial
strings, the side-car bytes of every val document sum to its original UTF-8 bytes, and a CaseOps
build's val_bpb counts bytes from the side-car, not the tokenizer's byte table."""

from __future__ import annotations

import json
import math
import random
import shutil
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch

from artifact.runtime.errors import DataError
from train import caseops
from train.caseops import ESCAPE, OPERATORS, TITLE, UPPER, char_bytes, decode, encode
from train.corpus import read_documents
from artifact.runtime.shards import read_shard, resolve_data
from train.shard_writer import write_shard
from artifact.runtime.tokenizer import load_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "tests" / "data" / "sample"
LOCAL_CORPUS = REPO / "corpus" / "docs.jsonl"
VOCAB = 512
VAL_DOCS = 12


def golf(*argv) -> int:
    from analysis.cli import main

    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def real_docs(tmp_path_factory):
    """The whole real corpus: the local one when this checkout has it, else `golf data fetch`
    (downloads the public sources, ~20 s)."""
    if LOCAL_CORPUS.is_file():
        return read_documents(LOCAL_CORPUS)
    out = tmp_path_factory.mktemp("corpus")
    assert golf("data", "fetch", "--out", out) == 0
    return read_documents(out / "docs.jsonl")


@pytest.fixture(scope="module")
def sample_docs():
    return read_documents(SAMPLE)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("caseops") / "data"
    assert golf("data", "build", "--corpus", SAMPLE, "--out", out, "--vocab", VOCAB,
                "--val-docs", VAL_DOCS, "--case-transform", "caseops") == 0
    return out


def _tokenizer(built):
    return load_tokenizer(built / "tokenizers" / f"golf_{VOCAB}_bpe.model", VOCAB)


def _val_and_sidecar(built):
    ds = built / "datasets" / f"golf_sp{VOCAB}"
    return (np.asarray(read_shard(ds / "golf_val_000000.bin")),
            np.asarray(read_shard(ds / "golf_val_bytes_000000.bin")))


def _per_document(tokens: np.ndarray, values: np.ndarray) -> list[np.ndarray]:
    starts = list(np.flatnonzero(tokens == 1)) + [tokens.size]
    return [values[a:b] for a, b in zip(starts, starts[1:])]


# --- the transform -------------------------------------------------------------------------------

def test_round_trip_on_the_whole_real_corpus(real_docs):
    total = sum(len(d.text.encode()) for d in real_docs)
    assert len(real_docs) > 5000 and total > 20_000_000  # the whole corpus, not a sample
    ops = changed = 0
    for doc in real_docs:
        enc = encode(doc.text)
        assert decode(enc) == doc.text, doc.where
        assert not caseops.has_lowerable(enc), doc.where  # every round-tripping capital moved
        assert int(char_bytes(enc).sum()) == len(doc.text.encode()), doc.where
        ops += sum(enc.count(op) for op in OPERATORS)
        changed += enc != doc.text
    assert changed > 0.9 * len(real_docs) and ops > total / 100


ADVERSARIAL = [
    "", "a", "A", "AB", "ABc", "aBC", "JSONs and iPhones", "MP3 COVID-19 A1B2",
    TITLE, UPPER, ESCAPE, TITLE + "a", UPPER + "ab", ESCAPE + ESCAPE, "A" + TITLE + "b", "AB" + ESCAPE,
    "ß SS ẞ straße STRASSE", "İstanbul İI ı I", "ǅ ǆ Ǆ Džungla", "\u212a Kelvin \u2126 Ohm",
    "ΟΔΟΣ ς Σ σ ὈΔΥΣΣΕΎΣ", "Ⱥⱥ ȾȾ ⱦ", "ﬁ ﬀ Ⅻ ⅻ Ⓐ ⓐ", "Ǳ ǲ ǳ", "ΐ ΰ ᾈ ᾀ",
    "日本語 Текст ТЕКСТ Ελληνικά", "𝔘𝔫𝔦 𐐀𐐨 𐐀𐐀",
    " The", "\n\nThe", "\t \r\nX", " " * 30 + "Y", "x" + " " * 20, "A \u00a0B", "0123456789",
    "a\x00B\x01C", "\ufeffBOM", "A\u0301 E\u0301E\u0301",
]


@pytest.mark.parametrize("text", ADVERSARIAL)
def test_round_trip_on_adversarial_strings(text):
    enc = encode(text)
    assert decode(enc) == text
    assert not caseops.has_lowerable(enc)
    assert int(char_bytes(enc).sum()) == len(text.encode())


def test_round_trip_on_random_strings():
    alphabet = "aAbBzZ ßẞİıǅǆǄΣσςⱥȺ\u212a\u0301\n\t" + "".join(OPERATORS) + "1é É日\U00010400\U00010428"
    rng = random.Random(5)
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24)))
        enc = encode(text)
        assert decode(enc) == text, repr(text)
        assert int(char_bytes(enc).sum()) == len(text.encode()), repr(text)


@pytest.mark.parametrize("text, expected", [
    ("The cat", TITLE + "the cat"),
    ("say The", "say" + TITLE + " the"),           # the operator hops over the space
    ("end.\n\nNext", "end." + TITLE + "\n\nnext"),
    ("NASA runs", UPPER + "nasa runs"),
    ("JSONs", UPPER + "json" + ESCAPE + "s"),     # a run before a lower-case letter is closed
    ("iPhone", "i" + TITLE + "phone"),
    ("a" + TITLE, "a" + ESCAPE + TITLE),             # literal operators are escaped
    ("straße İ", "straße İ"),                        # letters whose case does not round-trip stay
])
def test_encoding_shape(text, expected):
    assert encode(text) == expected


@pytest.mark.parametrize("bad", [TITLE, UPPER, ESCAPE, "a" + TITLE + "1", UPPER + " ", "x" + ESCAPE])
def test_decode_rejects_text_encode_cannot_produce(bad):
    with pytest.raises(DataError, match="not CaseOps-encoded"):
        decode(bad)
    with pytest.raises(DataError, match="not CaseOps-encoded"):
        char_bytes(bad)


def test_byte_counts_follow_the_original_letters():
    enc = encode("Ⱥb É")  # U+023A is 2 bytes, its lower case U+2C65 is 3
    assert enc == TITLE + "ⱥb" + TITLE + " é"
    assert char_bytes(enc).tolist() == [0, 2, 1, 0, 1, 2]
    # Token i covers characters up to its end offset; dropped text counts with the token before.
    assert caseops.token_byte_counts(enc, [1, 3, 4, 6]).tolist() == [0, 3, 0, 3]
    assert caseops.token_byte_counts(enc, [1, 1, 3]).tolist() == [0, 0, 6]  # last runs to the end
    assert caseops.token_byte_counts(enc, []).size == 0


# --- side-cars ---------------------------------------------------------------------------------

def test_sidecar_sums_to_original_bytes_for_real_val_documents(built, real_docs):
    """Any CaseOps tokenizer will do: the sum rule may not depend on which pieces it learnt."""
    sp = _tokenizer(built)
    op_ids = [sp.piece_to_id(op) for op in OPERATORS]
    docs = real_docs[:400]  # more than the 185 val documents of the standard real build
    for doc, (ids, nbytes) in zip(docs, caseops.encode_with_bytes(sp, [d.text for d in docs])):
        assert ids[0] == 1 and nbytes[0] == 0
        assert int(nbytes.sum()) == len(doc.text.encode()), doc.where
        assert not nbytes[np.isin(ids, op_ids)].any()
        assert nbytes.min() >= 0 and ids.size == nbytes.size
        assert ids[1:].tolist() == sp.encode(encode(doc.text))


def test_build_writes_sidecars_that_sum_per_document(built, sample_docs):
    sp = _tokenizer(built)
    assert [sp.piece_to_id(op) for op in OPERATORS] == [4, 5, 6]  # user-defined, one piece each
    assert sp.encode(TITLE + " the" + UPPER + "nasa", out_type=str)[:2] == [TITLE, "\u2581the"]
    val, side = _val_and_sidecar(built)
    assert val.size == side.size
    sums = [int(s.sum()) for s in _per_document(val, side)]
    assert sums == [len(d.text.encode()) for d in sample_docs[:VAL_DOCS]]
    # The shards hold the transformed text: decoding gives the tokenizer's view of encode(text).
    pieces = _per_document(val, val)
    assert sp.decode(pieces[0][1:].tolist()) == sp.normalize(encode(sample_docs[0].text)).replace("\u2581", " ")
    m = json.loads((built / "manifest.json").read_text())
    assert m["case_transform"]["name"] == "caseops" and m["byte_rule"] == "side-car"
    assert m["tokenizer"]["trainer_settings"]["user_defined_symbols"] == list(OPERATORS)
    s = m["stats"]
    assert s["sidecar_bytes_val"] == s["text_bytes_val"] == int(side.sum())
    assert s["operator_tokens_val"] == int(np.isin(val, [4, 5, 6]).sum()) > 0
    assert m["datasets"][0]["val_bytes_glob"].endswith("golf_val_bytes_*.bin")
    paths = resolve_data(built)
    assert [p.name for p in paths.byte_sidecars] == ["golf_val_bytes_000000.bin"]


def test_small_shards_cut_sidecars_at_the_same_places(tmp_path, built):
    out = tmp_path / "cut"
    assert golf("data", "build", "--corpus", SAMPLE, "--out", out, "--vocab", VOCAB, "--val-docs", VAL_DOCS,
                "--case-transform", "caseops", "--shard-tokens", 6000) == 0
    ds = out / "datasets" / f"golf_sp{VOCAB}"
    vals, sides = sorted(ds.glob("golf_val_0*.bin")), sorted(ds.glob("golf_val_bytes_*.bin"))
    assert len(vals) == len(sides) >= 3
    assert [read_shard(v).size for v in vals] == [read_shard(s).size for s in sides]
    ref_val, ref_side = _val_and_sidecar(built)
    assert np.array_equal(np.concatenate([read_shard(s) for s in sides]), ref_side)
    assert np.array_equal(np.concatenate([read_shard(v) for v in vals]), ref_val)
    assert golf("data", "check", out) == 0


def test_check_validates_sidecars(tmp_path, built, capsys):
    assert golf("data", "check", built, "--json") == 0
    r = json.loads(capsys.readouterr().out)
    val, side = _val_and_sidecar(built)
    assert r["ok"] and r["splits"]["val_bytes"]["bytes"] == int(side.sum()) > 0
    ds = Path("datasets") / f"golf_sp{VOCAB}"
    cases = {
        "bos": (lambda s: s.__setitem__(0, 3), "stands for no text"),
        "sum": (lambda s: s.__setitem__(int(np.argmax(s > 0)), s[s > 0][0] + 1), "side-cars count"),
    }
    for name, (damage, expect) in cases.items():
        copy = tmp_path / name
        shutil.copytree(built, copy)
        bad = side.copy()
        damage(bad)
        write_shard(copy / ds / "golf_val_bytes_000000.bin", bad)
        assert golf("data", "check", copy) == 1
        assert expect in capsys.readouterr().out
    missing = tmp_path / "missing"
    shutil.copytree(built, missing)
    (missing / ds / "golf_val_bytes_000000.bin").unlink()
    assert golf("data", "check", missing) == 1
    assert "holds no byte side-cars" in capsys.readouterr().out


def test_two_caseops_builds_are_byte_identical(tmp_path, built):
    again = tmp_path / "again"
    assert golf("data", "build", "--corpus", SAMPLE, "--out", again, "--vocab", VOCAB,
                "--val-docs", VAL_DOCS, "--case-transform", "caseops") == 0
    files = lambda root: {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert files(again) == files(built)


# --- val_bpb on a CaseOps build -------------------------------------------------------------------

def test_val_bpb_counts_sidecar_bytes(tmp_path, built, capsys):
    from artifact.runtime.byte_count import ByteCounter
    from artifact.runtime.checkpoint import save_checkpoint
    from artifact.runtime.scoring import eval_flat, load_val
    from artifact.runtime.model import GPT, ModelConfig

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=VOCAB, num_layers=1, model_dim=32, num_heads=2, num_kv_heads=1)
    model = GPT(cfg).eval()
    data = resolve_data(built)
    tokens, sidecar = load_val(data, VOCAB)
    assert sidecar is not None and sidecar.size == tokens.size
    seq = 256
    result = eval_flat(model, tokens, None, seq, batch_seqs=4, sidecar=sidecar)
    kept = (tokens.size - 1) // seq * seq
    assert result.bytes == int(sidecar[1:kept + 1].sum())
    assert math.isclose(result.val_bpb, result.val_loss * result.tokens / (math.log(2) * result.bytes), rel_tol=1e-9)
    # The byte table would count other bytes (operators' 3 bytes, no capitals' lengths ...).
    table = eval_flat(model, tokens, ByteCounter.from_sentencepiece(data.tokenizer, VOCAB), seq,
                      batch_seqs=4)
    assert table.bytes != result.bytes and table.val_loss == pytest.approx(result.val_loss)
    # `golf eval` finds the side-car by itself.
    ckpt = save_checkpoint(tmp_path / "ckpt", model, cfg, {"seq_len": seq})
    assert golf("eval", ckpt, "--data", built, "--json", "--device", "cpu") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["byte_rule"] == "side-car" and out["bytes"] == result.bytes
    assert out["val_bpb"] == pytest.approx(result.val_bpb, rel=1e-6)


def test_unknown_transform_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        golf("data", "build", "--corpus", SAMPLE, "--out", tmp_path / "o", "--vocab", VOCAB,
             "--val-docs", 3, "--case-transform", "upper")
    assert "invalid choice" in capsys.readouterr().err
    from train.data_build import build_dataset
    with pytest.raises(DataError, match="--case-transform 'upper'"):
        build_dataset(SAMPLE, tmp_path / "o", VOCAB, 3, case_transform="upper")
    assert not (tmp_path / "o").exists()


def test_nfkc_view_is_unchanged_by_operators():
    """The operators survive the tokenizer's NFKC normaliser untouched (private use)."""
    for op in OPERATORS:
        assert unicodedata.normalize("NFKC", op) == op and unicodedata.category(op) == "Co"
