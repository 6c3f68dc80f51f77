"""Containers a file can hold documents in: tar/zip archives, whose members come back as Nested bytes
for the reader to open in turn, and WARC/WET/ARC files. Shared by the `local` kind (which opens all of
them, and the file formats inside) and the `warc` kind (which reads WARC files)."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import IO, Iterator

from llmpipe.data.sources.documents import (ENVIRONMENT_ERRORS, ReadSettings, Skip, decode, html_document,
                                            make_doc, read_capped, read_error)

WARC_SUFFIXES = (".warc", ".warc.gz", ".wet", ".wet.gz", ".arc", ".arc.gz")
NESTING_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip", ".gz")  # each is one level of nesting


def safe_member_name(name: str) -> bool:
    p = PurePosixPath(name.replace("\\", "/"))
    return bool(name) and not p.is_absolute() and ".." not in p.parts and not name.startswith("/")


@dataclass(frozen=True)
class Nested:
    """Bytes still to be read: an archive member or a gzip's content, `depth` archives deep. Archive
    readers hand these back to the local kind's loop (iter_named_bytes) instead of reading them by a
    recursive call."""

    name: str
    raw: bytes
    doc_id: str
    where: str
    depth: int


def iter_tar(raw: bytes, rel: str, depth: int, cfg: ReadSettings) -> Iterator[Skip | Nested]:
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


def iter_zip(raw: bytes, rel: str, depth: int, cfg: ReadSettings) -> Iterator[Skip | Nested]:
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

def iter_warc_stream(stream: IO[bytes], rel: str, cfg: ReadSettings) -> Iterator[dict | Skip]:
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
