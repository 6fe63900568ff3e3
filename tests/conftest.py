"""Test-wide settings: idle OpenMP threads sleep (set before torch is imported; see analysis/cli.py)."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402  (after the environment is set)


@pytest.fixture
def one_thread():
    """Small tensors gain nothing from threads, and on a shared 2-core machine OpenMP threads
    wait on each other; modules opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory):
    """tests/data/sample (real English text) built into sp1024 shards: 3 train shards, 1 val of
    12 documents — small enough that a training run's final full-val eval takes a moment."""
    from pathlib import Path

    from train.data_build import build_dataset

    out = tmp_path_factory.mktemp("data") / "sample"
    sample = Path(__file__).parent / "data" / "sample"
    build_dataset(sample, out, vocab_size=1024, val_docs=12, name="sample", shard_tokens=40_000, progress=False)
    return out
