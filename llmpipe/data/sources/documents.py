"""What every kind of source shares: the document row, the Skip that stands for an input that did not
become one, the scrape settings a reader sees, text from bytes, HTML extraction, and the environment
faults that end the stage instead of being counted."""

from __future__ import annotations

import codecs
import glob
import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator, Protocol
from urllib.parse import urlsplit

from llmpipe.data.extract import ExtractionTimeout, ExtractorUnavailable, extract_text, html_charset, html_title

log = logging.getLogger(__name__)

# Faults of the environment, not of one input: they end the stage instead of becoming a counted skip.
ENVIRONMENT_ERRORS = (ImportError, MemoryError, ExtractorUnavailable)


@dataclass(frozen=True)
class Skip:
    """An input that did not become a document: `reason` is the counter it goes to."""

    reason: str
    where: str
    detail: str = ""


class ReadSettings(Protocol):
    """What reading documents needs of the scrape section (ScrapeParams, which the package defines from
    the kinds it discovers: a kind or helper module types its settings by this protocol instead of
    importing the package that imports it)."""

    @property
    def max_doc_bytes(self) -> int: ...

    @property
    def max_archive_depth(self) -> int: ...

    @property
    def extractor(self) -> str: ...

    @property
    def extract_timeout_s(self) -> float: ...


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
             url: str | None = None, title: str = "", fetched_at: str | None = None,
             group: str | None = None) -> dict:
    """A document row. fetched_at: when the content was obtained (the fetch, the WARC-Date, a file's
    modification time), so re-reading unchanged inputs gives the same row. group: what keeps documents
    together on one side of the train/val split (split.group.by: source); a page with a URL and no
    group of its own is grouped by its registered domain."""
    if group is None and url:
        group = registered_domain(url)
    return {"id": doc_id, "source": source, "path": path, "url": url, "title": title, "text": text,
            "sha256": hashlib.sha256(raw).hexdigest(), "fetched_at": fetched_at, "group": group}


def registered_domain(url: str) -> str | None:
    """The domain a site registered under its public suffix (news.bbc.co.uk -> bbc.co.uk), lower case,
    from the Public Suffix List copy inside the `tld` package (offline, the same answer on every run);
    the host itself for an IP address or a name without a known suffix; None without a host."""
    from tld import get_fld

    host = (urlsplit(url).hostname or "").rstrip(".").lower()
    if not host:
        return None
    return get_fld(host, fix_protocol=True, fail_silently=True) or host


def iso_time(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def cache_dir() -> Path:
    """Where downloaded source archives are kept between runs (LLMPIPE_CACHE_DIR overrides)."""
    root = os.environ.get("LLMPIPE_CACHE_DIR") or Path.home() / ".cache" / "llmpipe"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


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


def html_document(raw: bytes, doc_id: str, source: str, cfg: ReadSettings, *, path=None, url=None,
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
    return make_doc(doc_id, source, text, raw, path=path, url=url, title=html_title(html), fetched_at=fetched_at)


def glob_files(patterns: list[str], root: Path) -> list[Path]:
    files: list[Path] = []
    for pattern in patterns:
        matched = sorted(glob.glob(str(root / pattern), recursive=True))
        if not matched:
            log.warning("scrape: pattern %r matched no files", pattern)
        files.extend(Path(m) for m in matched if Path(m).is_file())
    return list(dict.fromkeys(files))  # overlapping patterns read a file once
