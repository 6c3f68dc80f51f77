"""HTML main-text extraction: navigation, scripts and boilerplate removed, paragraphs kept.

Two engines, chosen by scrape.extractor: trafilatura (the quality reference of web-corpus work, a few
ms per page) and resiliparse (C++, about 25x faster, FineWeb-2's choice at scale). An extraction that
runs past scrape.extract_timeout_s is abandoned and counted, so one pathological page cannot stall a
shard.
"""

from __future__ import annotations

import contextlib
import re
import signal
import threading
from collections import Counter
from typing import Callable, Iterator

_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_:.-]+)""", re.IGNORECASE)
_TITLE = re.compile(r"<title[^>]*>(.*?)</title\s*>", re.IGNORECASE | re.DOTALL)
_OG_TITLE = re.compile(r"""<meta[^>]+property\s*=\s*["']og:title["'][^>]*content\s*=\s*["']([^"']*)["']""",
                       re.IGNORECASE)
TITLE_SEARCH_CHARS = 65536  # <title> sits in <head>: a 50 MB page is not scanned whole
MAX_TITLE_CHARS = 500


class ExtractionTimeout(Exception):
    pass


class ExtractorUnavailable(RuntimeError):
    """The extraction engine or one of its dependencies cannot be imported. That is a broken Python
    environment, not a bad page: the stage fails instead of counting every page as an extract_error.
    Holds only a message, so it pickles back from a process-pool worker."""


# Module -> the distribution that provides it, for the fix in the error message.
PACKAGES = {"lxml_html_clean": "lxml-html-clean", "lxml": "lxml", "justext": "justext",
            "trafilatura": "trafilatura", "resiliparse": "resiliparse", "courlan": "courlan",
            "htmldate": "htmldate", "charset_normalizer": "charset-normalizer"}


def _missing_module(err: ImportError) -> str | None:
    """The module an ImportError is about. lxml.html.clean re-raises its ImportError `from None`:
    the original one, naming lxml_html_clean, is still its __context__."""
    seen: BaseException | None = err
    while seen is not None:
        if getattr(seen, "name", None):
            return seen.name.split(".")[0]
        seen = seen.__cause__ or seen.__context__
    text = str(err)
    return next((m for m in PACKAGES if m in text), None)


def unavailable(err: ImportError, extractor: str) -> ExtractorUnavailable:
    module = _missing_module(err)
    package = PACKAGES.get(module or "", module or extractor)
    return ExtractorUnavailable(
        f"the HTML extractor {extractor!r} cannot be imported: missing module {module or '?'} "
        f"({err.__class__.__name__}: {' '.join(str(err).split())}). The Python environment is incomplete; "
        f"install it with `pip install {package}`, or upgrade pip (`python -m pip install -U pip`; pip 23 "
        f"misreads lxml's html-clean extra) and re-run the setup (`pip install -e .`)")


def _trafilatura(html: str) -> str:
    import trafilatura

    # deduplicate=False: repeated paragraphs are the dedup and quality stages' business, counted there.
    return trafilatura.extract(html, include_comments=False, include_tables=True, deduplicate=False) or ""


def _resiliparse(html: str) -> str:
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.html import HTMLTree

    return extract_plain_text(HTMLTree.parse(html), main_content=True, alt_texts=False,
                              links=False, list_bullets=True)


EXTRACTORS: dict[str, Callable[[str], str]] = {"trafilatura": _trafilatura, "resiliparse": _resiliparse}

# Outcomes of the extractions run in this thread ("ok" or the exception's class name) while a
# tally is open: the scrape stage sums them over the run to tell a broken engine from bad pages.
# Per thread, as each shard iterates its inputs (and calls extract_text) in one thread.
_local = threading.local()


@contextlib.contextmanager
def extraction_tally() -> Iterator[Counter]:
    previous = getattr(_local, "tally", None)
    _local.tally = Counter()
    try:
        yield _local.tally
    finally:
        _local.tally = previous


def _count(outcome: str) -> None:
    tally = getattr(_local, "tally", None)
    if tally is not None:
        tally[outcome] += 1


def html_charset(raw: bytes, header_charset: str | None = None) -> str | None:
    """The charset from the Content-Type header, else from a <meta> tag in the first 4 KB."""
    if header_charset:
        return header_charset
    m = _CHARSET.search(raw[:4096])
    return m.group(1).decode("ascii") if m else None


def html_title(html: str) -> str:
    """The page's <title> (else its og:title), entities decoded and whitespace collapsed; '' when none.
    The extractors return the main text only, so the title is read from the markup beside them."""
    import html as html_lib

    head = html[:TITLE_SEARCH_CHARS]
    m = _TITLE.search(head) or _OG_TITLE.search(head)
    if not m:
        return ""
    return " ".join(html_lib.unescape(re.sub(r"<[^>]+>", " ", m.group(1))).split())[:MAX_TITLE_CHARS]


def _alarm(_signum, _frame):
    raise ExtractionTimeout


def _with_timeout(fn: Callable[[str], str], html: str, timeout_s: float) -> str:
    if threading.current_thread() is threading.main_thread():
        # SIGALRM interrupts the extractor's Python code at the deadline.
        previous = signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
        try:
            return fn(html)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    # Off the main thread (a Dask worker's executor) signals are not available: run the extraction in a
    # daemon thread and stop waiting for it at the deadline (it finishes in the background).
    box: dict = {}

    def work() -> None:
        try:
            box["text"] = fn(html)
        except Exception as err:  # noqa: BLE001 - handed to the waiting thread
            box["error"] = err

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise ExtractionTimeout
    if "error" in box:
        raise box["error"]
    return box["text"]


def extract_text(html: str, extractor: str = "trafilatura", timeout_s: float = 10.0) -> str:
    """The main text of an HTML page ('' when it has none). Raises ExtractionTimeout past the deadline,
    ExtractorUnavailable when the engine cannot be imported (at its first use or lazily later)."""
    try:
        text = _with_timeout(EXTRACTORS[extractor], html, timeout_s).strip()
    except ImportError as err:
        raise unavailable(err, extractor) from None
    except ExtractionTimeout:
        raise  # counted as extract_timeout; a slow page says nothing about the engine
    except Exception as err:
        _count(err.__class__.__name__)
        raise
    _count("ok")
    return text
