"""A polite HTTP fetcher and same-host crawler for the scrape stage.

Politeness and safety, as a crawler operator is expected to run one: robots.txt (RFC 9309, parsed by
protego: `*` and `$` patterns, the longest match wins and Allow wins a tie; a missing file allows
everything, an unreachable one disallows everything; Crawl-delay honoured when longer than ours), one request per host per `delay_s`, at most `concurrency` requests in flight, timeouts, retries
with exponential backoff on 429/5xx/timeouts (Retry-After honoured), a cap on the body size (read as a
stream, so a huge page costs no more than the cap), text/html and text/plain only, a redirect limit,
an identifying User-Agent, and no requests to private, loopback or link-local addresses or to non-HTTP
schemes unless the config allows that address (every redirect hop is checked again). A host is resolved
once per request and the connection goes to the checked address itself (PinnedBackend), so a DNS answer
that changes between check and connect (rebinding) cannot reach an unchecked address.
"""

from __future__ import annotations

import email.utils
import ipaddress
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING, Iterator
from urllib.parse import urldefrag, urljoin, urlsplit

import httpcore
import httpx
from protego import Protego

from llmpipe.data.sources.documents import ReadSettings, Skip, decode, html_document, make_doc, now_iso

if TYPE_CHECKING:  # the http kind's params are this crawler's settings
    from llmpipe.data.sources.http_params import HttpSource

log = logging.getLogger(__name__)

ACCEPTED_TYPES = ("text/html", "application/xhtml+xml", "text/plain")
REDIRECTS = (301, 302, 303, 307, 308)


@dataclass
class Page:
    url: str
    status: int
    content_type: str
    charset: str | None
    body: bytes
    fetched_at: str


def resolve_host(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to, in the resolver's order, without duplicates."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


def host_and_port(url: str) -> tuple[str, int]:
    """The ASCII (IDNA) host name and the port of an http(s) url, as httpcore hands them to the network
    backend, so a pin made here matches its connect. Raises httpx.InvalidURL."""
    u = httpx.URL(url)
    port = u.port or (443 if u.scheme == "https" else 80)
    if not u.raw_host or not 0 < port < 65536:
        raise httpx.InvalidURL(f"no host or a bad port in {url!r}")
    return u.raw_host.decode("ascii"), port


def checked_addresses(url: str, allow: list[str]) -> tuple[str | None, list[str]]:
    """(refusal, addresses): why `url` may not be fetched (a Skip reason) or None, and the addresses its
    host resolved to. Every address must be public, or allowed by name or address in `allow` ("*"
    allows all). The fetch connects only to these addresses: a second lookup could answer differently
    (DNS rebinding) and reach an address that was never checked."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return "refused_scheme", []
    try:
        host, port = host_and_port(url)
    except (httpx.InvalidURL, UnicodeError):
        return "invalid_url", []
    try:
        addresses = resolve_host(host, port)
    except (OSError, UnicodeError):
        return "dns_error", []
    if not addresses:
        return "dns_error", []
    if "*" in allow or host in allow or parts.hostname in allow:
        return None, addresses
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        if str(ip) in allow:
            continue
        if ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved or ip.is_multicast \
                or ip.is_unspecified:
            return "refused_private_address", []
    return None, addresses


def address_refusal(url: str, allow: list[str]) -> str | None:
    """Why `url` may not be fetched (a Skip reason), or None; see checked_addresses."""
    return checked_addresses(url, allow)[0]


class PinnedBackend(httpcore.NetworkBackend):
    """httpcore's network backend, connecting only to the addresses the calling thread checked for
    that host and port (the Host header, SNI and certificate check still use the name). httpcore opens
    a connection in the thread of the request it serves, so a thread-local pin reaches it; a host with
    no pin is refused rather than resolved again."""

    def __init__(self):
        self.inner = httpcore.SyncBackend()
        self.local = threading.local()

    def pin(self, url: str, addresses: list[str]) -> None:
        self.local.pins = {host_and_port(url): addresses}

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        addresses = getattr(self.local, "pins", {}).get((host, port))
        if not addresses:
            raise httpcore.ConnectError(f"no checked address for {host}:{port}")
        error: Exception | None = None
        for address in addresses:  # each one was checked: fall back as a resolver's caller would
            try:
                return self.inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as err:
                error = err
        raise error

    def connect_unix_socket(self, path, timeout=None, socket_options=None):
        raise httpcore.ConnectError("the fetcher connects to checked TCP addresses only")

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


class PinnedTransport(httpx.HTTPTransport):
    """httpx's transport over a connection pool that uses PinnedBackend. httpx takes no network backend,
    so the pool it built is replaced by one made with httpcore's public constructor. The pool stays
    keyed by host name, so a TLS connection verified for one name never carries another name's request.
    A proxy from the environment is not used (httpx ignores it with an explicit transport): it would
    resolve the host itself, around the check."""

    def __init__(self, backend: PinnedBackend, limits: httpx.Limits):
        super().__init__(limits=limits, trust_env=False)
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(), max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry, network_backend=backend)


class HostPacer:
    """At most one request per host per delay: each request reserves the next free slot of its host."""

    def __init__(self, delay_s: float):
        self.default = delay_s
        self.delays: dict[str, float] = {}
        self.next_free: dict[str, float] = {}
        self.lock = threading.Lock()

    def set_delay(self, host: str, delay_s: float) -> None:
        with self.lock:
            self.delays[host] = max(self.default, delay_s)

    def wait(self, host: str) -> None:
        with self.lock:
            now = time.monotonic()
            slot = max(now, self.next_free.get(host, now))
            self.next_free[host] = slot + self.delays.get(host, self.default)
        if slot > now:
            time.sleep(slot - now)


class _Links(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.hrefs.extend(v for k, v in attrs if k == "href" and v)


def page_links(page: Page) -> list[str]:
    """Absolute http(s) links of an HTML page, fragments removed, in page order."""
    parser = _Links()
    try:
        parser.feed(page.body.decode(page.charset or "utf-8", errors="replace"))
    except Exception:  # noqa: BLE001 - a page we cannot parse has no links to follow
        return []
    out = []
    for href in parser.hrefs:
        url = urldefrag(urljoin(page.url, href.strip()))[0]
        if urlsplit(url).scheme in ("http", "https"):
            out.append(url)
    return list(dict.fromkeys(out))


class Fetcher:
    def __init__(self, source: HttpSource):
        self.cfg = source
        self.pacer = HostPacer(source.delay_s)
        self.backend = PinnedBackend()
        self.client = httpx.Client(
            headers={"User-Agent": source.user_agent, "Accept": "text/html,text/plain;q=0.9"},
            timeout=httpx.Timeout(source.timeout_s), follow_redirects=False,
            transport=PinnedTransport(self.backend, httpx.Limits(max_connections=source.concurrency)))
        self.robots: dict[str, Protego | None] = {}
        self.robots_lock = threading.Lock()

    def close(self) -> None:
        self.client.close()

    def _robots_for(self, url: str) -> Protego | None:
        """The parsed robots.txt of the url's origin (None: allow everything). Fetched once per origin."""
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        with self.robots_lock:
            if origin in self.robots:
                return self.robots[origin]
            target, page = f"{origin}/robots.txt", None
            for _ in range(5):  # RFC 9309: follow at least five redirects
                page = self._get(target, robots=True)
                if not isinstance(page, str):
                    break
                target = page
            if isinstance(page, str):
                page = Skip("too_many_redirects", target)
            if isinstance(page, Page):
                parser = Protego.parse(page.body.decode("utf-8", errors="replace"))
                delay = parser.crawl_delay(self.cfg.user_agent)
                if delay:
                    self.pacer.set_delay(parts.netloc, float(delay))
            elif page.reason.startswith("http_4"):
                parser = None  # no robots.txt: everything is allowed
            else:
                parser = Protego.parse("User-agent: *\nDisallow: /")  # unreachable: nothing is allowed
            self.robots[origin] = parser
            return parser

    def fetch(self, url: str) -> Page | Skip:
        """GET with the checks of this module; redirects followed by hand so each hop is checked."""
        for _ in range(self.cfg.max_redirects + 1):
            result = self._get(url)
            if isinstance(result, str):  # a redirect target
                url = result
                continue
            return result
        return Skip("too_many_redirects", url)

    def _get(self, url: str, robots: bool = False) -> Page | Skip | str:
        refusal, addresses = checked_addresses(url, self.cfg.allow_addresses)
        if refusal:
            return Skip(refusal, url)
        if not robots and self.cfg.respect_robots:
            rules = self._robots_for(url)  # may fetch robots.txt, pinning its own checked addresses
            if rules is not None and not rules.can_fetch(url, self.cfg.user_agent):
                return Skip("robots_disallowed", url)
        host = urlsplit(url).netloc
        reason, detail = "connection_error", ""
        for attempt in range(self.cfg.retries + 1):
            if attempt:
                time.sleep(self._backoff(attempt, detail))
            self.pacer.wait(host)
            self.backend.pin(url, addresses)  # a new connection may go to these addresses only
            try:
                with self.client.stream("GET", url) as resp:
                    if resp.status_code in REDIRECTS and "location" in resp.headers:
                        return urldefrag(urljoin(url, resp.headers["location"]))[0]
                    if resp.status_code == 429 or resp.status_code >= 500:
                        reason, detail = f"http_{resp.status_code}", resp.headers.get("retry-after", "")
                        continue
                    if resp.status_code >= 400:
                        return Skip(f"http_{resp.status_code}", url)
                    ctype = resp.headers.get("content-type", "").lower()
                    if not robots and not ctype.startswith(ACCEPTED_TYPES):
                        return Skip("unsupported_content_type", url, ctype or "none")
                    declared = resp.headers.get("content-length")
                    if declared and declared.isdigit() and int(declared) > self.cfg.max_bytes:
                        return Skip("too_large", url, f"{declared} bytes declared")
                    body = bytearray()
                    for chunk in resp.iter_bytes():
                        body += chunk
                        if len(body) > self.cfg.max_bytes:
                            return Skip("too_large", url, f"over {self.cfg.max_bytes} bytes")
                    charset = resp.charset_encoding if "charset=" in ctype else None
                    return Page(str(resp.url), resp.status_code, ctype, charset, bytes(body), now_iso())
            except httpx.TimeoutException:
                reason, detail = "timeout", ""
            except httpx.HTTPError as err:
                reason, detail = "connection_error", ""
                log.debug("fetch %s: %s", url, err)
        return Skip(reason, url, f"after {self.cfg.retries + 1} attempts")

    def _backoff(self, attempt: int, retry_after: str) -> float:
        """Exponential backoff, or the server's Retry-After (seconds or a date) when longer, capped at 5 min."""
        wait = self.cfg.backoff_s * 2 ** (attempt - 1)
        try:
            asked = float(retry_after) if retry_after.isdigit() else \
                email.utils.parsedate_to_datetime(retry_after).timestamp() - time.time()
        except (TypeError, ValueError):  # absent or malformed: our own backoff
            return wait
        return max(wait, min(asked, 300.0))


def seed_urls(source: HttpSource, root: Path) -> list[str]:
    urls = list(source.urls)
    for name in source.seed_files:
        for line in (root / name).read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                urls.append(line)
    return list(dict.fromkeys(urldefrag(u)[0] for u in urls))


def page_document(page: Page, cfg: ReadSettings) -> dict | Skip:
    doc_id = f"http/{page.url}"
    if page.content_type.startswith("text/plain"):
        text = decode(page.body, page.charset, page.url)
        return text if isinstance(text, Skip) else make_doc(doc_id, "http", text, page.body, url=page.url,
                                                           fetched_at=page.fetched_at)
    return html_document(page.body, doc_id, "http", cfg, url=page.url, charset=page.charset,
                         fetched_at=page.fetched_at)


def crawl(source: HttpSource, cfg: ReadSettings, root: Path) -> Iterator[dict | Skip]:
    """Fetch the seeds, then same-host links level by level up to crawl_depth. Output follows the
    order of discovery (not of completion), so a rerun over the same site gives the same table."""
    frontier = seed_urls(source, root)
    seen = set(frontier)
    seed_hosts = {urlsplit(u).netloc for u in frontier}
    fetcher = Fetcher(source)
    fetched = 0
    try:
        with ThreadPoolExecutor(max_workers=source.concurrency, thread_name_prefix="fetch") as pool:
            for depth in range(source.crawl_depth + 1):
                frontier = frontier[: max(0, source.max_pages - fetched)]
                if not frontier:
                    break
                log.info("crawl: depth %d, %d url(s)", depth, len(frontier))
                next_level: list[str] = []
                for url, page in zip(frontier, pool.map(fetcher.fetch, frontier)):
                    fetched += 1
                    if isinstance(page, Skip):
                        yield page
                        continue
                    if depth < source.crawl_depth and page.content_type.startswith("text/html"):
                        for link in page_links(page):
                            if urlsplit(link).netloc in seed_hosts and link not in seen:
                                seen.add(link)
                                next_level.append(link)
                    yield page_document(page, cfg)
                frontier = next_level
    finally:
        fetcher.close()
