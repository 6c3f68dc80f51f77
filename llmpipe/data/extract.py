"""HTML main-text extraction: navigation, scripts and boilerplate removed, paragraphs kept.

Two engines, chosen by scrape.extractor: trafilatura (the quality reference of web-corpus work, a few
ms per page) and resiliparse (C++, about 25x faster, FineWeb-2's choice at scale). An extraction that
runs past scrape.extract_timeout_s is abandoned and counted, so one pathological page cannot stall a
shard.
"""

from __future__ import annotations

import re
import signal
import threading
from typing import Callable

_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_:.-]+)""", re.IGNORECASE)


class ExtractionTimeout(Exception):
    pass


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


def html_charset(raw: bytes, header_charset: str | None = None) -> str | None:
    """The charset from the Content-Type header, else from a <meta> tag in the first 4 KB."""
    if header_charset:
        return header_charset
    m = _CHARSET.search(raw[:4096])
    return m.group(1).decode("ascii") if m else None


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
    """The main text of an HTML page ('' when it has none). Raises ExtractionTimeout past the deadline."""
    return _with_timeout(EXTRACTORS[extractor], html, timeout_s).strip()
