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
from itertools import repeat
from typing import Callable

import numpy as np

from llmpipe.config.filter import QualityParams

TERMINAL_PUNCT = (".", "!", "?", '"', "'", "”", "’", "…", ":", ";", ")")
BULLETS = ("•", "●", "○", "■", "□", "▪", "▫", "–", "-", "*", "·")
GOPHER_STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
# From a word's first alphabetic character to the word's end: one match per word that has a letter.
_ALPHA_WORD = re.compile(r"[^\W\d_]\S*")
# ASCII fast path: delete every byte that is neither a letter nor whitespace; a word without a letter
# then vanishes from the split. \x1c-\x1f separate words for str.split but not bytes.split: made spaces.
_ASCII_SEPARATORS_AS_SPACE = bytes(0x20 if 0x1C <= b <= 0x1F else b for b in range(256))
_ASCII_NOT_LETTER_OR_SPACE = bytes(b for b in range(128)
                                   if not (chr(b).isalpha() or chr(b).isspace()))
_PARAGRAPHS = re.compile(r"\n\s*\n")
_PRIME = 1_000_003  # n-gram hash: h(w1..wn) = h(w1..wn-1) * _PRIME + id(wn), modulo 2**64
_MASK64 = (1 << 64) - 1


@dataclass
class DocView:
    """The text split once; every rule reads these. Per-word work is done by C-level calls over the
    whole text (split, map, one regex pass) rather than Python loops over words."""

    text: str

    def __post_init__(self):
        self._repeats: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @cached_property
    def lines(self) -> list[str]:
        return [ln for ln in map(str.strip, self.text.split("\n")) if ln]

    @cached_property
    def paragraphs(self) -> list[str]:
        return [p for p in map(str.strip, _PARAGRAPHS.split(self.text)) if p]

    @cached_property
    def line_dups(self) -> tuple[float, float]:
        """(share of lines repeating an earlier one, share of characters in them): two rules read it."""
        return _dup_fraction(self.lines)

    @cached_property
    def lower_text(self) -> str:
        return self.text.lower()

    @cached_property
    def words(self) -> list[str]:
        return self.text.split()

    @cached_property
    def lower_words(self) -> list[str]:
        return self.lower_text.split()  # lower-casing never creates or removes whitespace

    @cached_property
    def word_ids(self) -> np.ndarray:
        """Lower-cased words as 64-bit hashes (for n-gram statistics in numpy; only equality matters)."""
        return np.fromiter(map(hash, self.lower_words), dtype=np.int64, count=len(self.lower_words)).view(np.uint64)

    @cached_property
    def word_id_list(self) -> list[int]:
        return self.word_ids.tolist()

    @cached_property
    def word_lens(self) -> np.ndarray:
        # ASCII: lower-casing keeps every length, so the lower-cased split (needed anyway) serves.
        words = self.lower_words if self.text.isascii() else self.words
        return np.fromiter(map(len, words), dtype=np.int64, count=len(words))

    @cached_property
    def total_word_chars(self) -> int:
        return max(int(self.word_lens.sum()), 1)

    @cached_property
    def alpha_words(self) -> int:
        """Words with an alphabetic character, counted by one regex pass over the text."""
        if self.text.isascii():
            letters = self.text.encode("ascii").translate(_ASCII_SEPARATORS_AS_SPACE, _ASCII_NOT_LETTER_OR_SPACE)
            return len(letters.split())
        return len(_ALPHA_WORD.findall(self.text))

    def count_lines(self, method, arg) -> int:
        """How many lines `method(line, arg)` holds for (str.startswith, str.endswith), at C speed."""
        return sum(map(method, self.lines, repeat(arg)))

    @cached_property
    def line_lens(self) -> np.ndarray:
        return np.fromiter(map(len, self.lines), dtype=np.int64, count=len(self.lines))

    def repeated_ngrams(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(start positions, hashes) of the word n-grams (n >= 2) that occur more than once, equal
        n-grams next to each other. Bigrams are grouped by one numpy sort over the document. An n-gram
        can repeat only where both of its (n-1)-grams repeat, so longer n-grams are hashed and grouped at
        those positions only: in numpy when there are many, in plain Python when there are a handful
        (cheaper than a numpy call)."""
        if n not in self._repeats:
            ids = self.word_ids
            if n == 2:
                with np.errstate(over="ignore"):
                    result = _repeats_by_sort(np.arange(len(ids) - 1), ids[:-1] * np.uint64(_PRIME) + ids[1:])
            else:
                pos, prev = self.repeated_ngrams(n - 1)
                if len(pos) > 64:
                    mark = np.zeros(len(ids) + 1, dtype=bool)
                    mark[pos] = True
                    keep = mark[pos + 1]
                    with np.errstate(over="ignore"):
                        hashes = prev[keep] * np.uint64(_PRIME) + ids[pos[keep] + n - 1]
                    result = _repeats_by_sort(pos[keep], hashes)
                else:
                    starts = dict(zip(pos.tolist(), prev.tolist()))
                    id_list = self.word_id_list
                    groups: dict[int, list[int]] = {}
                    for p, h in starts.items():
                        if p + 1 in starts:
                            groups.setdefault((h * _PRIME + id_list[p + n - 1]) & _MASK64, []).append(p)
                    repeated = [(h, p) for h, ps in groups.items() if len(ps) > 1 for p in ps]
                    result = (np.array([p for _, p in repeated], dtype=np.int64),
                              np.array([h for h, _ in repeated], dtype=np.uint64))
            self._repeats[n] = result
        return self._repeats[n]


def _repeats_by_sort(positions: np.ndarray, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (positions, hashes) whose hash occurs more than once, sorted by hash."""
    order = np.argsort(hashes, kind="stable")
    ordered = hashes[order]
    repeated = np.zeros(len(ordered), dtype=bool)
    same = ordered[1:] == ordered[:-1]
    repeated[1:] |= same
    repeated[:-1] |= same
    return positions[order[repeated]], ordered[repeated]


def _dup_fraction(items: list[str]) -> tuple[float, float]:
    """(share of items that repeat an earlier one, share of characters in those repeats). Every
    occurrence but the first of each distinct item is a repeat, so both follow from the set."""
    if not items:
        return 0.0, 0.0
    distinct = set(items)
    total_chars = sum(map(len, items))
    dup_chars = total_chars - sum(map(len, distinct))
    return (len(items) - len(distinct)) / len(items), dup_chars / (total_chars or 1)


def _top_ngram_char_fraction(d: DocView, n: int) -> float:
    """Characters covered by the most frequent word n-gram, over all word characters (Gopher)."""
    if len(d.word_ids) < n:
        return 0.0
    positions, hashes = d.repeated_ngrams(n)
    if not len(hashes):
        return 0.0
    first = np.ones(len(hashes), dtype=bool)
    first[1:] = hashes[1:] != hashes[:-1]
    starts = np.flatnonzero(first)
    sizes = np.diff(starts, append=len(hashes))
    best = int(sizes.max())
    # among equally frequent n-grams, the one covering the most characters (ties are otherwise arbitrary)
    lens = d.word_lens
    chars = max(int(lens[p : p + n].sum()) for p in positions[starts[sizes == best]].tolist())
    return float(best * chars / d.total_word_chars)


def _dup_ngram_char_fraction(d: DocView, n: int) -> float:
    """Characters of words inside any n-gram that occurs more than once, over all word characters."""
    if len(d.word_ids) < n:
        return 0.0
    positions = d.repeated_ngrams(n)[0]
    if not len(positions):
        return 0.0
    size = len(d.word_ids) + 1
    cover = np.bincount(positions, minlength=size) - np.bincount(positions + n, minlength=size)
    covered = np.cumsum(cover[:-1]) > 0
    return float(d.word_lens[covered].sum() / d.total_word_chars)


# --- the rules ---------------------------------------------------------------------------------------

def gopher_word_count(d: DocView, p) -> str | None:
    """Gopher: between 50 and 100,000 words."""
    n = len(d.lower_words)
    return None if p.min_words <= n <= p.max_words else f"{n} words"


def gopher_mean_word_length(d: DocView, p) -> str | None:
    """Gopher: mean word length between 3 and 10 characters."""
    if not d.lower_words:
        return "no words"
    mean = float(d.word_lens.sum()) / len(d.lower_words)
    return None if p.min <= mean <= p.max else f"mean word length {mean:.2f}"


def gopher_symbol_ratio(d: DocView, p) -> str | None:
    """Gopher: at most 0.1 hash symbols or ellipses per word."""
    symbols = d.text.count("#") + d.text.count("...") + d.text.count("…")
    ratio = symbols / max(len(d.lower_words), 1)
    return None if ratio <= p.max_ratio else f"symbol/word ratio {ratio:.3f}"


def gopher_bullet_lines(d: DocView, p) -> str | None:
    """Gopher: at most 90% of lines start with a bullet point."""
    if not d.lines:
        return None
    share = d.count_lines(str.startswith, BULLETS) / len(d.lines)
    return None if share <= p.max_fraction else f"{share:.0%} bullet lines"


def gopher_ellipsis_lines(d: DocView, p) -> str | None:
    """Gopher: at most 30% of lines end with an ellipsis."""
    if not d.lines:
        return None
    share = d.count_lines(str.endswith, ("...", "…")) / len(d.lines)
    return None if share <= p.max_fraction else f"{share:.0%} ellipsis lines"


def gopher_alpha_words(d: DocView, p) -> str | None:
    """Gopher: at least 80% of words contain an alphabetic character."""
    if not d.lower_words:
        return "no words"
    share = d.alpha_words / len(d.lower_words)
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
    if not any(m in d.lower_text for m in marks):  # the common case: one scan of the text per mark
        return None
    share = sum(any(m in ln.lower() for m in marks) for ln in d.lines) / len(d.lines)
    return None if share <= p.max_fraction else f"{share:.0%} boilerplate lines"


def fineweb_line_punct(d: DocView, p) -> str | None:
    """FineWeb: at least 12% of lines end with terminal punctuation."""
    if not d.lines:
        return "no lines"
    share = d.count_lines(str.endswith, TERMINAL_PUNCT) / len(d.lines)
    return None if share >= p.min_fraction else f"{share:.0%} lines end in punctuation"


def fineweb_short_lines(d: DocView, p) -> str | None:
    """FineWeb: at most 67% of lines are 30 characters or shorter."""
    if not d.lines:
        return None
    share = int((d.line_lens <= p.max_chars).sum()) / len(d.lines)
    return None if share <= p.max_fraction else f"{share:.0%} short lines"


def fineweb_dup_line_chars(d: DocView, p) -> str | None:
    """FineWeb: at most 10% of characters are in lines that repeat an earlier line."""
    _, chars = d.line_dups
    return None if chars <= p.max_fraction else f"{chars:.0%} characters in duplicate lines"


def fineweb_list_ratio(d: DocView, p) -> str | None:
    """FineWeb: at most 0.3 newlines per word (list-like pages)."""
    ratio = d.text.count("\n") / max(len(d.lower_words), 1)
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
