"""Kind `local`: files matched by glob patterns (relative to the repository root), in groups of
files_per_shard per task. Text, HTML, .jsonl and .parquet files, WARC files, and tar/zip/gz archives of
those (the containers: llmpipe.data.sources.archives), each read by its name's suffix."""

from __future__ import annotations

import codecs
import gzip
import io
import json
import os
import zlib
from pathlib import Path, PurePosixPath
from typing import Annotated, Iterator, Literal

from pydantic import Field

from llmpipe.config.base import Section, known
from llmpipe.data.sources.archives import (NESTING_SUFFIXES, WARC_SUFFIXES, Nested, iter_tar, iter_warc_stream,
                                           iter_zip)
from llmpipe.data.sources.documents import (ENVIRONMENT_ERRORS, ReadSettings, Skip, decode, glob_files, guarded,
                                            html_document, iso_time, make_doc, read_capped, read_error)

TEXT_SUFFIXES = (".txt", ".md", ".text")
HTML_SUFFIXES = (".html", ".htm", ".xhtml")


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


def plan(source: LocalSource, cfg: ReadSettings, root: Path) -> list[tuple[str, ...]]:
    files = [os.path.relpath(f, root) for f in glob_files(source.paths, root)]
    size = source.files_per_shard
    # no files: one empty unit, reported as a source that matched nothing
    return [tuple(files[j:j + size]) for j in range(0, len(files), size)] or [()]


def read(source: LocalSource, files: tuple[str, ...], cfg: ReadSettings, root: Path) -> Iterator[dict | Skip]:
    if not files:
        yield Skip("no_files_matched", ", ".join(source.paths))
    yield from iter_local_files([root / f for f in files], source, cfg, root)


def iter_local_files(files: list[Path], source: LocalSource, cfg: ReadSettings,
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


def iter_local(source: LocalSource, root: Path, cfg: ReadSettings) -> Iterator[dict | Skip]:
    yield from iter_local_files(glob_files(source.paths, root), source, cfg, root)


# --- a file's bytes, by its name's suffix ----------------------------------------------------------

def iter_named_bytes(name: str, raw: bytes, doc_id: str, rel: str, source: LocalSource,
                     cfg: ReadSettings) -> Iterator[dict | Skip]:
    """Documents of one file's bytes, by the file name's suffix. Archives inside archives are read to
    cfg.max_archive_depth levels through an explicit stack of open readers, not by recursion: a 60 KB
    zip nested 500 deep must not exhaust Python's stack. An exception while reading one input becomes
    a `read_error` skip and the readers around it go on."""
    stack = [(rel, _iter_nested(Nested(name, raw, doc_id, rel, 0), source, cfg))]
    while stack:
        where, reader = stack[-1]
        try:
            item = next(reader, None)
        except ENVIRONMENT_ERRORS:
            raise
        except Exception as err:  # noqa: BLE001 - one unreadable input is counted; the stage goes on
            stack.pop()
            yield read_error(where, err)
            continue
        if item is None:
            stack.pop()
        elif isinstance(item, Nested):
            stack.append((item.where, _iter_nested(item, source, cfg)))
        else:
            yield item


def _iter_nested(item: Nested, source: LocalSource, cfg: ReadSettings) -> Iterator[dict | Skip | Nested]:
    name, raw, doc_id, rel = item.name, item.raw, item.doc_id, item.where
    lower = name.lower()
    if not raw:
        yield Skip("empty", rel)
    elif lower.endswith(WARC_SUFFIXES):
        yield from iter_warc_stream(io.BytesIO(raw), rel, cfg)
    elif lower.endswith(NESTING_SUFFIXES) and item.depth >= cfg.max_archive_depth:
        yield Skip("nested_too_deep", rel, f"inside {item.depth} archive levels (scrape.max_archive_depth)")
    elif lower.endswith((".tar.gz", ".tgz", ".tar")):
        yield from iter_tar(raw, rel, item.depth + 1, cfg)
    elif lower.endswith(".zip"):
        yield from iter_zip(raw, rel, item.depth + 1, cfg)
    elif lower.endswith(".gz"):
        try:
            inner = read_capped(gzip.GzipFile(fileobj=io.BytesIO(raw)), cfg.max_doc_bytes)
        except (OSError, EOFError, zlib.error) as err:
            yield Skip("corrupt_gzip", rel, str(err))
            return
        if inner is None:
            yield Skip("oversize", rel, f"decompresses to more than {cfg.max_doc_bytes} bytes")
        else:
            yield Nested(name[:-3], inner, doc_id, rel, item.depth + 1)
    elif lower.endswith(HTML_SUFFIXES):
        yield html_document(raw, doc_id, "local", cfg, path=rel)
    elif lower.endswith(".jsonl"):
        yield from _iter_jsonl(raw, doc_id, rel, source)
    elif lower.endswith(".parquet"):
        yield from _iter_parquet(raw, doc_id, rel, source)
    elif lower.endswith(TEXT_SUFFIXES):
        text = decode(raw, source.encoding, rel)
        yield text if isinstance(text, Skip) else make_doc(doc_id, "local", text, raw, path=rel,
                                                          title=PurePosixPath(name).stem)
    else:
        yield Skip("unsupported_format", rel, PurePosixPath(name).suffix or "no suffix")


def _group_value(value) -> str | None:
    """A record's group field as a string key (a number or a string); a missing, null or nested value
    gives none, so the document is grouped by its id."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    return str(value) if str(value) else None


def _iter_jsonl(raw: bytes, doc_id: str, rel: str, source: LocalSource) -> Iterator[dict | Skip]:
    for n, line in enumerate(raw.splitlines(), start=1):
        where = f"{rel}:{n}"
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            text = record[source.text_field]
        except ValueError:  # also an integer past Python's 4300-digit limit, beside JSON/UTF-8 errors
            yield Skip("invalid_json", where)
            continue
        except (KeyError, TypeError):
            yield Skip("missing_text_field", where, source.text_field)
            continue
        if not isinstance(text, str):
            yield Skip("missing_text_field", where, f"{source.text_field} is not a string")
            continue
        yield make_doc(f"{doc_id}#L{n}", "local", text, line, path=where,
                       url=record.get("url") if isinstance(record.get("url"), str) else None,
                       group=_group_value(record.get(source.group_field) if source.group_field else None))


def _iter_parquet(raw: bytes, doc_id: str, rel: str, source: LocalSource) -> Iterator[dict | Skip]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(io.BytesIO(raw))
        if source.text_field not in pf.schema_arrow.names:
            yield Skip("missing_text_field", rel, source.text_field)
            return
        group_col = source.group_field if source.group_field in pf.schema_arrow.names else None
        columns = [source.text_field] + ([group_col] if group_col else [])
        row = 0
        for batch in pf.iter_batches(columns=columns, batch_size=4096):
            groups = batch.column(1).to_pylist() if group_col else [None] * batch.num_rows
            for text, group in zip(batch.column(0).to_pylist(), groups):
                row += 1
                if isinstance(text, str):
                    yield make_doc(f"{doc_id}#{row}", "local", text, text.encode("utf-8"),
                                   path=f"{rel}#{row}", group=_group_value(group))
                else:
                    yield Skip("missing_text_field", f"{rel}#{row}", "null or not a string")
    except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a corrupt file
        yield Skip("corrupt_parquet", rel, str(err))
