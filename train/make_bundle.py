"""Make the bundled default from a built dataset and a trained checkpoint (a maintainer's step).

    golf data bundle --data corpus/data --checkpoint runs/baseline-cpu

Copies into train/bundled/: the tokenizer, every val shard, the first `--train-tokens` tokens of
the first train shard (enough for calibration and tests, small enough to commit), a manifest
that says what was cut, and the checkpoint; then evaluates the bundled checkpoint on the bundled
val split and writes figures.json, the stored figures tests reproduce.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from artifact.runtime.files import atomic_write_json
from train.bundled import BUNDLED_CHECKPOINT, BUNDLED_DATA, BUNDLED_DIR, BUNDLED_FIGURES
from artifact.runtime.byte_count import ByteCounter
from artifact.runtime.checkpoint import load_checkpoint
from artifact.runtime.scoring import eval_flat, eval_sliding, load_val
from train.unigram import unigram_bpb
from artifact.runtime.shards import read_shard, resolve_data
from train.shard_writer import write_shard

DEFAULT_TRAIN_TOKENS = 262_144
SLIDING_STRIDE = 64
# A quick figure for tests: flat eval of the first PREFIX_TOKENS + 1 val tokens.
PREFIX_TOKENS = 32_768


def copy_data(data_dir: Path, train_tokens: int) -> None:
    """Tokenizer + all val shards + a prefix of train shard 0, with a manifest describing them."""
    src = resolve_data(data_dir)
    manifest = json.loads(src.manifest.read_text(encoding="utf-8")) if src.manifest else {}
    shutil.rmtree(BUNDLED_DATA, ignore_errors=True)
    dataset_dir = BUNDLED_DATA / "datasets" / src.dataset_dir.name
    tok_dir = BUNDLED_DATA / "tokenizers"
    tok_dir.mkdir(parents=True)
    tokenizer = src.require_tokenizer()
    shutil.copy2(tokenizer, tok_dir / tokenizer.name)
    vocab_file = tokenizer.with_suffix(".vocab")
    if vocab_file.is_file():
        shutil.copy2(vocab_file, tok_dir / vocab_file.name)
    val_tokens = 0
    for f in src.require_val() + src.byte_sidecars:
        tokens = read_shard(f)
        write_shard(dataset_dir / f.name, tokens)
        val_tokens += tokens.size if f in src.val_files else 0
    train = np.asarray(read_shard(src.require_train()[0])[:train_tokens])
    write_shard(dataset_dir / src.train_files[0].name, train)
    stats = {
        "files_val": len(src.val_files), "tokens_val": int(val_tokens),
        "docs_val": int(sum(int((read_shard(f) == 1).sum()) for f in src.val_files)),
        "files_train": 1, "tokens_train": int(train.size), "docs_train": int((train == 1).sum()),
    }
    manifest["bundled"] = {
        "note": "val split complete; train split cut to a prefix of its first shard for calibration/tests",
        "train_tokens_kept": int(train.size),
    }
    for entry in manifest.get("datasets", []):
        entry["stats"] = stats
    manifest["stats"] = stats
    atomic_write_json(BUNDLED_DATA / "manifest.json", manifest, indent=2)


def copy_checkpoint(checkpoint: Path) -> None:
    shutil.rmtree(BUNDLED_CHECKPOINT, ignore_errors=True)
    BUNDLED_CHECKPOINT.mkdir(parents=True)
    for name in ("model.pt", "config.json", "train_log.txt"):
        if (checkpoint / name).is_file():
            shutil.copy2(checkpoint / name, BUNDLED_CHECKPOINT / name)


def measure_figures(full_data: Path) -> dict:
    """Eval figures of the bundled checkpoint on the bundled val split (flat and sliding) and the
    unigram reference fitted on the FULL train split it was trained on."""
    model, cfg, meta = load_checkpoint(BUNDLED_CHECKPOINT)
    data = resolve_data(BUNDLED_DATA)
    counter = ByteCounter.from_sentencepiece(data.require_tokenizer(), cfg.vocab_size)
    tokens, sidecar = load_val(data, cfg.vocab_size)
    seq_len = int(meta.get("seq_len", 256))
    flat = eval_flat(model, tokens, counter, seq_len, batch_seqs=16, device="cpu", sidecar=sidecar)
    sliding = eval_sliding(model, tokens, counter, seq_len, SLIDING_STRIDE, batch_seqs=16, device="cpu", sidecar=sidecar)
    prefix = eval_flat(model, tokens[: PREFIX_TOKENS + 1], counter, seq_len, batch_seqs=16, device="cpu",
                       sidecar=None if sidecar is None else sidecar[: PREFIX_TOKENS + 1])
    full = resolve_data(full_data)
    train_tokens = np.concatenate([np.asarray(read_shard(f)) for f in full.require_train()])
    unigram = unigram_bpb(train_tokens, tokens, counter, seq_len)
    return {
        "seq_len": seq_len, "flat": flat.to_dict(), "flat_prefix": prefix.to_dict(), "sliding": sliding.to_dict(),
        "unigram_bpb": unigram, "params": sum(p.numel() for p in model.parameters()),
        "note": "real English text mix, not FineWeb: not comparable with challenge numbers",
    }


def make_bundle(data_dir: Path, checkpoint: Path, train_tokens: int = DEFAULT_TRAIN_TOKENS) -> dict:
    """Copy the data and the checkpoint into train/bundled/, measure and store the figures;
    returns {"figures": …, "bundle_bytes": …}."""
    copy_data(Path(data_dir), train_tokens)
    copy_checkpoint(Path(checkpoint))
    figures = measure_figures(Path(data_dir))
    atomic_write_json(BUNDLED_FIGURES, figures, indent=2)
    total = sum(f.stat().st_size for f in BUNDLED_DIR.rglob("*") if f.is_file())
    return {"figures": figures, "bundle_bytes": total, "bundle": str(BUNDLED_DIR)}
