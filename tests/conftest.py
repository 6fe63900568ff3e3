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
    build_dataset(sample, out, vocab_size=1024, val_docs=12, name="sample", shard_tokens=40_000)
    return out


@pytest.fixture(scope="session")
def small_data(tmp_path_factory):
    """The bundled dataset cut short (64k train, 16k val tokens), so a run's final eval is quick."""
    import shutil
    from pathlib import Path

    from train.bundled import BUNDLED_DATA
    from artifact.runtime.shards import read_shard
    from train.shard_writer import write_shard

    root = tmp_path_factory.mktemp("small") / "data"
    shutil.copytree(Path(BUNDLED_DATA) / "tokenizers", root / "tokenizers")
    shutil.copy(Path(BUNDLED_DATA) / "manifest.json", root / "manifest.json")
    source = Path(BUNDLED_DATA) / "datasets" / "golf_sp1024"
    for name, n in (("golf_train_000000.bin", 65_536), ("golf_val_000000.bin", 16_385)):
        write_shard(root / "datasets" / "golf_sp1024" / name, read_shard(source / name)[:n])
    return root
