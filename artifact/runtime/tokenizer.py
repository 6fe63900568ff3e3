"""Loading a SentencePiece tokenizer, with checks (training one is `train.tokenizer`)."""

from __future__ import annotations

from pathlib import Path

from .errors import DataError

BOS_ID = 1  # every document starts with it in the challenge's shards
EOS_ID = 2  # reserved by the trainer settings; never written into shards


def load_tokenizer(path: str | Path, vocab_size: int | None = None):
    """Load a SentencePiece model; DataError naming the file if it is missing, not a model,
    or its vocabulary size is not `vocab_size` (when given)."""
    import sentencepiece as spm  # only scoring needs it: decoding a blob must not

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: tokenizer model not found")
    sp = spm.SentencePieceProcessor()
    try:
        ok = sp.Load(str(path))
    except (OSError, RuntimeError) as exc:
        raise DataError(f"{path}: not a SentencePiece model ({exc})") from None
    if not ok:
        raise DataError(f"{path}: not a SentencePiece model")
    if vocab_size is not None and int(sp.vocab_size()) != int(vocab_size):
        raise DataError(f"{path}: tokenizer has {sp.vocab_size()} pieces but {vocab_size} were expected")
    return sp
