"""The challenge's shard format (artifact/runtime/shards.py, train/shard_writer.py): exact bytes, memory-mapped reads, and clear
rejection of every malformed file, naming the file."""

from __future__ import annotations

import numpy as np
import pytest

from artifact.runtime.errors import DataError, ShardError
from artifact.runtime.shards import (HEADER_BYTES, MAGIC, VERSION, load_tokens, read_header, read_shard,
                                     resolve_data, shard_name)
from train.shard_writer import write_shard


def _tokens(n=5000, vocab=1024, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, size=n)


def test_round_trip_is_exact_and_memory_mapped(tmp_path):
    tokens = _tokens()
    path = write_shard(tmp_path / "x_val_000000.bin", tokens)
    raw = path.read_bytes()
    assert len(raw) == HEADER_BYTES + 2 * tokens.size
    header = np.frombuffer(raw[:HEADER_BYTES], dtype="<i4")
    assert (header[0], header[1], header[2]) == (MAGIC, VERSION, tokens.size)
    assert not header[3:].any()
    assert np.array_equal(np.frombuffer(raw[HEADER_BYTES:], dtype="<u2"), tokens)
    read = read_shard(path, vocab_size=1024)
    assert isinstance(read, np.memmap)
    assert read.dtype == np.dtype("<u2")
    assert np.array_equal(read, tokens)
    assert read_header(path) == tokens.size


def test_empty_shard_and_concatenation(tmp_path):
    a = write_shard(tmp_path / "a.bin", [])
    b = write_shard(tmp_path / "b.bin", [1, 2, 3])
    assert read_header(a) == 0
    assert read_shard(a).size == 0
    assert load_tokens([a, b]).tolist() == [1, 2, 3]
    with pytest.raises(DataError):
        load_tokens([])


def _corrupt(path, offset, value_bytes):
    raw = bytearray(path.read_bytes())
    raw[offset:offset + len(value_bytes)] = value_bytes
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: _corrupt(p, 0, (12345).to_bytes(4, "little")), "bad magic 12345"),
        (lambda p: _corrupt(p, 4, (2).to_bytes(4, "little")), "unsupported shard version 2"),
        (lambda p: p.write_bytes(p.read_bytes()[:-2]), "header says"),          # truncated
        (lambda p: p.write_bytes(p.read_bytes() + b"\0\0"), "header says"),     # extended
        (lambda p: p.write_bytes(p.read_bytes()[:100]), "shorter than the 1024-byte header"),
        (lambda p: _corrupt(p, 8, (-5).to_bytes(4, "little", signed=True)), "negative token count"),
    ],
)
def test_malformed_shards_are_rejected_naming_the_file(tmp_path, damage, message):
    path = write_shard(tmp_path / "golf_train_000003.bin", _tokens(100))
    damage(path)
    with pytest.raises(ShardError) as err:
        read_shard(path)
    assert str(path) in str(err.value)
    assert message in str(err.value)


def test_out_of_range_id_names_file_id_and_position(tmp_path):
    tokens = _tokens(200, vocab=500)
    tokens[57] = 700
    path = write_shard(tmp_path / "golf_val_000000.bin", tokens)
    read_shard(path)  # no vocab given: not checked
    with pytest.raises(ShardError) as err:
        read_shard(path, vocab_size=512)
    text = str(err.value)
    assert str(path) in text and "token id 700" in text and "position 57" in text


def test_writer_rejects_bad_tokens(tmp_path):
    with pytest.raises(ShardError):
        write_shard(tmp_path / "a.bin", [1, 70000])
    with pytest.raises(ShardError):
        write_shard(tmp_path / "a.bin", [[1, 2]])
    with pytest.raises(ShardError):
        write_shard(tmp_path / "a.bin", [-1])
    assert not (tmp_path / "a.bin").exists()


def test_missing_file_is_a_shard_error(tmp_path):
    with pytest.raises(ShardError, match="cannot read shard"):
        read_header(tmp_path / "nope.bin")


def test_resolve_challenge_layout(tmp_path):
    root = tmp_path / "data"
    ds = root / "datasets" / "fineweb10B_sp1024"
    for split, i in (("val", 0), ("train", 0), ("train", 1)):
        write_shard(ds / shard_name("fineweb", split, i), _tokens(10))
    (root / "tokenizers").mkdir()
    (root / "tokenizers" / "fineweb_1024_bpe.model").write_bytes(b"placeholder")
    paths = resolve_data(root)
    assert paths.prefix == "fineweb" and paths.vocab_size == 1024
    assert [p.name for p in paths.train_files] == ["fineweb_train_000000.bin", "fineweb_train_000001.bin"]
    assert paths.tokenizer.name == "fineweb_1024_bpe.model"
    assert resolve_data(ds).val_files == paths.val_files
