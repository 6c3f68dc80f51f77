"""Kind `local`: files matched by glob patterns (relative to the repository root), in groups of
files_per_shard per task. Text, HTML, .jsonl and .parquet files, WARC files, and tar/zip/gz archives of
those (llmpipe.data.sources.archives)."""

from __future__ import annotations

import codecs
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Iterator, Literal

from pydantic import Field

from llmpipe.config.base import Section, known
from llmpipe.data.sources.archives import WARC_SUFFIXES, iter_named_bytes, iter_warc_stream
from llmpipe.data.sources.documents import Skip, glob_files, guarded, iso_time

if TYPE_CHECKING:
    from llmpipe.data.sources import ScrapeParams


class LocalSource(Section):
    """Local files matched by glob patterns (relative to the repository root): .txt, .md, .html/.htm,
    .jsonl (a text field), .parquet (a text column), and .tar.gz/.tgz/.zip archives of those."""

    kind: Literal["local"] = "local"
    paths: list[str] = Field(min_length=1)
    encoding: Annotated[str, known(codecs.lookup, "text encoding")] = "utf-8"
    text_field: str = "text"  # the field of .jsonl records and the column of .parquet files
    # The field (.jsonl) or column (.parquet) naming what a record belongs to (a book, a site, a user):
    # the document's group for the train/val split (split.group.by: source); null: none.
    group_field: str | None = None
    files_per_shard: Annotated[int, Field(ge=1)] = 64  # files read by one task


PARAMS = LocalSource


def plan(source: LocalSource, cfg: ScrapeParams, root: Path) -> list[tuple[str, ...]]:
    files = [os.path.relpath(f, root) for f in glob_files(source.paths, root)]
    size = source.files_per_shard
    # no files: one empty unit, reported as a source that matched nothing
    return [tuple(files[j:j + size]) for j in range(0, len(files), size)] or [()]


def read(source: LocalSource, files: tuple[str, ...], cfg: ScrapeParams, root: Path) -> Iterator[dict | Skip]:
    if not files:
        yield Skip("no_files_matched", ", ".join(source.paths))
    yield from iter_local_files([root / f for f in files], source, cfg, root)


def iter_local_files(files: list[Path], source: LocalSource, cfg: ScrapeParams,
                     root: Path) -> Iterator[dict | Skip]:
    for path in files:
        rel = os.path.relpath(path, root)
        try:
            size = path.stat().st_size
            lower = path.name.lower()
            container = lower.endswith((".gz", ".tgz", ".tar", ".zip", ".jsonl", ".parquet"))
            if size > cfg.max_doc_bytes and not container:
                yield Skip("oversize", rel, f"{size} bytes")  # never read into memory
                continue
            if lower.endswith(WARC_SUFFIXES):
                with open(path, "rb") as f:
                    yield from guarded(iter_warc_stream(f, rel, cfg), rel)  # records carry their WARC-Date
                continue
            raw = path.read_bytes()
        except OSError as err:
            yield Skip("unreadable", rel, str(err))
            continue
        mtime = iso_time(path.stat().st_mtime)
        for item in iter_named_bytes(path.name, raw, f"local/{rel}", rel, source, cfg):
            if isinstance(item, dict) and not item["fetched_at"]:
                item["fetched_at"] = mtime
            yield item


def iter_local(source: LocalSource, root: Path, cfg: ScrapeParams) -> Iterator[dict | Skip]:
    yield from iter_local_files(glob_files(source.paths, root), source, cfg, root)
