"""An in-domain task built from the held-out (val) documents, scored as HellaSwag is.

Each item is a passage of a val document cut after a word, its true continuation (the next words), and
distractors: continuations of about the same length taken at random word boundaries of *other* val
documents (of the same document, far away, when the val split holds one document only). A model that
learned the corpus prefers the true continuation; chance is 1 / choices. Only val documents are read,
so no item was ever trained on.
"""

from __future__ import annotations

import random
import re

from llmpipe.evals.tasks import Item
from llmpipe.util.io import InputError

TASK = "indomain"


def _word_starts(text: str) -> list[int]:
    """Positions of the spaces that begin a word (" word"), where a continuation may start."""
    return [m.start() for m in re.finditer(r" (?=\w)", text)]


def _continuation(text: str, start: int, chars: int) -> str:
    """From `start` (a space) about `chars` characters, ending at the end of a word."""
    piece = text[start : start + chars + 40]
    cut = [m.end() for m in re.finditer(r"\w(?=\W|$)", piece) if m.end() >= chars * 0.6]
    end = next((c for c in cut if c >= chars), cut[-1] if cut else len(piece))
    return piece[:end]


def build_indomain(val_texts: list[str], n_items: int, choices: int = 4, context_chars: int = 400,
                   continuation_chars: int = 80, seed: int = 0, seen=None, tries: int = 50) -> list[Item]:
    """`seen(text) -> bool` (the training documents' n-gram index): a passage found there is drawn again,
    up to `tries` times. A corpus can hold one text twice (two editions of a play) across the split."""
    docs = [t for t in val_texts if len(t) > 4 * (context_chars + continuation_chars)]
    if not docs:
        raise InputError(f"the val split has no document longer than {4 * (context_chars + continuation_chars)} "
                         f"characters to build the in-domain task from (lower tasks.indomain.context_chars)")
    starts = [[s for s in _word_starts(t) if context_chars <= s < len(t) - 2 * continuation_chars] for t in docs]
    weights = [len(s) for s in starts]
    rng = random.Random(seed)
    items = []
    for n in range(n_items):
        for _ in range(tries):
            d = rng.choices(range(len(docs)), weights)[0]
            cut = rng.choice(starts[d])
            text = docs[d]
            line = text.rfind("\n", 0, cut - context_chars)  # the context begins at a line's start
            context = text[line + 1 if line >= 0 else cut - context_chars : cut]
            true = _continuation(text, cut, continuation_chars)
            if seen is None or not seen(context + true):
                break
        options = [true]
        while len(options) < choices:
            others = [o for o in range(len(docs)) if o != d] or [d]
            o = rng.choice(others)
            s = rng.choice(starts[o])
            if o == d and abs(s - cut) < 20 * continuation_chars:
                continue
            option = _continuation(docs[o], s, len(true))
            if option not in options:
                options.append(option)
        order = list(range(choices))
        rng.shuffle(order)
        items.append(Item(TASK, str(n), "multiple_choice", [context], [options[i] for i in order], order.index(0)))
    return items
