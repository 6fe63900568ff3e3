"""Shared test helpers (imported by test modules; pytest puts tests/ on sys.path)."""

import functools

from train.bundled import BUNDLED_CHECKPOINT, BUNDLED_DATA


@functools.lru_cache(maxsize=1)
def bundled_model_and_tokens():
    """(bundled model, its bundled train tokens), or None when the bundle is absent."""
    from artifact.runtime.checkpoint import load_checkpoint
    from artifact.runtime.shards import load_tokens, resolve_data

    if not (BUNDLED_CHECKPOINT / "model.pt").is_file():
        return None
    model, _, _ = load_checkpoint(BUNDLED_CHECKPOINT)
    data = resolve_data(BUNDLED_DATA)
    return model, load_tokens((data.train_files or data.val_files)[:1])
