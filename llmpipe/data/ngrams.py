"""Word n-grams hashed to uint64: the one definition shared by the train/val decontamination (the split
stage), the split's overlap metric (tokenize), the held-out check of sft-data and the benchmark
contamination index (llmpipe.evals.contamination).

As datatrove's and marin's decontamination: text is lowercased and split into words (\\w+), and every
run of n consecutive words is an n-gram, hashed as the xxh64 of each word combined by a polynomial.
Sets of n-grams are sorted unique uint64 arrays, looked up with np.searchsorted (8 bytes an n-gram).
"""

from __future__ import annotations

import re
from typing import Iterable

import numpy as np
import xxhash

WORD = re.compile(r"\w+")
MULT = np.uint64(0x9E3779B97F4A7C15)  # odd: the polynomial combination stays a bijection per position
# Characters of a text turned into words at once: a word list costs ~60 bytes a word, so a whole 8 MB
# document would cost ~100 MB; pieces keep it to a few MB whatever the document's size.
CHUNK_CHARS = 1 << 20


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def iter_word_pieces(text: str, n: int, chunk: int = CHUNK_CHARS):
    """The (lowercased) words of `text` in pieces of about `chunk` characters; each piece begins with the
    last n - 1 words of the one before, so every run of n words lies in exactly one piece. A piece never
    ends inside a word: a word that touches a piece's end starts the next piece (or, alone in its piece,
    is read whole)."""
    pos, carry = 0, []
    while pos < len(text):
        end = min(pos + chunk, len(text))
        # findall's strings, not match objects: 4x faster, this was the split and tokenize stages' hot loop.
        # Matches are maximal runs of \w, so the last one touches `end` exactly when text[end - 1] is a word
        # character, and then starts len(last) before it.
        found = WORD.findall(text, pos, end)
        if end < len(text) and found and WORD.match(text, end - 1, end):
            start = end - len(found[-1])
            if start > pos:
                end = start
                found.pop()
            else:  # one word longer than the piece: read it whole
                found[-1] = WORD.match(text, start).group()
                end = start + len(found[-1])
        # one lower() over the joined words: a space is neither cased nor case-ignorable, so each word's
        # case mapping (final sigma included) is what it is alone
        ws = carry + (" ".join(found).lower().split(" ") if found else [])
        yield ws
        carry = ws[max(0, len(ws) - (n - 1)):] if n > 1 else []
        pos = end


class WordHashes:
    """xxh64 of words, memoized (a corpus repeats its words). The memo is emptied when it reaches
    max_words: a web corpus's distinct words (typos, numbers, ids) grow without bound, ~100 bytes each."""

    def __init__(self, max_words: int = 2_000_000):
        self.cache: dict[str, int] = {}
        self.max_words = max_words

    def __call__(self, ws: list[str]) -> np.ndarray:
        cache = self.cache
        if len(cache) >= self.max_words:
            cache.clear()
        for w in set(ws).difference(cache):
            cache[w] = xxhash.xxh64_intdigest(w.encode("utf-8"))
        # map and fromiter run in C: no Python bytecode per word
        return np.fromiter(map(cache.__getitem__, ws), dtype=np.uint64, count=len(ws))


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


def sorted_unique(hashes: np.ndarray) -> np.ndarray:
    """np.unique by sorting: numpy 2.3's np.unique hashes first, 5x slower on millions of uint64."""
    out = np.sort(hashes)
    return out[np.concatenate(([True], out[1:] != out[:-1]))] if len(out) else out


class NgramSet:
    """A growing set of n-gram hashes: parts are merged into one sorted unique array when they hold as
    many hashes as it does, so adding costs O(log) merges per hash and lookups stay one searchsorted."""

    def __init__(self, n: int = 13, sample: int = 1):
        # sample > 1 keeps the n-grams whose hash is a multiple of it: the same n-grams on every side, so
        # overlap fractions stay unbiased while memory shrinks sample-fold (for corpus-wide metrics)
        self.n, self.sample = n, np.uint64(sample)
        self.word = WordHashes()
        self.sorted = np.empty(0, np.uint64)
        self._parts: list[np.ndarray] = []
        self._pending = 0

    def text_ngrams(self, text: str) -> np.ndarray:
        """The distinct (sampled) n-grams of a text, sorted."""
        parts = [ngram_hashes(self.word(ws), self.n) for ws in iter_word_pieces(text, self.n)]
        hashes = np.concatenate(parts) if parts else np.empty(0, np.uint64)
        if self.sample > 1:
            hashes = hashes[hashes % self.sample == 0]
        return sorted_unique(hashes)

    def add(self, hashes: np.ndarray) -> None:
        self._parts.append(hashes)
        self._pending += len(hashes)
        if self._pending >= max(len(self.sorted), 1 << 20):
            self._merge()

    def add_text(self, text: str) -> None:
        self.add(self.text_ngrams(text))

    def _merge(self) -> None:
        if self._parts:
            self.sorted = sorted_unique(np.concatenate([self.sorted, *self._parts]))
            self._parts, self._pending = [], 0

    def array(self) -> np.ndarray:
        """The distinct hashes, sorted."""
        self._merge()
        return self.sorted

    def __len__(self) -> int:
        return len(self.array())

    def contains(self, hashes: np.ndarray) -> np.ndarray:
        """A boolean per hash: whether the set holds it."""
        self._merge()
        if not len(self.sorted) or not len(hashes):
            return np.zeros(len(hashes), dtype=bool)
        pos = np.searchsorted(self.sorted, hashes).clip(max=len(self.sorted) - 1)
        return self.sorted[pos] == hashes

    def overlap(self, hashes: np.ndarray) -> float:
        """The fraction of `hashes` (distinct n-grams) the set holds; 0.0 for none."""
        return float(self.contains(hashes).mean()) if len(hashes) else 0.0


def set_of_texts(texts: Iterable[str], n: int = 13) -> NgramSet:
    s = NgramSet(n)
    for text in texts:
        s.add_text(text)
    return s
