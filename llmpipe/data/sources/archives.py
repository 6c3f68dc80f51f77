"""Containers a file can hold documents in: tar/zip archives and .gz layers nested inside each other,
WARC/WET/ARC files, .jsonl records and .parquet rows. Shared by the `local` kind (which opens all of
them) and the `warc` kind (which reads WARC files)."""

from __future__ import annotations

import gzip
import io
import json
import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import IO, TYPE_CHECKING, Iterator

from llmpipe.data.sources.documents import (ENVIRONMENT_ERRORS, Skip, decode, html_document, make_doc,
                                            read_capped, read_error)

if TYPE_CHECKING:  # the package and the local kind import this module
    from llmpipe.data.sources import ScrapeParams
    from llmpipe.data.sources.local import LocalSource

TEXT_SUFFIXES = (".txt", ".md", ".text")
HTML_SUFFIXES = (".html", ".htm", ".xhtml")
WARC_SUFFIXES = (".warc", ".warc.gz", ".wet", ".wet.gz", ".arc", ".arc.gz")
NESTING_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip", ".gz")  # each is one level of nesting


def safe_member_name(name: str) -> bool:
    p = PurePosixPath(name.replace("\\", "/"))
    return bool(name) and not p.is_absolute() and ".." not in p.parts and not name.startswith("/")


@dataclass(frozen=True)
class Nested:
    """Bytes still to be read: an archive member or a gzip's content, `depth` archives deep. Archive
    readers hand these back to iter_named_bytes' loop instead of reading them by a recursive call."""

    name: str
    raw: bytes
    doc_id: str
    where: str
    depth: int


def iter_named_bytes(name: str, raw: bytes, doc_id: str, rel: str, source: LocalSource,
                     cfg: ScrapeParams) -> Iterator[dict | Skip]:
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


def _iter_nested(item: Nested, source: LocalSource, cfg: ScrapeParams) -> Iterator[dict | Skip | Nested]:
    name, raw, doc_id, rel = item.name, item.raw, item.doc_id, item.where
    lower = name.lower()
    if not raw:
        yield Skip("empty", rel)
    elif lower.endswith(WARC_SUFFIXES):
        yield from iter_warc_stream(io.BytesIO(raw), rel, cfg)
    elif lower.endswith(NESTING_SUFFIXES) and item.depth >= cfg.max_archive_depth:
        yield Skip("nested_too_deep", rel, f"inside {item.depth} archive levels (scrape.max_archive_depth)")
    elif lower.endswith((".tar.gz", ".tgz", ".tar")):
        yield from _iter_tar(raw, rel, item.depth + 1, cfg)
    elif lower.endswith(".zip"):
        yield from _iter_zip(raw, rel, item.depth + 1, cfg)
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


def _iter_tar(raw: bytes, rel: str, depth: int, cfg: ScrapeParams) -> Iterator[Skip | Nested]:
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:*") as tar:
            for member in tar:  # streamed: a truncated archive yields the members before the damage
                where = f"{rel}!{member.name}"
                if not safe_member_name(member.name):
                    yield Skip("unsafe_member_path", where)
                elif member.issym() or member.islnk():  # never followed: counted, not silently dropped
                    yield Skip("archive_link", where, f"-> {member.linkname}")
                elif member.isfile():
                    if member.size > cfg.max_doc_bytes:
                        yield Skip("oversize", where, f"{member.size} bytes")
                        continue
                    data = tar.extractfile(member).read()  # nothing is written to disk
                    yield Nested(member.name, data, f"local/{where}", where, depth)
                elif not member.isdir():
                    yield Skip("archive_special_member", where, "device, fifo or other non-regular member")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        yield Skip("corrupt_archive", rel, str(err))


def _iter_zip(raw: bytes, rel: str, depth: int, cfg: ScrapeParams) -> Iterator[Skip | Nested]:
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            for info in zf.infolist():
                where = f"{rel}!{info.filename}"
                if not safe_member_name(info.filename):
                    yield Skip("unsafe_member_path", where)
                elif stat.S_ISLNK(info.external_attr >> 16):  # a Unix symlink: its bytes are a path
                    yield Skip("archive_link", where)
                elif not info.is_dir():
                    try:
                        with zf.open(info) as member:  # the declared size may lie: the read is capped
                            data = read_capped(member, cfg.max_doc_bytes)
                    except (zipfile.BadZipFile, OSError, EOFError, zlib.error, NotImplementedError):
                        raise  # the archive itself is damaged: counted once below
                    except ENVIRONMENT_ERRORS:
                        raise
                    except Exception as err:  # noqa: BLE001 - e.g. an encrypted member; the rest is read
                        yield read_error(where, err)
                        continue
                    if data is None:
                        yield Skip("oversize", where, f"more than {cfg.max_doc_bytes} bytes")
                    else:
                        yield Nested(info.filename, data, f"local/{where}", where, depth)
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error, NotImplementedError) as err:
        yield Skip("corrupt_archive", rel, str(err))


# --- WARC / WET / ARC ----------------------------------------------------------------------------

def iter_warc_stream(stream: IO[bytes], rel: str, cfg: ScrapeParams) -> Iterator[dict | Skip]:
    """Response records with HTML go through extraction; WET conversion records are text already.
    A truncated or malformed file yields the records before the damage, then one Skip."""
    from warcio.archiveiterator import ArchiveIterator
    from warcio.exceptions import ArchiveLoadFailed

    try:
        records = ArchiveIterator(stream, arc2warc=True)
        for record in records:
            if record.rec_type not in ("response", "conversion", "resource"):
                continue
            url = record.rec_headers.get_header("WARC-Target-URI")
            date = record.rec_headers.get_header("WARC-Date")
            where = f"{rel}@{records.offset}"  # the record's start (get_record_offset() would consume it)
            doc_id = f"warc/{where}"
            raw = read_capped(record.content_stream(), cfg.max_doc_bytes)
            if raw is None:
                yield Skip("oversize", where, url or "")
                continue
            if getattr(record.raw_stream, "limit", 0) > 0:  # the file ended inside this record
                yield Skip("truncated_or_corrupt_warc", where, "record shorter than its Content-Length")
                return
            if not raw.strip():
                yield Skip("empty", where, url or "")
                continue
            ctype = ""
            if record.http_headers is not None:
                ctype = (record.http_headers.get_header("Content-Type") or "").lower()
                status = record.http_headers.get_statuscode()
                if status and not status.startswith("2"):
                    yield Skip(f"http_{status}", where, url or "")
                    continue
            else:
                ctype = (record.rec_headers.get_header("Content-Type") or "").lower()
            charset = ctype.split("charset=")[-1].split(";")[0].strip() if "charset=" in ctype else None
            if record.rec_type == "conversion" or "text/plain" in ctype:
                text = decode(raw, charset, where)
                yield text if isinstance(text, Skip) else make_doc(
                    doc_id, "warc", text, raw, path=rel, url=url, fetched_at=date)
            elif "html" in ctype:
                yield html_document(raw, doc_id, "warc", cfg, path=rel, url=url, charset=charset,
                                    fetched_at=date)
            else:
                yield Skip("unsupported_content_type", where, ctype or "none")
    except (ArchiveLoadFailed, OSError, EOFError, zlib.error, ValueError) as err:
        yield Skip("truncated_or_corrupt_warc", rel, f"{err.__class__.__name__}: {err}"[:300])
