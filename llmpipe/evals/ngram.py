"""Count-based baselines over token ids: an interpolated modified Kneser-Ney n-gram model and an
add-one unigram, in numpy.

The model is a trie stored level by level. A k-gram is the pair (id of its first k-1 tokens, last
token), packed into one uint64 key `prefix_id * vocab + token`; the keys of a level are sorted and
unique, so a gram's id is its rank (np.unique while fitting, np.searchsorted while scoring). Ids, not
raw tokens, go into the keys, so any order fits in 64 bits whatever the vocabulary.

Interpolated modified Kneser-Ney (Chen & Goodman 1998): at level k, for context h and token w,

    P_k(w | h) = (c_k(hw) - D_k(c_k(hw)) + gamma_k(h) * P_{k-1}(w | h')) / sum_w c_k(hw)

where h' drops h's oldest token, gamma_k(h) = D_k1 * N1(h) + D_k2 * N2(h) + D_k3 * N3+(h) (how many
tokens follow h once, twice, three or more times), c_k is the raw count at the highest level and the
continuation count (distinct tokens seen before the gram) below it, and the three discounts per level
come from the counts of counts. The bottom level interpolates with the uniform distribution over the
vocabulary, and a context the training tokens never show falls back to the level below, so every
token in every context gets a probability and each distribution sums to 1.

Streams are padded on the left with order-1 copies of a pad id (the end-of-text token), so a stream's
first tokens are predicted from a "start of text" context, in training and in scoring alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Scoring works on slices of this many tokens at a time, so memory stays bounded for long streams.
SCORE_CHUNK = 1 << 20
MIN_DISCOUNT = 0.05  # keeps mass for the lower levels (and unseen tokens) on degenerate counts


@dataclass(frozen=True)
class Level:
    """The grams of one order: sorted keys, their discounted counts, and per context (a gram id of
    the level below) the total count and the mass handed to the level below."""

    keys: np.ndarray  # uint64, sorted: prefix_id * vocab + token
    kept: np.ndarray  # float64 per gram: count - discount(count)
    total: np.ndarray  # float64 per context
    backoff: np.ndarray  # float64 per context: gamma's numerator
    discounts: tuple[float, float, float]


@dataclass(frozen=True)
class KneserNey:
    order: int
    vocab_size: int
    pad_id: int
    levels: tuple[Level, ...]  # levels[k - 1] holds the k-grams

    def token_bits(self, rows: np.ndarray) -> np.ndarray:
        """-log2 P of rows[:, j] given rows[:, j-order+1 : j], for every j >= order - 1: an (R, L)
        array of ids gives (R, L - order + 1) bits."""
        rows = np.asarray(rows, dtype=np.int64)
        n, vocab = self.order, np.uint64(self.vocab_size)
        width = rows.shape[1] - n + 1
        if width < 1:
            raise ValueError(f"rows of {rows.shape[1]} tokens are shorter than the order {n}")
        prev = np.zeros(rows.shape, dtype=np.int64)  # the empty gram (id 0) ends everywhere
        prob = None
        for k, level in enumerate(self.levels, start=1):
            # ids of the k-grams ending at each position (-1: unseen, or too close to the start)
            ids = np.full(rows.shape, -1, dtype=np.int64)
            ctx = prev[:, k - 2 : -1] if k > 1 else prev
            keys = ctx.astype(np.uint64) * vocab + rows[:, k - 1 :].astype(np.uint64)
            at = np.searchsorted(level.keys, keys).clip(max=len(level.keys) - 1)
            ids[:, k - 1 :] = np.where((ctx >= 0) & (level.keys[at] == keys), at, -1)
            # the target positions j = n-1 .. L-1: context ids end at j-1, gram ids at j
            gram = ids[:, n - 1 :]
            kept = np.where(gram >= 0, level.kept[gram.clip(min=0)], 0.0)
            if k == 1:
                prob = (kept + level.backoff[0] / self.vocab_size) / level.total[0]
            else:
                h = prev[:, n - 2 : -1]
                total = np.where(h >= 0, level.total[h.clip(min=0)], 0.0)
                seen = total > 0
                safe = np.where(seen, total, 1.0)
                mixed = (kept + level.backoff[h.clip(min=0)] * prob) / safe
                prob = np.where(seen, mixed, prob)
            prev = ids
        return -np.log2(prob)

    def stream_bits(self, tokens: np.ndarray) -> np.ndarray:
        """Bits of every token of a stream given the tokens before it (a pad context at the start)."""
        x = np.concatenate([np.full(self.order - 1, self.pad_id, dtype=np.int64), np.asarray(tokens, np.int64)])
        out = [self.token_bits(x[None, s : s + SCORE_CHUNK + self.order - 1])[0]
               for s in range(0, len(tokens), SCORE_CHUNK)]
        return np.concatenate(out) if out else np.zeros(0)

    def probs(self, context: np.ndarray) -> np.ndarray:
        """P(w | context) for every w in the vocabulary (the last order-1 tokens of `context` count;
        a shorter context is padded)."""
        ctx = np.concatenate([np.full(self.order - 1, self.pad_id, dtype=np.int64),
                              np.asarray(context, np.int64)])[len(context):]
        rows = np.concatenate([np.tile(ctx, (self.vocab_size, 1)),
                               np.arange(self.vocab_size, dtype=np.int64)[:, None]], axis=1)
        return 2.0 ** -self.token_bits(rows)[:, 0]


def _discounts(counts: np.ndarray) -> tuple[float, float, float]:
    """Chen & Goodman's estimates from how many grams occur 1, 2, 3 and 4 times; clipped to (0, i]."""
    n1, n2, n3, n4 = (int(np.count_nonzero(counts == i)) for i in (1, 2, 3, 4))
    if min(n1, n2, n3, n4) == 0:  # too few grams to estimate: a middle-of-the-road choice
        d = (0.5, 1.0, 1.5)
    else:
        y = n1 / (n1 + 2 * n2)
        d = (1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3)
    return tuple(float(np.clip(v, MIN_DISCOUNT, i)) for i, v in enumerate(d, start=1))


def _level(keys: np.ndarray, counts: np.ndarray, n_contexts: int, vocab: int) -> Level:
    d1, d2, d3 = _discounts(counts)
    cut = np.select([counts >= 3, counts == 2, counts == 1], [d3, d2, d1], 0.0)
    ctx = (keys // np.uint64(vocab)).astype(np.int64)
    counts = counts.astype(np.float64)
    return Level(keys, counts - cut, np.bincount(ctx, counts, n_contexts), np.bincount(ctx, cut, n_contexts),
                 (d1, d2, d3))


def fit_kneser_ney(tokens: np.ndarray, order: int, vocab_size: int, pad_id: int = 0) -> KneserNey:
    """Count every 1..order-gram of `tokens` (padded on the left) and build the model."""
    if order < 1:
        raise ValueError(f"order must be at least 1, not {order}")
    x = np.concatenate([np.full(order - 1, pad_id, dtype=np.int64), np.asarray(tokens, np.int64)])
    if len(x) == 0 or x.max(initial=0) >= vocab_size or x.min(initial=0) < 0:
        raise ValueError(f"tokens must be non-empty ids below the vocabulary size {vocab_size}")
    vocab = np.uint64(vocab_size)
    prev = np.zeros(len(x), dtype=np.int64)  # ids of the (k-1)-grams ending at each position
    grams = []  # per level: keys, raw counts, and each gram's suffix (its last k-1 tokens) as an id
    for k in range(1, order + 1):
        ctx = prev[k - 2 : -1] if k > 1 else prev
        keys = ctx.astype(np.uint64) * vocab + x[k - 1 :].astype(np.uint64)
        uniq, first, inverse, raw = np.unique(keys, return_index=True, return_inverse=True, return_counts=True)
        grams.append((uniq, raw, prev[k - 1 :][first]))
        prev = np.full(len(x), -1, dtype=np.int64)
        prev[k - 1 :] = inverse
    levels = []
    for k, (uniq, raw, _) in enumerate(grams, start=1):
        # below the top, a gram counts the distinct tokens seen before it (its continuation count)
        counts = raw if k == order else np.bincount(grams[k][2], minlength=len(uniq))
        levels.append(_level(uniq, counts, 1 if k == 1 else len(grams[k - 2][0]), vocab_size))
    return KneserNey(order, vocab_size, pad_id, tuple(levels))


def unigram_bits(train: np.ndarray, tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    """-log2 P of each token under the add-one (Laplace) unigram of `train`: the trivial floor."""
    counts = np.bincount(np.asarray(train, np.int64), minlength=vocab_size).astype(np.float64)
    return -np.log2((counts[np.asarray(tokens, np.int64)] + 1) / (counts.sum() + vocab_size))
