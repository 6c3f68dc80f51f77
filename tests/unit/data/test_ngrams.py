"""Word n-grams read in pieces (bounded memory on long documents) are exactly the n-grams of the whole."""

from __future__ import annotations

import random

import numpy as np

from llmpipe.data.ngrams import NgramSet, iter_word_pieces, words

WORDS = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta", "Σοφία", "naïve", "x"]


def test_pieces_hold_every_ngram_once_whatever_the_piece_size():
    rng = random.Random(0)
    for trial in range(200):
        text = " ".join(rng.choice(WORDS) + rng.choice(["", "", ",", "\n"]) for _ in range(rng.randint(0, 800)))
        chunk, n = rng.randint(1, 200), rng.randint(1, 13)
        full = words(text)
        expected = {tuple(full[i : i + n]) for i in range(len(full) - n + 1)}
        got = [tuple(ws[i : i + n]) for ws in iter_word_pieces(text, n, chunk) for i in range(len(ws) - n + 1)]
        assert set(got) == expected and len(got) == max(len(full) - n + 1, 0), (trial, chunk, n)


def test_a_hash_sample_keeps_overlap_fractions():
    rng = random.Random(1)
    train = " ".join(rng.choice(WORDS) for _ in range(100_000))
    val = train[: len(train) // 3] + " " + " ".join(rng.choice(WORDS) for _ in range(30_000))
    exact, sampled = NgramSet(13), NgramSet(13, sample=16)
    exact.add_text(train)
    sampled.add_text(train)
    full, part = exact.overlap(exact.text_ngrams(val)), sampled.overlap(sampled.text_ngrams(val))
    assert 0.4 < full < 0.6 and abs(part - full) < 0.03  # ~4,000 sampled n-grams: 3 standard errors
    assert len(sampled) < len(exact) / 8  # a sixteenth, give or take
    assert np.all(sampled.array() % np.uint64(16) == 0)
