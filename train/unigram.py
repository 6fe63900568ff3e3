"""The unigram reference: bpb of an add-one smoothed unigram model, the floor any trained model
must beat (logged by the trainer and stored with the bundled checkpoint)."""

from __future__ import annotations

import math

import numpy as np

from artifact.runtime.byte_count import ByteCounter
from artifact.runtime.errors import ConfigError, DataError
from artifact.runtime.scoring import check_window_args, flat_kept_tokens, prepare_stream

_COUNT_CHUNK = 1 << 22


def unigram_bpb(train_tokens, val_tokens, counter: ByteCounter | None, seq_len: int,
                sidecar=None, vocab_size: int | None = None) -> float:
    """bpb of an add-one smoothed unigram model fitted on `train_tokens`, scored on exactly the
    targets `eval_flat` scores at `seq_len` (same truncation, same byte rule). The smoothing
    spans `vocab_size` ids (default: the counter's table size)."""
    check_window_args(seq_len)
    val, side = prepare_stream(val_tokens, counter, sidecar)
    vocab = vocab_size or (counter.table_size if counter is not None else None)
    if vocab is None:
        raise ConfigError("unigram_bpb needs vocab_size when no ByteCounter is given")
    train = np.asarray(train_tokens)
    if train.size == 0:
        raise DataError("unigram_bpb: no training tokens")
    if int(train.max()) >= vocab or int(val.max()) >= vocab:
        raise DataError(f"unigram_bpb: token ids reach {max(int(train.max()), int(val.max()))}, "
                        f"beyond the vocab of {vocab}")
    kept = flat_kept_tokens(val.size, seq_len)
    if kept < 2:
        raise DataError(f"unigram_bpb at seq_len {seq_len} needs at least {seq_len + 1} val tokens")
    counts = np.zeros(vocab, dtype=np.float64)
    for i in range(0, train.size, _COUNT_CHUNK):  # chunks: no int64 copy of a 100M-token shard
        counts += np.bincount(train[i:i + _COUNT_CHUNK], minlength=vocab)
    log_p = np.log(counts + 1.0) - math.log(train.size + vocab)
    loss, nbytes = 0.0, 0
    for lo in range(1, kept, _COUNT_CHUNK):  # target token indices lo..hi-1
        hi = min(lo + _COUNT_CHUNK, kept)
        loss -= float(log_p[val[lo:hi]].sum())
        if side is not None:
            nbytes += int(side[lo:hi].sum(dtype=np.int64))
        else:
            nbytes += int(counter.count(val[lo - 1:hi - 1], val[lo:hi]).sum())
    if nbytes <= 0:
        raise DataError("unigram_bpb: the scored targets cover 0 bytes")
    return loss / (math.log(2) * nbytes)


