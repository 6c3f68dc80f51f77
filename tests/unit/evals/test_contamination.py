"""The 13-gram index (contaminated items, `llmpipe seen`) and the in-domain task from the val split."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pandas as pd

from llmpipe.config.tokens import SplitParams
from llmpipe.evals.contamination import NgramIndex, contaminated_ids
from llmpipe.evals.indomain import build_indomain
from llmpipe.evals.tasks import Item
from llmpipe.stages import split as split_stage
from llmpipe.tokens.split import read_val_mask

RNG = np.random.default_rng(0)
VOCAB = [f"w{i}" for i in range(500)]


def text(n: int) -> str:
    return " ".join(RNG.choice(VOCAB, n))


def test_an_item_sharing_13_words_with_a_training_document_is_contaminated(tmp_path):
    docs = {"a": text(300), "b": text(300)}
    index = NgramIndex.build(docs.items())
    index.save(tmp_path / "index")
    index = NgramIndex.load(tmp_path / "index")
    words_b = docs["b"].split()
    planted = "Q: " + " ".join(words_b[100:113]).upper() + "!"  # case and punctuation do not matter
    near = " ".join(words_b[100:112]) + " zzz"  # 12 words only
    items = [Item("t", "0", "multiple_choice", [planted], [" x", " y"], 0),
             Item("t", "1", "multiple_choice", [near], [" x", " y"], 0),
             Item("t", "2", "multiple_choice", ["fresh " + text(20)], [" x", " y"], 0)]
    assert contaminated_ids(index, items) == {"0"}
    total, found = index.matches(" ".join(words_b[50:80]))
    assert total == 18 and found == {"b": 18}
    assert index.matches(text(5))[0] == 0


def test_indomain_items_take_the_true_continuation_among_other_documents():
    docs = [f"doc{d} " + " ".join(f"d{d}w{i}" for i in range(600)) for d in range(3)]
    items = build_indomain(docs, 30, choices=4, context_chars=100, continuation_chars=30, seed=1)
    assert len(items) == 30 and {i.gold for i in items} == {0, 1, 2, 3}
    for item in items:
        ctx, true = item.pairs()[item.gold]
        doc = ctx.split()[0][:4] if ctx.split()[0].startswith("doc") else ctx.split()[-1].split("w")[0]
        assert (ctx + true) in "".join(docs)  # the true continuation follows its context
        assert all(c.startswith(" ") for c in item.continuations) and len(set(item.continuations)) == 4
        src = ctx.split()[-1].split("w")[0]
        others = [c for j, c in enumerate(item.continuations) if j != item.gold]
        assert not any(src + "w" in c for c in others), (doc, others)
    assert build_indomain(docs, 30, 4, 100, 30, seed=1) == items
    # passages the training documents hold are drawn again (here: all of document 0)
    clean = build_indomain(docs, 30, 4, 100, 30, seed=1, seen=lambda text: "d0w" in text)
    assert not any("d0w" in i.text() for i in clean) and any("d0w" in i.text() for i in items)


def test_seen_answers_from_the_tasks_stage_index(tmp_path):
    docs = pd.DataFrame({"id": ["doc-a", "doc-b", "doc-c"], "text": [text(200), text(200), text(200)]})
    (tmp_path / "data/dedup").mkdir(parents=True)
    docs.to_parquet(tmp_path / "data/dedup/docs.parquet")
    split_stage.run(SimpleNamespace(split=SplitParams(val_fraction=0.01)), tmp_path)
    train = ~read_val_mask(tmp_path / "data/split/assignments.parquet", tmp_path / "data/dedup/docs.parquet")
    docs = docs[train].reset_index(drop=True)  # the index holds the train split, as the tasks stage's
    index = NgramIndex.build(zip(docs["id"], docs["text"]))
    index.save(tmp_path / "data/evals/index")
    seen = lambda t: subprocess.run([sys.executable, "-m", "llmpipe.cli", "--root", str(tmp_path), "seen", t],  # noqa: E731
                                    capture_output=True, text=True)
    long = " ".join(docs["text"][1].split()[10:40])
    out = seen(long)
    assert out.returncode == 0 and "18 13-grams; seen" in out.stdout and f"{docs['id'][1]}\t18/18" in out.stdout
    out = seen(" ".join(docs["text"][0].split()[5:8]))  # 3 words: phrase search over the train split
    assert out.returncode == 0 and "phrase search" in out.stdout and docs["id"][0] in out.stdout
    assert "not seen" in seen("nothing like this in there at all, no").stdout
