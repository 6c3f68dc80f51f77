"""A 13-gram index of the training documents: which benchmark items (or any text) they contain.

Word n-grams as llmpipe.data.ngrams defines them (shared with the train/val decontamination): text is
lowercased and split into words (\\w+), and every run of 13 consecutive words is an n-gram. An item
is contaminated when any n-gram of its text (its context with the right answer) occurs in a training
document. Texts of fewer than 13 words have no n-gram and are never flagged; `seen` falls back to a
phrase search for them.

The index is two numpy arrays on disk, sorted by n-gram hash: the 64-bit hash (xxh64 of each word,
combined by a polynomial) and the document's row; 12 bytes per distinct (n-gram, document), loaded
with np.load (never pickle).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import numpy as np

from llmpipe.data.ngrams import WordHashes, ngram_hashes, words
from llmpipe.util.io import atomic_dir

__all__ = ["NgramIndex", "contaminated_ids", "words"]


class NgramIndex:
    def __init__(self, hashes: np.ndarray, docs: np.ndarray, doc_ids: list[str], n: int):
        self.hashes, self.docs, self.doc_ids, self.n = hashes, docs, doc_ids, n
        self._word = WordHashes()

    @classmethod
    def build(cls, documents: Iterable[tuple[str, str]], n: int = 13) -> "NgramIndex":
        """From (document id, text) pairs."""
        word = WordHashes()
        hs, ds, ids = [], [], []
        for row, (doc_id, text) in enumerate(documents):
            h = np.unique(ngram_hashes(word(words(text)), n))
            hs.append(h)
            ds.append(np.full(len(h), row, dtype=np.int32))
            ids.append(doc_id)
        hashes = np.concatenate(hs) if hs else np.empty(0, np.uint64)
        docs = np.concatenate(ds) if ds else np.empty(0, np.int32)
        order = np.lexsort((docs, hashes))
        return cls(hashes[order], docs[order], ids, n)

    def save(self, folder: Path) -> None:
        with atomic_dir(folder) as tmp:
            np.save(tmp / "hashes.npy", self.hashes)
            np.save(tmp / "docs.npy", self.docs)
            (tmp / "meta.json").write_text(json.dumps({"n": self.n, "doc_ids": self.doc_ids}))

    @classmethod
    def load(cls, folder: Path) -> "NgramIndex":
        meta = json.loads((Path(folder) / "meta.json").read_text())
        return cls(np.load(Path(folder) / "hashes.npy", allow_pickle=False),
                   np.load(Path(folder) / "docs.npy", allow_pickle=False), meta["doc_ids"], meta["n"])

    def text_hashes(self, text: str) -> np.ndarray:
        return ngram_hashes(self._word(words(text)), self.n)

    def contains_any(self, text: str) -> bool:
        h = self.text_hashes(text)
        if not len(h) or not len(self.hashes):
            return False
        pos = np.searchsorted(self.hashes, h).clip(max=len(self.hashes) - 1)
        return bool((self.hashes[pos] == h).any())

    def matches(self, text: str) -> tuple[int, dict[str, int]]:
        """(n-grams in the text, {document id: how many of them it contains}), most first."""
        h = np.unique(self.text_hashes(text))
        counts: dict[str, int] = {}
        lo, hi = np.searchsorted(self.hashes, h, "left"), np.searchsorted(self.hashes, h, "right")
        for a, b in zip(lo, hi):
            for d in self.docs[a:b]:
                counts[self.doc_ids[d]] = counts.get(self.doc_ids[d], 0) + 1
        return len(h), dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def contaminated_ids(index: NgramIndex, items) -> set[str]:
    """Ids of the items whose text (context + right answer) shares an n-gram with the training documents."""
    return {item.id for item in items if index.contains_any(item.text())}
