"""The byte rule of val_bpb (artifact/docs/val_bpb.md) on a real SentencePiece tokenizer trained with the
challenge's settings on the committed real-text sample."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from artifact.runtime.errors import DataError
from artifact.runtime.byte_count import ByteCounter, check_sidecar, target_bytes
from artifact.runtime.tokenizer import load_tokenizer
from train.tokenizer import encode_documents, train_tokenizer

SAMPLE = Path(__file__).parent / "data" / "sample" / "sample.jsonl"
VOCAB = 1024
BOS = 1
# Non-ASCII text the sample's tokenizer has no pieces for: it must fall back to bytes.
FOREIGN = [
    "日本語のテキストです。 絵文字 😀🎉 も入れる。",
    "Café naïve façade — “quoted” ½ ﬁne x² Ω≈ß ẞ",
    "Mixed   spacing\tand\nnewlines\u3000here, then  𝔘𝔫𝔦𝔠𝔬𝔡𝔢 and ｆｕｌｌｗｉｄｔｈ.",
]


def sample_texts() -> list[str]:
    return [json.loads(line)["text"] for line in SAMPLE.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    model = train_tokenizer(sample_texts(), tmp_path_factory.mktemp("tok") / "sample_1024_bpe", VOCAB)
    return model, load_tokenizer(model, VOCAB)


@pytest.fixture(scope="module")
def counter(tok):
    return ByteCounter.from_sentencepiece(tok[0], VOCAB)


def normalized_text(sp, text: str) -> str:
    """The text the model actually sees: SentencePiece's normalizer (nmt_nfkc plus removal of
    leading, trailing and repeated whitespace) with its escaped spaces "▁" turned back into " "."""
    return sp.normalize(text).replace("\u2581", " ")


def piece_id(sp, piece: str) -> int:
    i = sp.piece_to_id(piece)
    assert sp.id_to_piece(i) == piece, f"the sample tokenizer has no piece {piece!r}"
    return i


# ------------------------------------------------------------------- hand-checked pieces
def test_space_piece_costs_one_more_byte_except_after_boundaries(tok, counter):
    sp = tok[1]
    the, normal = piece_id(sp, "\u2581the"), piece_id(sp, "\u2581and")
    assert (counter.base[the], counter.space[the], counter.boundary[the]) == (3, True, False)
    assert counter.count(np.array([normal]), np.array([the]))[0] == 4  # " the" after a word
    assert counter.count(np.array([BOS]), np.array([the]))[0] == 3  # no space byte after BOS
    for control in (0, 2, 3):  # pad, eos, unk are boundaries too
        assert counter.count(np.array([control]), np.array([the]))[0] == 3
    lone = piece_id(sp, "\u2581")  # a bare space piece: 0 bytes of text + the space
    assert counter.base[lone] == 0 and counter.count(np.array([the]), np.array([lone]))[0] == 1


def test_non_ascii_normal_piece_counts_utf8_length_after_one_space_mark(tok, counter):
    sp = tok[1]
    quote = piece_id(sp, "\u2581\u201c")  # "▁“": U+201C is 3 UTF-8 bytes
    assert counter.base[quote] == 3 and counter.space[quote]
    assert counter.count(np.array([piece_id(sp, "\u2581the")]), np.array([quote]))[0] == 4
    close = piece_id(sp, ".\u201d")  # ".”" = 1 + 3 bytes, no space
    assert counter.base[close] == 4 and not counter.space[close]


def test_byte_fallback_pieces_are_one_byte_and_never_spaces(tok, counter):
    sp = tok[1]
    for value in (0x00, 0x41, 0xE6, 0xFF):
        i = piece_id(sp, f"<0x{value:02X}>")
        assert i == 4 + value and sp.is_byte(i)
        assert counter.base[i] == 1 and not counter.space[i] and not counter.boundary[i]
        assert counter.count(np.array([BOS, 300]), np.array([i, i])).tolist() == [1, 1]


def test_control_and_unknown_ids_are_zero_byte_boundaries(tok, counter):
    sp = tok[1]
    assert [sp.is_control(i) for i in range(3)] == [True, True, True] and sp.is_unknown(3)
    for i in range(4):
        assert counter.base[i] == 0 and not counter.space[i] and counter.boundary[i]
    the = piece_id(sp, "\u2581the")
    # BOS as a target: scored, but 0 bytes, whatever precedes it.
    assert counter.count(np.array([the, 0]), np.array([BOS, BOS])).tolist() == [0, 0]


def test_a_padded_model_vocab_is_fine_but_ids_without_a_piece_are_an_error(tok):
    # A model may pad its vocabulary beyond the tokenizer's pieces; an id without a piece has no
    # known bytes, so counting it (as 0 bytes, which would lower val_bpb) is refused.
    sp = tok[1]
    wide = ByteCounter.from_sentencepiece(tok[0], VOCAB + 64)  # a model with a padded vocab
    assert wide.table_size == VOCAB + 64 and wide.tokenizer_vocab == VOCAB
    the = piece_id(sp, "\u2581the")
    assert wide.count(np.array([the]), np.array([the]))[0] == 4
    for bad in (VOCAB, VOCAB + 5, VOCAB + 64):
        with pytest.raises(DataError, match=f"target token id {bad} has no piece in this tokenizer"):
            wide.count(np.array([the]), np.array([bad]))
    with pytest.raises(DataError, match=f"previous token id {VOCAB + 5} has no piece"):
        wide.count(torch.tensor([VOCAB + 5]), torch.tensor([the]))


def test_tokenizer_larger_than_model_vocab_is_refused(tok, tmp_path):
    with pytest.raises(DataError, match="1024 pieces but the model's vocab is 512"):
        ByteCounter.from_sentencepiece(tok[0], 512)
    with pytest.raises(DataError, match="not found"):
        ByteCounter.from_sentencepiece(tmp_path / "missing.model")
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"not a sentencepiece model at all")
    with pytest.raises(DataError, match="junk.model"):
        ByteCounter.from_sentencepiece(junk)


def test_numpy_and_torch_agree_and_return_int64(counter):
    rng = np.random.default_rng(0)
    prev = rng.integers(0, VOCAB, size=(3, 50))
    tgt = rng.integers(0, VOCAB, size=(3, 50))
    a = counter.count(prev.astype(np.uint16), tgt.astype(np.uint16))
    b = counter.count(torch.from_numpy(prev), torch.from_numpy(tgt))
    assert a.dtype == np.int64 and b.dtype == torch.int64 and a.shape == (3, 50)
    np.testing.assert_array_equal(a, b.numpy())


# ------------------------------------------------------------------- the invariant
def test_bytes_of_a_document_equal_its_normalized_utf8_length(tok, counter):
    """Σ bytes_t over [BOS] + encode(text) equals the UTF-8 length of the normalized text.

    The normalized text is `sp.normalize(text)` with "▁" turned back into spaces: that is the
    string the pieces spell. `decode(encode(text))` gives the same string here (byte fallback
    makes the encoding lossless, and with add_dummy_prefix=False decode adds or strips no
    space), which the test checks too; the raw text is NOT the reference, because nmt_nfkc
    folds characters (ﬁ→fi, full-width→ASCII) and drops leading/trailing/repeated spaces."""
    sp = tok[1]
    texts = sample_texts()[:12] + FOREIGN
    docs = encode_documents(sp, texts)
    assert any(sp.is_byte(int(i)) for d in docs[-len(FOREIGN):] for i in d)  # byte fallback used
    expected = []
    for text, ids in zip(texts, docs):
        norm = normalized_text(sp, text)
        assert norm == sp.decode(ids[1:].tolist())
        expected.append(len(norm.encode("utf-8")))
        assert int(counter.sequence_bytes(ids).sum()) == expected[-1], text[:40]
    assert normalized_text(sp, FOREIGN[1]) != FOREIGN[1]  # the normalizer did change something
    stream = np.concatenate(docs)  # documents back to back, as in a shard
    assert int(target_bytes(stream, counter).sum()) == sum(expected)


def test_literal_space_mark_in_text_counts_as_a_one_byte_space(tok, counter):
    """A quirk of the table rule, kept for fidelity: a literal U+2581 in the text is
    indistinguishable from an escaped space, so it counts 1 byte, not its 3 UTF-8 bytes."""
    sp = tok[1]
    ids = encode_documents(sp, ["a\u2581b"])[0]
    assert int(counter.sequence_bytes(ids).sum()) == len(b"a b") == 3


# ------------------------------------------------------------------- side-car mode
def test_sidecar_replaces_the_tables(counter):
    tokens = np.array([1, 300, 301, 1, 302], dtype=np.uint16)
    side = np.array([0, 5, 2, 0, 7], dtype=np.uint16)
    np.testing.assert_array_equal(target_bytes(tokens, counter, sidecar=side), [5, 2, 0, 7])
    np.testing.assert_array_equal(target_bytes(tokens, None, sidecar=side), [5, 2, 0, 7])
    with pytest.raises(DataError, match="4 byte entries for 5 tokens"):
        target_bytes(tokens, counter, sidecar=side[:4])
    with pytest.raises(DataError, match="one entry per token"):
        check_sidecar(side.reshape(1, 5), 5)
    with pytest.raises(DataError, match="ByteCounter or a byte side-car"):
        target_bytes(tokens)
