"""Quality heuristics from published pretraining pipelines, each a named rule with its published default.

A document is split into lines, paragraphs and words once (`DocView`); every rule reads that shared view
(reference pipelines re-split the text in each filter, which is their main cost). A rule returns None
when the document passes, or a short reason when it fails.

Sources:
- Gopher: Rae et al. 2021, "Scaling Language Models: Methods, Analysis & Insights from Training
  Gopher", appendix A.1.1 (quality filter) and table A1 (repetition filter).
- C4: Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified Text-to-Text
  Transformer", section 2.2.
- FineWeb: Penedo et al. 2024, "The FineWeb Datasets: Decanting the Web for the Finest Text Data at
  Scale", section 3.5 (custom filters).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import numpy as np

from .config import QualityParams

TERMINAL_PUNCT = (".", "!", "?", '"', "'", "”", "’", "…", ":", ";", ")")
BULLETS = ("•", "●", "○", "■", "□", "▪", "▫", "–", "-", "*", "·")
GOPHER_STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
_ALPHA = re.compile(r"[^\W\d_]", re.UNICODE)
_PARAGRAPHS = re.compile(r"\n\s*\n")


@dataclass
class DocView:
    """The text split once; every rule reads these."""

    text: str

    @cached_property
    def lines(self) -> list[str]:
        return [ln.strip() for ln in self.text.split("\n") if ln.strip()]

    @cached_property
    def paragraphs(self) -> list[str]:
        return [p.strip() for p in _PARAGRAPHS.split(self.text) if p.strip()]

    @cached_property
    def line_dups(self) -> tuple[float, float]:
        """(share of lines repeating an earlier one, share of characters in them): two rules read it."""
        return _dup_fraction(self.lines)

    @cached_property
    def words(self) -> list[str]:
        return self.text.split()

    @cached_property
    def lower_words(self) -> list[str]:
        return [w.lower() for w in self.words]

    @cached_property
    def word_ids(self) -> np.ndarray:
        """Lower-cased words as small integers (for n-gram statistics in numpy)."""
        vocab: dict[str, int] = {}
        return np.array([vocab.setdefault(w, len(vocab)) for w in self.lower_words], dtype=np.uint64)

    @cached_property
    def word_lens(self) -> np.ndarray:
        return np.array([len(w) for w in self.words], dtype=np.int64)


def _dup_fraction(items: list[str]) -> tuple[float, float]:
    """(share of items that repeat an earlier one, share of characters in those repeats)."""
    if not items:
        return 0.0, 0.0
    seen: set[str] = set()
    dup_items = dup_chars = 0
    for item in items:
        if item in seen:
            dup_items += 1
            dup_chars += len(item)
        else:
            seen.add(item)
    total_chars = sum(len(i) for i in items) or 1
    return dup_items / len(items), dup_chars / total_chars


def _ngram_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """One 64-bit polynomial hash per word n-gram (collisions are negligible at document sizes)."""
    h = np.zeros(len(ids) - n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            h = h * np.uint64(1_000_003) + ids[k : len(ids) - n + 1 + k]
    return h


def _top_ngram_char_fraction(d: DocView, n: int) -> float:
    """Characters covered by the most frequent word n-gram, over all word characters (Gopher)."""
    if len(d.word_ids) < n:
        return 0.0
    hashes = _ngram_hashes(d.word_ids, n)
    _, first, counts = np.unique(hashes, return_index=True, return_counts=True)
    best = counts.max()
    if best < 2:
        return 0.0
    # among equally frequent n-grams, the one covering the most characters (ties are otherwise arbitrary)
    chars = max(int(d.word_lens[i : i + n].sum()) for i in first[counts == best])
    return float(best * chars / max(d.word_lens.sum(), 1))


def _dup_ngram_char_fraction(d: DocView, n: int) -> float:
    """Characters of words inside any n-gram that occurs more than once, over all word characters."""
    if len(d.word_ids) < n:
        return 0.0
    hashes = _ngram_hashes(d.word_ids, n)
    _, inverse, counts = np.unique(hashes, return_inverse=True, return_counts=True)
    starts = np.flatnonzero(counts[inverse] > 1)
    cover = np.zeros(len(d.word_ids) + 1, dtype=np.int64)
    np.add.at(cover, starts, 1)
    np.add.at(cover, starts + n, -1)
    covered = np.cumsum(cover[:-1]) > 0
    return float(d.word_lens[covered].sum() / max(d.word_lens.sum(), 1))


# --- the rules ---------------------------------------------------------------------------------------

def gopher_word_count(d: DocView, p) -> str | None:
    """Gopher: between 50 and 100,000 words."""
    n = len(d.words)
    return None if p.min_words <= n <= p.max_words else f"{n} words"


def gopher_mean_word_length(d: DocView, p) -> str | None:
    """Gopher: mean word length between 3 and 10 characters."""
    if not d.words:
        return "no words"
    mean = sum(len(w) for w in d.words) / len(d.words)
    return None if p.min <= mean <= p.max else f"mean word length {mean:.2f}"


def gopher_symbol_ratio(d: DocView, p) -> str | None:
    """Gopher: at most 0.1 hash symbols or ellipses per word."""
    symbols = d.text.count("#") + d.text.count("...") + d.text.count("…")
    ratio = symbols / max(len(d.words), 1)
    return None if ratio <= p.max_ratio else f"symbol/word ratio {ratio:.3f}"


def gopher_bullet_lines(d: DocView, p) -> str | None:
    """Gopher: at most 90% of lines start with a bullet point."""
    if not d.lines:
        return None
    share = sum(ln.startswith(BULLETS) for ln in d.lines) / len(d.lines)
    return None if share <= p.max_fraction else f"{share:.0%} bullet lines"


def gopher_ellipsis_lines(d: DocView, p) -> str | None:
    """Gopher: at most 30% of lines end with an ellipsis."""
    if not d.lines:
        return None
    share = sum(ln.endswith(("...", "…")) for ln in d.lines) / len(d.lines)
    return None if share <= p.max_fraction else f"{share:.0%} ellipsis lines"


def gopher_alpha_words(d: DocView, p) -> str | None:
    """Gopher: at least 80% of words contain an alphabetic character."""
    if not d.words:
        return "no words"
    share = sum(bool(_ALPHA.search(w)) for w in d.words) / len(d.words)
    return None if share >= p.min_fraction else f"{share:.0%} alphabetic words"


def gopher_stop_words(d: DocView, p) -> str | None:
    """Gopher: at least 2 of the English stop words the, be, to, of, and, that, have, with."""
    found = len(GOPHER_STOP_WORDS.intersection(d.lower_words))
    return None if found >= p.min_count else f"{found} stop words"


def gopher_repetition(d: DocView, p) -> str | None:
    """Gopher table A1: duplicate lines/paragraphs (by count and by characters), the most frequent
    2-4-gram's character share, and the share of characters in duplicated 5-10-grams."""
    line_frac, line_chars = d.line_dups
    para_frac, para_chars = _dup_fraction(d.paragraphs)
    if line_frac > p.max_dup_line_fraction:
        return f"duplicate lines {line_frac:.0%}"
    if para_frac > p.max_dup_paragraph_fraction:
        return f"duplicate paragraphs {para_frac:.0%}"
    if line_chars > p.max_dup_line_char_fraction:
        return f"characters in duplicate lines {line_chars:.0%}"
    if para_chars > p.max_dup_paragraph_char_fraction:
        return f"characters in duplicate paragraphs {para_chars:.0%}"
    for n, limit in p.top_ngram_max_fraction.items():
        share = _top_ngram_char_fraction(d, int(n))
        if share > limit:
            return f"top {n}-gram covers {share:.0%}"
    for n, limit in p.dup_ngram_max_fraction.items():
        share = _dup_ngram_char_fraction(d, int(n))
        if share > limit:
            return f"duplicated {n}-grams cover {share:.0%}"
    return None


def c4_lorem_ipsum(d: DocView, p) -> str | None:
    """C4: pages with placeholder "lorem ipsum" text are removed."""
    return "lorem ipsum" if "lorem ipsum" in d.text.lower() else None


def c4_curly_bracket(d: DocView, p) -> str | None:
    """C4: pages with a curly bracket (code, not natural language) are removed."""
    return "curly bracket" if "{" in d.text else None


def c4_boilerplate_lines(d: DocView, p) -> str | None:
    """C4 drops lines mentioning javascript and cookie/privacy/terms-of-use notices; here a document
    is removed when such lines make up more than a share of its lines (0 by default: any)."""
    if not d.lines:
        return None
    marks = ("javascript", "cookie", "privacy policy", "terms of use")
    share = sum(any(m in ln.lower() for m in marks) for ln in d.lines) / len(d.lines)
    return None if share <= p.max_fraction else f"{share:.0%} boilerplate lines"


def fineweb_line_punct(d: DocView, p) -> str | None:
    """FineWeb: at least 12% of lines end with terminal punctuation."""
    if not d.lines:
        return "no lines"
    share = sum(ln.endswith(TERMINAL_PUNCT) for ln in d.lines) / len(d.lines)
    return None if share >= p.min_fraction else f"{share:.0%} lines end in punctuation"


def fineweb_short_lines(d: DocView, p) -> str | None:
    """FineWeb: at most 67% of lines are 30 characters or shorter."""
    if not d.lines:
        return None
    share = sum(len(ln) <= p.max_chars for ln in d.lines) / len(d.lines)
    return None if share <= p.max_fraction else f"{share:.0%} short lines"


def fineweb_dup_line_chars(d: DocView, p) -> str | None:
    """FineWeb: at most 10% of characters are in lines that repeat an earlier line."""
    _, chars = d.line_dups
    return None if chars <= p.max_fraction else f"{chars:.0%} characters in duplicate lines"


def fineweb_list_ratio(d: DocView, p) -> str | None:
    """FineWeb: at most 0.3 newlines per word (list-like pages)."""
    ratio = d.text.count("\n") / max(len(d.words), 1)
    return None if ratio <= p.max_ratio else f"{ratio:.2f} newlines per word"


RULES: dict[str, Callable[[DocView, object], str | None]] = {f.__name__: f for f in (
    gopher_word_count, gopher_mean_word_length, gopher_symbol_ratio, gopher_bullet_lines,
    gopher_ellipsis_lines, gopher_alpha_words, gopher_stop_words, gopher_repetition,
    c4_lorem_ipsum, c4_curly_bracket, c4_boilerplate_lines,
    fineweb_line_punct, fineweb_short_lines, fineweb_dup_line_chars, fineweb_list_ratio,
)}


def first_failure(text: str, params: QualityParams) -> tuple[str, str] | None:
    """(rule name, reason) of the first enabled rule the document fails, or None if it passes all."""
    view = DocView(text)
    for name, rule in RULES.items():
        rule_params = getattr(params, name)
        if rule_params.enabled:
            reason = rule(view, rule_params)
            if reason is not None:
                return name, reason
    return None
