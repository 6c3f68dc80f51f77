"""Text helpers shared by the data stages: normalization, language ID, shingles."""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

import numpy as np

_PUNCT_OR_SPACE = re.compile(r"[\W_]+", re.UNICODE)


def normalize_for_hash(text: str) -> str:
    """Fold case, Unicode compatibility forms, punctuation and whitespace, for exact-duplicate hashing."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return _PUNCT_OR_SPACE.sub(" ", text).strip()


def word_shingles(text: str, n: int) -> list[bytes]:
    """Word n-grams of the normalized text, as bytes; a text shorter than n words gives one shingle."""
    words = normalize_for_hash(text).split()
    if len(words) <= n:
        return [" ".join(words).encode("utf-8")] if words else []
    return [" ".join(words[i : i + n]).encode("utf-8") for i in range(len(words) - n + 1)]


@lru_cache(maxsize=1)
def _language_identifier():
    # py3langid ships its model inside the package (an .npz, not a pickle); nothing is downloaded.
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def identify_language(text: str) -> tuple[str, float]:
    """(ISO 639-1 code, normalized probability) from py3langid's naive Bayes model."""
    if not text.strip():
        return "unknown", 0.0
    lang, score = _language_identifier().classify(text)
    return str(lang), float(np.clip(score, 0.0, 1.0))
