"""A 13-gram index of the training documents: which benchmark items (or any text) they contain.

As datatrove's and marin's decontamination: text is lowercased and split into words (\\w+), and every
run of 13 consecutive words is an n-gram. An item is contaminated when any n-gram of its text (its
context with the right answer) occurs in a training document. Texts of fewer than 13 words have no
n-gram and are never flagged; `seen` falls back to a phrase search for them.

The index is two numpy arrays on disk, sorted by n-gram hash: the 64-bit hash (xxh64 of each word,
combined by a polynomial) and the document's row; 12 bytes per distinct (n-gram, document), loaded
with np.load (never pickle).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable

import numpy as np
import xxhash

from llmpipe.util.io import atomic_dir

WORD = re.compile(r"\w+")
MULT = np.uint64(0x9E3779B97F4A7C15)  # odd: the polynomial combination stays a bijection per position


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


class _WordHashes:
    def __init__(self):
        self.cache: dict[str, int] = {}

    def __call__(self, ws: list[str]) -> np.ndarray:
        get = self.cache.get
        out = np.empty(len(ws), dtype=np.uint64)
        for i, w in enumerate(ws):
            h = get(w)
            if h is None:
                h = self.cache[w] = xxhash.xxh64_intdigest(w.encode("utf-8"))
            out[i] = h
        return out


def ngram_hashes(word_hashes: np.ndarray, n: int) -> np.ndarray:
    """Hash of every window of n words: sum of h[i + j] * MULT**j (mod 2**64), vectorized over i."""
    if len(word_hashes) < n:
        return np.empty(0, dtype=np.uint64)
    m = len(word_hashes) - n + 1
    acc = np.zeros(m, dtype=np.uint64)
    power = np.uint64(1)
    with np.errstate(over="ignore"):
        for j in range(n):
            acc += word_hashes[j : j + m] * power
            power = power * MULT
    return acc


class NgramIndex:
    def __init__(self, hashes: np.ndarray, docs: np.ndarray, doc_ids: list[str], n: int):
        self.hashes, self.docs, self.doc_ids, self.n = hashes, docs, doc_ids, n
        self._word = _WordHashes()

    @classmethod
    def build(cls, documents: Iterable[tuple[str, str]], n: int = 13) -> "NgramIndex":
        """From (document id, text) pairs."""
        word = _WordHashes()
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
