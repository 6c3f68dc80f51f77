"""Text helpers shared by the data stages: normalization for hashing, language ID."""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

import numpy as np

_SEPARATORS = re.compile(r"[\W_]+", re.UNICODE)  # anything but letters and digits
# ASCII fast path (most web text): NFKC is the identity and casefold is lower(); every other ASCII
# character (punctuation, "_", whitespace) becomes a space, exactly as the regex path treats it.
_ASCII_SEPARATORS = str.maketrans({chr(c): " " for c in range(128) if not chr(c).isalnum()})


def normalized_text(text: str) -> str:
    """Case, Unicode compatibility forms and punctuation folded; words separated by runs of spaces."""
    if text.isascii():
        return text.lower().translate(_ASCII_SEPARATORS)
    return _SEPARATORS.sub(" ", unicodedata.normalize("NFKC", text).casefold())


def normalize_for_hash(text: str) -> str:
    """normalized_text with single spaces and no leading or trailing space."""
    return " ".join(normalized_text(text).split())


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
