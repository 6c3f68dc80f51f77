import json

import numpy as np
import pytest

from llmpipe.tokens.loader import TokenData
from llmpipe.tokens.shards import HEADER_BYTES, ShardWriter, load_manifest, read_shard, write_manifest
from llmpipe.tokens.split import val_mask
from llmpipe.util.io import InputError


def make_shards(tmp_path, docs_train, docs_val, shard_tokens=50, vocab=1000):
    dtype = np.dtype(np.uint16) if vocab <= 65536 else np.dtype(np.uint32)
    shards = []
    for split, docs in (("train", docs_train), ("val", docs_val)):
        w = ShardWriter(tmp_path, split, shard_tokens, dtype)
        for d in docs:
            w.add(d)
        shards += [{**s, "split": split} for s in w.close()]
    tok_file = tmp_path / "tokenizer.json"
    tok_file.write_text("{}")
    import hashlib
    write_manifest(tmp_path, {"tokenizer_sha256": hashlib.sha256(b"{}").hexdigest(), "eot_id": 0,
                              "vocab_size": vocab, "dtype": dtype.name, "shards": shards})
    return tok_file


def test_llmc_header_and_round_trip(tmp_path):
    docs = [list(range(1, 31)) + [0], list(range(100, 140)) + [0]]
    make_shards(tmp_path, docs, [[5, 6, 0]])
    header = np.fromfile(tmp_path / "train_000000.bin", dtype=np.int32, count=256)
    assert header[0] == 20240520 and header[1] == 1 and header[2] == 50
    flat = np.concatenate([read_shard(tmp_path / f"train_{i:06d}.bin") for i in range(2)])
    assert flat.tolist() == docs[0] + docs[1]
    starts = np.load(tmp_path / "train_000000.bin.idx.npy", allow_pickle=False)
    assert starts.tolist() == [0, 31]


def test_uint32_variant(tmp_path):
    make_shards(tmp_path, [[70000, 1, 0]], [[2, 0]], vocab=100_000)
    header = np.fromfile(tmp_path / "train_000000.bin", dtype=np.int32, count=3)
    assert header.tolist() == [20240801, 7, 3]
    assert read_shard(tmp_path / "train_000000.bin").tolist() == [70000, 1, 0]


def test_the_writer_streams_a_shard_to_disk_and_shows_it_only_when_cut(tmp_path):
    """Memory stays that of a document, not of a 100M-token shard; a shard being written has no name."""
    import tracemalloc

    doc = np.arange(1, 100_001, dtype=np.uint16)
    tracemalloc.start()
    w = ShardWriter(tmp_path, "train", 50_000_000, np.dtype(np.uint16))  # a 100 MB shard
    for _ in range(20):  # 2M tokens, 4 MB on disk
        w.add(doc, eot=0)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2_000_000, peak
    assert not (tmp_path / "train_000000.bin").exists()
    assert w.close() == [{"file": "train_000000.bin", "tokens": 20 * 100_001, "doc_starts": 20}]
    tokens = read_shard(tmp_path / "train_000000.bin")
    assert len(tokens) == 20 * 100_001 and tokens[100_000] == 0 and tokens[100_001] == 1
    assert np.load(tmp_path / "train_000000.bin.idx.npy").tolist() == [k * 100_001 for k in range(20)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train_000000.bin", "train_000000.bin.idx.npy"]


def test_a_writer_left_on_an_error_publishes_no_cut_short_shard(tmp_path):
    with pytest.raises(RuntimeError, match="encoder failed"):
        with ShardWriter(tmp_path, "train", 10, np.dtype(np.uint16)) as w:
            w.add(list(range(1, 15)), eot=0)  # one full shard (10 tokens), 5 in the next
            raise RuntimeError("encoder failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train_000000.bin", "train_000000.bin.idx.npy"]
    assert read_shard(tmp_path / "train_000000.bin").tolist() == list(range(1, 11))
    assert w.close() == [{"file": "train_000000.bin", "tokens": 10, "doc_starts": 1}]  # the aborted part is gone


def test_truncated_and_wrong_magic_are_named(tmp_path):
    make_shards(tmp_path, [list(range(1, 40))], [[1, 0]])
    shard = tmp_path / "train_000000.bin"
    raw = shard.read_bytes()
    shard.write_bytes(raw[:-2])
    with pytest.raises(InputError, match="train_000000.bin.*header says"):
        read_shard(shard)
    shard.write_bytes(b"\x01\x02\x03\x04" + raw[4:])
    with pytest.raises(InputError, match="wrong magic"):
        read_shard(shard)
    shard.write_bytes(raw[: HEADER_BYTES - 1])
    with pytest.raises(InputError, match="truncated"):
        read_shard(shard)


def test_manifest_checks_shards_and_tokenizer(tmp_path):
    tok = make_shards(tmp_path, [list(range(1, 40))], [[1, 0]])
    load_manifest(tmp_path, tok)
    other = tmp_path / "other.json"
    other.write_text('{"different": 1}')
    with pytest.raises(InputError, match="different tokenizer|not with"):
        load_manifest(tmp_path, other)
    m = json.loads((tmp_path / "manifest.json").read_text())
    m["shards"][0]["tokens"] += 1
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(InputError, match="disagrees with shard train_000000.bin"):
        load_manifest(tmp_path)


def test_val_mask_is_deterministic_per_id():
    ids = [f"doc{i}" for i in range(200)]
    m1 = val_mask(ids, 0.1, seed=0)
    m2 = val_mask(list(reversed(ids)), 0.1, seed=0)[::-1]
    assert (m1 == m2).all() and 5 < m1.sum() < 40
    assert val_mask(["a", "b"], 0.01, 0).sum() == 1  # each side gets at least one document


def test_random_batches_are_a_function_of_step_and_split_by_rank(tmp_path):
    make_shards(tmp_path, [list(range(1, 400))], [[1, 2, 3, 0]], shard_tokens=150)
    data = TokenData(tmp_path, "train")
    x1, y1 = data.random_batch(3, 0, rows=4, block=8, seed=1)
    x2, _ = data.random_batch(3, 0, rows=4, block=8, seed=1)
    assert (x1 == x2).all() and (y1[:, :-1] == x1[:, 1:]).all()
    whole, _ = data.random_batch(3, 0, rows=4, block=8, seed=1, world=2, rank=0)
    other, _ = data.random_batch(3, 0, rows=4, block=8, seed=1, world=2, rank=1)
    both, _ = data.random_batch(3, 0, rows=8, block=8, seed=1)
    assert (np.concatenate([whole, other]) == both.numpy()).all()


def test_repeat_rows_show_their_first_half_twice_and_split_by_rank(tmp_path):
    make_shards(tmp_path, [list(range(1, 400))], [[1, 2, 3, 0]], shard_tokens=150)
    data = TokenData(tmp_path, "train")
    plain_x, plain_y = data.random_batch(3, 0, rows=8, block=8, seed=1)
    x, y = data.random_batch(3, 0, rows=8, block=8, seed=1, repeat_share=0.25)
    rows = np.concatenate([x.numpy(), y.numpy()[:, -1:]], axis=1)  # block + 1 tokens a row
    plain = np.concatenate([plain_x.numpy(), plain_y.numpy()[:, -1:]], axis=1)
    repeated = [i for i in range(8) if (rows[i] != plain[i]).any()]
    assert len(repeated) == 2  # round(0.25 x 8); the corpus counts up, so a repeat never equals the plain row
    for i in repeated:  # the first 4 tokens, then the first 5 again (the targets run one past the block)
        assert rows[i, :4].tolist() == plain[i, :4].tolist() and rows[i, 4:].tolist() == plain[i, :5].tolist()
    assert (y[:, :-1] == x[:, 1:]).all()
    halves = [data.random_batch(3, 0, rows=4, block=8, seed=1, world=2, rank=r, repeat_share=0.25)[0] for r in (0, 1)]
    assert (np.concatenate(halves) == x.numpy()).all()  # two ranks pick the rows one process does
    other_step, _ = data.random_batch(4, 0, rows=8, block=8, seed=1, repeat_share=0.25)
    plain_other, _ = data.random_batch(4, 0, rows=8, block=8, seed=1)
    assert ((other_step != plain_other).any(dim=1)).sum() == 2


def test_windows_cover_split_in_order(tmp_path):
    make_shards(tmp_path, [[1, 0]], [list(range(1, 30))], shard_tokens=100)
    data = TokenData(tmp_path, "val")
    wins = list(data.windows(block=8))
    targets = np.concatenate([w[1:] for w in wins])
    assert targets.tolist() == list(range(2, 30))
    capped = list(data.windows(block=8, max_tokens=10))
    assert sum(len(w) - 1 for w in capped) == 10


@pytest.mark.parametrize("max_tokens", [None, 1, 10, 45])
def test_scored_marks_the_targets_windows_score(tmp_path, max_tokens):
    make_shards(tmp_path, [[1, 0]], [list(range(1, 30)), list(range(40, 60))], shard_tokens=25)
    data = TokenData(tmp_path, "val")
    stream, scored = data.scored(max_tokens)
    targets = np.concatenate([w[1:] for w in data.windows(block=8, max_tokens=max_tokens)])
    assert stream[scored].tolist() == targets.tolist()
    assert (stream == np.concatenate(data.arrays)[: len(stream)]).all()
