"""SentencePiece tokenizer: trained with the challenge's exact settings, loaded with checks.

The challenge's exporter trains a BPE model with the settings in `TRAINER_SETTINGS` (everything
else at SentencePiece's defaults, e.g. sentences longer than `max_sentence_length` = 4192 bytes
are skipped by the trainer), feeding it each document with NUL replaced by a space and
surrounding whitespace stripped, empty documents left out. Shards then hold, per document,
`[BOS=1] + encode(raw text)` with no EOS (`encode_documents`).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from artifact.runtime.errors import DataError
from artifact.runtime.files import atomic_write
from artifact.runtime.tokenizer import BOS_ID

# The challenge's SentencePiece trainer arguments (data/download_hf_docs_and_tokenize.py).
TRAINER_SETTINGS: dict[str, object] = {
    "model_type": "bpe",
    "character_coverage": 0.999,
    "byte_fallback": True,
    "split_digits": True,
    "normalization_rule_name": "nmt_nfkc",
    "add_dummy_prefix": False,
    "pad_id": 0,
    "bos_id": 1,
    "eos_id": 2,
    "unk_id": 3,
    "hard_vocab_limit": False,
}
# Ours, for reproducibility: the model is returned in memory (so no output path is recorded
# inside it) and the thread count is pinned to SentencePiece's default (it is recorded too), so
# the same documents give a byte-identical .model on any machine. Neither changes the pieces.
DETERMINISM_SETTINGS: dict[str, object] = {"num_threads": 16, "minloglevel": 2}
# 4 specials + 256 byte pieces are always present; BPE needs some room beyond them.
MIN_VOCAB = 4 + 256 + 1
# SentencePiece's default: the trainer silently skips longer "sentences" (documents here).
MAX_SENTENCE_BYTES = 4192


def training_texts(texts: Iterable[str]) -> Iterator[str]:
    """The documents as the challenge's exporter hands them to the trainer."""
    for text in texts:
        cleaned = text.replace("\x00", " ").strip()
        if cleaned:
            yield cleaned


def train_tokenizer(texts: Iterable[str], out_prefix: str | Path, vocab_size: int,
                    extra_settings: dict[str, object] | None = None) -> Path:
    """Train a BPE SentencePiece model on `texts`; write `<out_prefix>.model` and `.vocab`.

    `extra_settings` are further trainer arguments on top of the challenge's (CaseOps adds its
    operators as `user_defined_symbols` and a `max_sentence_length`). Deterministic: the same
    texts in the same order give a byte-identical .model. Returns the .model path."""
    import sentencepiece as spm

    vocab_size = int(vocab_size)
    if not MIN_VOCAB <= vocab_size <= 1 << 16:
        raise DataError(f"vocab size {vocab_size} must lie in [{MIN_VOCAB}, 65536] "
                        "(4 special ids + 256 byte pieces come first)")
    out_prefix = Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    kept = list(training_texts(texts))
    if not kept:
        raise DataError(f"{out_prefix}: no non-empty documents to train the tokenizer on")
    sink = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(kept),
            model_writer=sink,
            vocab_size=vocab_size,
            **{**TRAINER_SETTINGS, **(extra_settings or {})},
            **DETERMINISM_SETTINGS,
        )
    except RuntimeError as exc:  # SentencePiece reports bad input this way
        raise DataError(f"{out_prefix}: SentencePiece training failed: {exc}") from None
    proto = sink.getvalue()
    model = out_prefix.with_name(out_prefix.name + ".model")
    atomic_write(model, proto)
    sp = spm.SentencePieceProcessor(model_proto=proto)
    if sp.vocab_size() != vocab_size:  # hard_vocab_limit=False lets a small corpus stop early
        raise DataError(f"{out_prefix}: the training text only supports {sp.vocab_size()} pieces, "
                        f"fewer than the {vocab_size} asked for; use more text or a smaller vocab")
    atomic_write(out_prefix.with_name(out_prefix.name + ".vocab"), vocab_text(sp).encode("utf-8"))
    return model


def vocab_text(sp) -> str:
    """The `.vocab` file SentencePiece itself writes: `piece<TAB>score` per id (score as %g)."""
    return "".join(f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n" for i in range(sp.vocab_size()))


def encode_documents(sp, texts: Iterable[str]) -> list[np.ndarray]:
    """Per document `[BOS=1] + encode(text)` as int32 arrays (no EOS), as the exporter writes."""
    texts = list(texts)
    if not texts:
        return []
    encoded = sp.encode(texts, out_type=int, num_threads=max(1, min(4, os.cpu_count() or 1)))
    out = []
    for ids in encoded:
        arr = np.empty(len(ids) + 1, dtype=np.int32)
        arr[0] = BOS_ID
        arr[1:] = ids
        out.append(arr)
    return out
