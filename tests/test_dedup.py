import random

import pandas as pd

from llmpipe.config import DedupParams
from llmpipe.stages.dedup import dedup_documents

random.seed(0)
VOCAB = [f"w{i}" for i in range(5000)]


def text(n=300, seed=0):
    rng = random.Random(seed)
    return " ".join(rng.choice(VOCAB) for _ in range(n))


def perturb(t, k, seed=1):
    words = t.split()
    rng = random.Random(seed)
    for i in rng.sample(range(len(words)), k):
        words[i] = "changed"
    return " ".join(words)


def test_exact_near_and_distinct():
    base = text(seed=1)
    docs = pd.DataFrame({
        "id": ["a", "a-case", "a-near", "b", "c"],
        "text": [base, base.upper().replace(" ", "  ") + "!!", perturb(base, 2), text(seed=2), text(seed=3)],
    })
    kept, removed, stats = dedup_documents(docs, DedupParams())
    assert list(kept["id"]) == ["a", "b", "c"]
    assert stats == {"docs_in": 5, "exact_dups": 1, "near_dups": 1, "docs_out": 3}
    rows = removed.set_index("id")
    assert rows.loc["a-case", "duplicate_of"] == "a" and rows.loc["a-case", "kind"] == "exact"
    assert rows.loc["a-near", "duplicate_of"] == "a" and rows.loc["a-near", "kind"] == "near"
    assert 0.75 <= rows.loc["a-near", "similarity"] < 1.0


def test_verification_rejects_weak_candidates():
    base = text(seed=5)
    far = perturb(base, 120, seed=9)  # ~40% of words changed: Jaccard of 5-grams far below 0.75
    docs = pd.DataFrame({"id": ["x", "y"], "text": [base, far]})
    kept, removed, _ = dedup_documents(docs, DedupParams(bands=56, rows=2))  # very permissive LSH
    assert len(kept) == 2 and removed.empty


def test_empty_short_all_duplicates():
    docs = pd.DataFrame({"id": ["e", "s", "d1", "d2", "d3"], "text": ["", "two words", "same", "same", "same"]})
    kept, removed, stats = dedup_documents(docs, DedupParams())
    assert list(kept["id"]) == ["e", "s", "d1"]
    assert stats["exact_dups"] == 2
    assert set(removed["duplicate_of"]) == {"d1"}


def test_cluster_keeps_first_document():
    base = text(seed=7)
    docs = pd.DataFrame({"id": ["first", "second", "third"],
                         "text": [perturb(base, 1, 1), base, perturb(base, 1, 2)]})
    kept, removed, _ = dedup_documents(docs, DedupParams(exact=False))
    assert list(kept["id"]) == ["first"]
    assert set(removed["duplicate_of"]) == {"first"}
