"""Kind `http`: pages fetched over HTTP(S) by the polite crawler in llmpipe.data.fetch. Read whole, by
one task: the crawler parallelises its own requests, politely per host. Its params (HttpSource) are the
crawler's settings and live in http_params, which both this module and the crawler import."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from llmpipe.data.sources.documents import ReadSettings, Skip
from llmpipe.data.sources.http_params import HttpSource


PARAMS = HttpSource


def plan(source: HttpSource, cfg: ReadSettings, root: Path) -> list[tuple[str, ...]]:
    return [()]


def read(source: HttpSource, files: tuple[str, ...], cfg: ReadSettings, root: Path) -> Iterator[dict | Skip]:
    from llmpipe.data.fetch import crawl  # httpx and the crawler load only where a source fetches

    yield from crawl(source, cfg, root)
