"""Tracing text into the training data (issue 28): the suffix array against brute force, and spans
traced through the real path (tokenizer, tokenize stage core, trace-index stage core)."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from llmpipe.config.tokens import SplitParams, TokenizeParams, TokenizerParams
from llmpipe.stages.split import assign
from llmpipe.stages.tokenize import tokenize_corpus
from llmpipe.stages.trace_index import build_trace_index
from llmpipe.tokens.bpe import train_tokenizer
from llmpipe.tokens.suffix import SuffixIndex, build_suffix_array, write_index
from llmpipe.tokens.trace import Tracer, coverage
from llmpipe.util.io import InputError, write_parquet


@pytest.mark.parametrize("vocab,dtype", [(3, np.uint16), (500, np.uint16), (70_000, np.uint32)])
def test_suffix_array_sorts_every_suffix(vocab, dtype):
    tokens = np.random.default_rng(vocab).integers(0, vocab, 1500).astype(dtype)
    expected = sorted(range(len(tokens)), key=lambda i: tokens[i:].tolist())
    assert build_suffix_array(tokens).tolist() == expected


def test_find_and_longest_prefix_agree_with_brute_force(tmp_path):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 6, 3000).astype(np.uint16)  # a small alphabet: many repeats
    write_index(tmp_path, tokens)
    index = SuffixIndex.load(tmp_path)
    text = tokens.tolist()
    for _ in range(40):
        q = rng.integers(0, 6, int(rng.integers(1, 9))).astype(np.uint16)
        count = sum(text[i : i + len(q)] == q.tolist() for i in range(len(text)))
        lo, hi = index.find(q)
        assert hi - lo == count
        assert sorted(index.positions(lo, hi, 10**6).tolist()) == [
            i for i in range(len(text)) if text[i : i + len(q)] == q.tolist()]
        longest = max(k for k in range(len(q) + 1)
                      if any(text[i : i + k] == q[:k].tolist() for i in range(len(text))))
        assert index.longest_prefix_length(q) == longest


WORDS = ("king queen lord lady sword crown night day love death heaven earth fire water blood gold "
         "speak hear see know think come go stay fly weep laugh sing fair foul sweet bitter true").split()


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Twelve documents of random sentences, tokenized and indexed as the stages do."""
    root = tmp_path_factory.mktemp("trace")
    rng = random.Random(7)
    docs = [{"id": f"doc{i}", "source": "local", "path": f"plays/doc{i}.txt", "url": None, "title": f"Doc {i}",
             "text": "\n".join(sentence(rng, 12) for _ in range(30))} for i in range(12)]
    write_parquet(root / "docs.parquet", pd.DataFrame(docs))
    tok = train_tokenizer([d["text"] for d in docs], TokenizerParams(vocab_size=400, min_frequency=2))
    tok.save(str(root / "tokenizer.json"))
    pq.write_table(assign(root / "docs.parquet", SplitParams(val_fraction=0.2, seed=0))[0], root / "assignments.parquet")
    tokenize_corpus(root / "docs.parquet", root / "tokenizer.json", root / "tokens", root / "assignments.parquet",
                    TokenizeParams(shard_tokens=2000))
    (root / "index").mkdir()
    build_trace_index(root / "tokens", root / "tokenizer.json", root / "index")
    train_ids = set(pd.read_parquet(root / "tokens/train_docs.parquet")["id"])
    return root, {d["id"]: d for d in docs if d["id"] in train_ids}, {d["id"]: d for d in docs
                                                                       if d["id"] not in train_ids}


def test_planted_training_spans_are_all_found_with_their_documents(corpus):
    root, train, val = corpus
    tracer = Tracer(root / "index", root / "tokenizer.json", min_tokens=8)
    rng = random.Random(1)
    for doc_id, doc in list(train.items())[:6]:
        lines = doc["text"].split("\n")
        planted = "\n".join(lines[10:12])
        text = f"{sentence(rng, 5)} zzqx {planted} qxzz {sentence(rng, 5)}"
        result = tracer.trace(text)
        start = text.index(planted)
        hits = [s for s in result["spans"] if s["start"] <= start + 2 and s["end"] >= start + len(planted) - 2]
        assert hits, (doc_id, result["spans"])
        span = hits[0]
        assert span["text"] == text[span["start"] : span["end"]]
        found = {d["id"] for d in span["docs"]}
        assert doc_id in found and span["count"] >= 1
        occurrence = next(d for d in span["docs"] if d["id"] == doc_id)
        assert occurrence["location"] == doc["path"] and occurrence["match"].strip() in doc["text"]


def test_val_text_and_shuffled_text_give_no_false_spans(corpus):
    root, train, val = corpus
    tracer = Tracer(root / "index", root / "tokenizer.json", min_tokens=8)
    rng = random.Random(3)
    for doc in train.values():
        words = doc["text"].split()
        rng.shuffle(words)
        result = tracer.trace(" ".join(words[:200]))
        # a span could only be a chance repeat of 8+ tokens: none with 33 words drawn uniformly
        assert result["spans"] == [], result["spans"][:2]
        assert coverage(result) == 0.0


def test_a_whole_training_document_is_one_span(corpus):
    root, train, _ = corpus
    tracer = Tracer(root / "index", root / "tokenizer.json", min_tokens=8)
    doc = next(iter(train.values()))
    result = tracer.trace(doc["text"])
    assert [(s["start"], s["end"]) for s in result["spans"]] == [(0, len(doc["text"]))]
    assert result["spans"][0]["docs"][0]["token_offset"] == 0 and coverage(result) == 1.0


def test_missing_index_and_other_tokenizer_are_named(corpus, tmp_path):
    root, _, _ = corpus
    with pytest.raises(InputError, match="trace-index"):
        Tracer(tmp_path / "nothing", root / "tokenizer.json")
    other = train_tokenizer(["a b c d e f g"] * 10, TokenizerParams(vocab_size=300, min_frequency=1))
    other.save(str(tmp_path / "other.json"))
    with pytest.raises(InputError, match="re-run the trace-index stage"):
        Tracer(root / "index", tmp_path / "other.json")


def test_no_span_runs_over_a_literal_end_of_text(corpus):
    """The tokenizer makes a literal <|endoftext|> the special token; a match across it would join the
    end of one training document to the start of the next (they lie side by side in the index)."""
    root, train, _ = corpus
    tracer = Tracer(root / "index", root / "tokenizer.json", min_tokens=4)
    docs = pd.read_parquet(root / "tokens/train_docs.parquet")["id"].tolist()
    first, second = train[docs[0]]["text"], train[docs[1]]["text"]
    text = first[-120:] + "<|endoftext|>" + second[:120]
    spans = tracer.trace(text)["spans"]
    assert spans and all("<|endoftext|>" not in s["text"] for s in spans)
    assert max(s["end"] for s in spans if s["start"] < len(first[-120:])) <= len(first[-120:])
