"""The params of kind `http` (HttpSource), in a module of their own: they are the settings of the
crawler (llmpipe.data.fetch), which the kind (http.py) imports when it reads, so neither of the two can
hold them without the two importing each other."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from llmpipe.config.base import Section


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
