"""The tokenize stage core: shards byte-identical across reruns and thread counts, every document
round-trips, the split follows the split stage's assignments, val_overlap_13gram."""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from llmpipe.config.tokens import SplitParams, TokenizeParams, TokenizerParams
from llmpipe.stages.split import assign
import llmpipe.stages.tokenize as tokenize_stage
from llmpipe.stages.tokenize import tokenize_corpus
from llmpipe.tokens.bpe import train_tokenizer
from llmpipe.tokens.loader import TokenData
from llmpipe.tokens.shards import load_manifest, read_shard
from llmpipe.tokens.split import read_val_mask
from llmpipe.util.io import InputError

TEXTS = [f"Document {i}: " + " ".join(f"word{(i * 7 + j) % 97} café 🤖" for j in range(200)) for i in range(60)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    docs = root / "docs.parquet"
    pd.DataFrame({"id": [f"d{i}" for i in range(len(TEXTS))], "text": TEXTS}).to_parquet(docs)
    tok = root / "tokenizer.json"
    train_tokenizer(iter(TEXTS), TokenizerParams(vocab_size=400)).save(str(tok))
    # the toy texts repeat one another: decontamination would move every val document
    pq.write_table(assign(docs, SplitParams(val_fraction=0.2, decontaminate={"enabled": False}))[0],
                   root / "assignments.parquet")
    return docs, tok


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


SCRIPT = """
import sys
from pathlib import Path
from llmpipe.config.tokens import TokenizeParams
from llmpipe.stages.tokenize import tokenize_corpus
stats = tokenize_corpus(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]),
                        Path(sys.argv[1]).parent / "assignments.parquet",
                        TokenizeParams(shard_tokens=5000, workers=int(sys.argv[4]), batch_bytes=20000))
"""


def test_shards_identical_across_reruns_and_worker_counts(corpus, tmp_path):
    docs, tok = corpus
    outs = []
    for workers in ("1", "2", "2"):
        out = tmp_path / f"w{workers}-{len(outs)}"
        out.mkdir()
        env = {**os.environ, "RAYON_RS_NUM_CPUS": workers, "RAYON_NUM_THREADS": workers}
        subprocess.run([sys.executable, "-c", SCRIPT, str(docs), str(tok), str(out), workers], env=env, check=True)
        outs.append(digest(out))
    assert outs[0] == outs[1] == outs[2]
    assert sum(name.startswith("train_") and name.endswith(".bin") for name in outs[0]) >= 2  # several shards
    assert json.loads((tmp_path / "w1-0" / "manifest.json").read_text())["encoder"] == "tiktoken"


def test_every_document_round_trips_in_order(corpus, tmp_path):
    docs, tok_path = corpus
    stats = tokenize_corpus(docs, tok_path, tmp_path, docs.parent / "assignments.parquet",
                            TokenizeParams(shard_tokens=5000, batch_bytes=30000))
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_path))
    manifest = load_manifest(tmp_path, tok_path)
    mask = read_val_mask(docs.parent / "assignments.parquet", docs)
    assert 0 < mask.sum() < len(TEXTS)
    for split in ("train", "val"):
        flat = np.concatenate([read_shard(tmp_path / s["file"]) for s in manifest.shards(split)])
        pieces = np.split(flat, np.flatnonzero(flat == manifest.eot_id) + 1)[:-1]
        expected = [t for t, v in zip(TEXTS, mask) if v == (split == "val")]
        assert [tok.decode(p[:-1].tolist()) for p in pieces] == expected
        assert stats[f"{split}_docs"] == len(expected)
    starts = np.load(tmp_path / "train_000000.bin.idx.npy")
    assert starts[0] == 0 and (np.diff(starts) > 0).all()
    assert TokenData(tmp_path, "val").n_tokens == stats["val_tokens"]


def test_val_overlap_13gram_is_the_share_of_val_word_13grams_in_train(corpus, tmp_path, monkeypatch):
    _, tok_path = corpus
    # every n-gram counts here (the stage samples 1 in 16 by hash; tests/unit/data/test_ngrams.py checks
    # that the sample keeps the fraction)
    monkeypatch.setattr(tokenize_stage, "OVERLAP_SAMPLE", 1)
    train_words = [f"t{i}" for i in range(40)]
    # val: 14 words copied from train (2 of their 13-grams), then 6 words of its own: 8 13-grams, 2 in train;
    # case and punctuation do not matter (word n-grams of the lowercased \w+ words)
    val_words = [w.upper() for w in train_words[5:19]] + [f"v{i}" for i in range(6)]
    docs = tmp_path / "docs.parquet"
    pd.DataFrame({"id": ["a", "b", "c"], "text": [" ".join(train_words), ", ".join(val_words), "too short"]}
                 ).to_parquet(docs)
    assignments = tmp_path / "assignments.parquet"
    pd.DataFrame({"id": ["a", "b", "c"], "group": ["a", "b", "c"], "side": ["train", "val", "val"],
                  "reason": ["group"] * 3, "overlap": [None] * 3}).to_parquet(assignments)
    out = tmp_path / "out"
    out.mkdir()
    stats = tokenize_corpus(docs, tok_path, out, assignments, TokenizeParams(shard_tokens=5000))
    assert stats["val_overlap_13gram"] == 0.25 and stats["val_docs"] == 2
    # stale assignments (another corpus) stop the stage, naming the file
    pd.DataFrame({"id": ["a", "b"], "side": ["train", "val"]}).to_parquet(assignments)
    with pytest.raises(InputError, match="assignments.parquet: does not list the documents"):
        tokenize_corpus(docs, tok_path, out, assignments, TokenizeParams(shard_tokens=5000))


def test_resumed_chunks_give_the_same_shards_and_an_altered_chunk_is_encoded_again(corpus, tmp_path):
    """Issue 29: chunks a killed run finished are not encoded again; one whose tokens were altered is."""
    from llmpipe.util.resume import ShardLedger

    docs, tok = corpus
    assignments = docs.parent / "assignments.parquet"
    cfg = TokenizeParams(shard_tokens=5000, workers=1, batch_bytes=20000)
    fresh = tokenize_corpus(docs, tok, tmp_path / "fresh", assignments, cfg)
    ledger = ShardLedger(tmp_path / "work", "params", "code")
    tokenize_corpus(docs, tok, tmp_path / "first", assignments, cfg, ledger)  # leaves its chunks
    chunks = sorted(ledger.folder.glob("records/*.json"))
    assert fresh["shards_run"] == len(chunks) >= 3
    tokens = ledger.path("chunk-00001-tokens.npy")
    altered = np.load(tokens)
    altered[5] += 1
    np.save(tokens, altered)
    again = tokenize_corpus(docs, tok, tmp_path / "again", assignments, cfg, ledger)
    assert (again["shards_resumed"], again["shards_run"]) == (len(chunks) - 1, 1)
    assert digest(tmp_path / "again") == digest(tmp_path / "fresh")
    assert {k: v for k, v in again.items() if not k.startswith("shards_")} == \
        {k: v for k, v in fresh.items() if not k.startswith("shards_")}
