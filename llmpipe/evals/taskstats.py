"""Per-task statistics beside every benchmark accuracy: what it must beat, how sure it is, and gold bits per byte.

- random: the expected accuracy of a uniform guess (mean of 1/choices over the items);
- majority: the accuracy of always giving the most frequent gold answer of the scored items themselves
  (the gold position for multiple-choice and schema items, the gold text for language-modeling items).
  It is chosen knowing the answers, so it is an upper bound on every constant rule on these items;
- a Wilson score interval (95% by default) for an accuracy over n items: with 100 items an accuracy of
  0.25 spans about 0.17 to 0.34, so differences of that size are noise;
- significant: the interval's lower bound lies above the best trivial rule, max(random, majority);
- gold bits per byte: the model's negative log-likelihood of the right continuation in bits over its
  UTF-8 bytes, summed over the items before dividing. Continuous, it moves before accuracy leaves chance.
"""

from __future__ import annotations

import math
from collections import Counter

from llmpipe.evals.tasks import Item

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion successes / n (Wilson 1927). Unlike the normal
    approximation it stays inside [0, 1] and is not empty at 0 or n successes."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def answer_key(item: Item):
    """What a constant rule can repeat: the gold position, or for one-choice (language-modeling) items
    the gold continuation itself."""
    if item.kind == "language_modeling":
        return item.continuations[0]
    return item.gold


def majority(items: list[Item]) -> float:
    """Accuracy of always answering the most frequent gold key of these items (an upper bound on any
    constant rule, since it is picked with the answers in view)."""
    if not items:
        return 0.0
    return Counter(answer_key(i) for i in items).most_common(1)[0][1] / len(items)


def scored_bytes(context: str, continuation: str) -> int:
    """UTF-8 bytes of the text whose tokens the scorer sums: the continuation with the context's
    trailing whitespace, which score.encode_pair moves onto it (as lm-eval does)."""
    moved = context[len(context.rstrip()):]
    return len((moved + continuation).encode("utf-8"))


def gold_bits_bytes(item: Item, loglik: list[float]) -> tuple[float, int]:
    """(bits, bytes) of an item's right continuation: -log2 p(gold) and its scored bytes."""
    ctx, cont = item.pairs()[item.gold]
    return -loglik[item.gold] / math.log(2), scored_bytes(ctx, cont)
