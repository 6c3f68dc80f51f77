"""Kind `warc`: WARC, WET and ARC files (Common Crawl's formats), gzipped or not, one file per task."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Literal

from pydantic import Field

from llmpipe.config.base import Section
from llmpipe.data.sources.archives import iter_warc_stream
from llmpipe.data.sources.documents import ReadSettings, Skip, glob_files, guarded


class WarcSource(Section):
    """WARC, WET and ARC files (Common Crawl's formats), gzipped or not, matched by glob patterns:
    HTML responses go through extraction, WET conversion records are taken as text."""

    kind: Literal["warc"] = "warc"
    paths: list[str] = Field(min_length=1)


PARAMS = WarcSource


def plan(source: WarcSource, cfg: ReadSettings, root: Path) -> list[tuple[str, ...]]:
    files = [os.path.relpath(f, root) for f in glob_files(source.paths, root)]
    # no files: one empty unit, reported as a source that matched nothing
    return [(f,) for f in files] or [()]


def read(source: WarcSource, files: tuple[str, ...], cfg: ReadSettings, root: Path) -> Iterator[dict | Skip]:
    if not files:
        yield Skip("no_files_matched", ", ".join(source.paths))
    for rel in files:
        try:
            with open(root / rel, "rb") as f:
                yield from guarded(iter_warc_stream(f, rel, cfg), rel)
        except OSError as err:
            yield Skip("unreadable", rel, str(err))
