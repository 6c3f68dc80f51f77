"""The HTTP fetcher and crawler against a real server on 127.0.0.1 started by the test."""

import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpcore
import pytest
import trustme

from llmpipe.data.fetch import Fetcher, HostPacer, PinnedBackend, address_refusal, crawl
from llmpipe.data.sources import ScrapeParams, Skip
from llmpipe.data.sources.http import HttpSource

PARAGRAPH = ("The harbour town woke slowly, with fishermen mending their nets along the quay while the bakers "
             "carried bread to the market square. ")


def page(title: str, body: str, links: list[str] = ()) -> bytes:
    nav = "".join(f'<a href="{href}">{href}</a> ' for href in links)
    return (f"<html><head><title>{title}</title><script>var tracking = 1;</script></head><body>"
            f"<nav>{nav}</nav><article><h1>{title}</h1>"
            + "".join(f"<p>{body} {PARAGRAPH * 2}</p>" for _ in range(3))
            + "</article><footer>Copyright, cookie settings</footer></body></html>").encode()


class Site:
    """Pages, robots.txt, and the misbehaving endpoints a crawler must survive."""

    def __init__(self):
        self.hits: dict[str, list[float]] = {}
        self.hosts: list[str] = []  # Host headers received
        self.sni: list[str] = []  # TLS server names received
        self.flaky_failures = 1
        self.robots = b"User-agent: *\nDisallow: /private\n"
        self.lock = threading.Lock()

    def handler(self):
        site = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def send(self, status, body=b"", ctype="text/html; charset=utf-8", headers=()):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                with site.lock:
                    site.hits.setdefault(self.path, []).append(time.monotonic())
                    site.hosts.append(self.headers.get("Host", ""))
                    ua = self.headers.get("User-Agent", "")
                assert ua.startswith("llmpipe-test"), ua
                p = self.path
                if p == "/robots.txt":
                    self.send(200, site.robots, "text/plain")
                elif p == "/":
                    self.send(200, page("Home", "Welcome home.", ["/a", "/b", "/private/x", "http://elsewhere.invalid/"]))
                elif p == "/a":
                    self.send(200, page("Page A", "The first page.", ["/c", "/"]))
                elif p == "/b":
                    self.send(200, page("Page B", "The second page.", ["/a"]))
                elif p == "/c":
                    self.send(200, page("Page C", "Deeper down."))
                elif p.startswith("/private"):
                    self.send(200, page("Secret", "Nobody should read this."))
                elif p == "/slow":
                    time.sleep(3)
                    self.send(200, page("Slow", "Too late."))
                elif p == "/flaky":
                    with site.lock:
                        fail = site.flaky_failures > 0
                        site.flaky_failures -= 1
                    if fail:
                        self.send(500, b"oops")
                    else:
                        self.send(200, page("Flaky", "Second time lucky."))
                elif p == "/loop":
                    self.send(302, headers=[("Location", "/loop2")])
                elif p == "/loop2":
                    self.send(302, headers=[("Location", "/loop")])
                elif p == "/moved":
                    self.send(301, headers=[("Location", "/c")])
                elif p == "/big":
                    self.send(200, b"<html><body><p>" + b"x" * 300_000 + b"</p></body></html>")
                elif p == "/bigchunked":  # no Content-Length: the cap must hold while streaming
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html")
                    self.end_headers()
                    for _ in range(100):
                        self.wfile.write(b"<p>" + b"y" * 10_000 + b"</p>")
                    self.close_connection = True
                elif p == "/image":
                    self.send(200, b"\x89PNG\r\n\x1a\n" + bytes(100), "image/png")
                elif p == "/plain":
                    self.send(200, ("Plain text. " + PARAGRAPH * 3).encode("latin-1"), "text/plain; charset=iso-8859-1")
                elif p.startswith("/r/"):  # any page: what may be fetched is robots.txt's to say
                    self.send(200, page("Rules", f"Path {p}."))
                elif p == "/gone":
                    self.send(404, b"not here")
                else:
                    self.send(404, b"no")

        return Handler


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # clients that hang up mid-body (the size cap) are expected here


def serve(site: Site, host="127.0.0.1", port=0, tls: ssl.SSLContext | None = None):
    server = QuietServer((host, port), site.handler())
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    site.port = server.server_address[1]
    site.base = f"{'https' if tls else 'http'}://127.0.0.1:{site.port}"
    return server


@pytest.fixture
def site():
    s = Site()
    server = serve(s)
    yield s
    server.shutdown()
    server.server_close()


def source(site, **kw) -> HttpSource:
    defaults = dict(urls=[f"{site.base}/"], user_agent="llmpipe-test/1.0", delay_s=0.0, timeout_s=1.0,
                    retries=2, backoff_s=0.05, max_bytes=100_000, allow_addresses=["127.0.0.1"])
    return HttpSource(**{**defaults, **kw})


def fetch(site, path, **kw):
    f = Fetcher(source(site, **kw))
    try:
        return f.fetch(f"{site.base}{path}")
    finally:
        f.close()


def test_crawl_follows_same_host_links_to_the_depth_limit_and_obeys_robots(site, tmp_path):
    docs = list(crawl(source(site, crawl_depth=1), ScrapeParams(extractor="resiliparse"), tmp_path))
    pages = [d for d in docs if isinstance(d, dict)]
    skips = [d for d in docs if isinstance(d, Skip)]
    assert [d["url"] for d in pages] == [f"{site.base}/", f"{site.base}/a", f"{site.base}/b"]  # /c is depth 2
    assert [s.reason for s in skips] == ["robots_disallowed"]  # /private/x; the other host is not followed
    assert "/private/x" not in site.hits
    home = pages[0]
    assert "Welcome home." in home["text"] and "tracking" not in home["text"]  # script removed
    assert home["source"] == "http" and len(home["sha256"]) == 64 and home["fetched_at"].endswith("Z")
    deeper = list(crawl(source(site, crawl_depth=2), ScrapeParams(extractor="resiliparse"), tmp_path))
    assert f"{site.base}/c" in [d["url"] for d in deeper if isinstance(d, dict)]


def test_trafilatura_extracts_the_main_text(site, tmp_path):
    docs = list(crawl(source(site), ScrapeParams(extractor="trafilatura"), tmp_path))
    assert len(docs) == 1 and "Welcome home." in docs[0]["text"]
    assert "Copyright" not in docs[0]["text"] and "var tracking" not in docs[0]["text"]


def test_slow_endpoint_times_out_after_retries(site):
    t0 = time.monotonic()
    result = fetch(site, "/slow", retries=1)
    assert isinstance(result, Skip) and result.reason == "timeout"
    assert len(site.hits["/slow"]) == 2 and time.monotonic() - t0 < 6


def test_500_then_200_is_retried(site):
    result = fetch(site, "/flaky")
    assert not isinstance(result, Skip) and result.status == 200
    assert len(site.hits["/flaky"]) == 2


def test_redirects_are_followed_and_loops_stopped(site):
    moved = fetch(site, "/moved")
    assert not isinstance(moved, Skip) and moved.url.endswith("/c")
    loop = fetch(site, "/loop", max_redirects=5)
    assert isinstance(loop, Skip) and loop.reason == "too_many_redirects"
    assert len(site.hits["/loop"]) + len(site.hits["/loop2"]) == 6


@pytest.mark.parametrize("path", ["/big", "/bigchunked"])
def test_oversized_pages_are_cut_off(site, path):
    result = fetch(site, path, max_bytes=100_000)
    assert isinstance(result, Skip) and result.reason == "too_large"


def test_content_types_errors_and_charsets(site, tmp_path):
    assert fetch(site, "/image").reason == "unsupported_content_type"
    assert fetch(site, "/gone").reason == "http_404"
    docs = list(crawl(source(site, urls=[f"{site.base}/plain"]), ScrapeParams(), tmp_path))
    assert docs[0]["text"].startswith("Plain text.")


def test_private_addresses_and_other_schemes_are_refused(site):
    assert fetch(site, "/", allow_addresses=[]).reason == "refused_private_address"
    assert not site.hits  # refused before any request
    assert address_refusal("file:///etc/passwd", []) == "refused_scheme"
    assert address_refusal("ftp://example.org/x", []) == "refused_scheme"
    assert address_refusal("http://169.254.169.254/latest/meta-data", []) == "refused_private_address"
    assert address_refusal("http://[::1]:8080/", []) == "refused_private_address"
    assert address_refusal("http://10.0.0.1/", ["10.0.0.1"]) is None
    assert address_refusal("http://host:abc/", ["*"]) == "invalid_url"
    assert address_refusal("http://host:99999/", ["*"]) == "invalid_url"
    with pytest.raises(httpcore.ConnectError):  # a connect with no checked address is refused, not resolved
        PinnedBackend().connect_tcp("127.0.0.1", site.port)


def test_per_host_delay_spaces_requests(site, tmp_path):
    urls = [f"{site.base}/a", f"{site.base}/b", f"{site.base}/c"]
    list(crawl(source(site, urls=urls, delay_s=0.3, concurrency=3), ScrapeParams(extractor="resiliparse"), tmp_path))
    times = sorted(t for u in ("/robots.txt", "/a", "/b", "/c") for t in site.hits[u])
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert len(times) == 4 and min(gaps) >= 0.25, gaps


def test_pacer_reserves_slots_per_host():
    pacer = HostPacer(0.2)
    t0 = time.monotonic()
    for _ in range(3):
        pacer.wait("h1")
    pacer.wait("h2")  # another host does not wait for h1
    assert 0.35 <= time.monotonic() - t0 < 1.0


# RFC 9309 rules urllib.robotparser gets wrong: it ignores `*` and `$`, and takes the first matching
# line instead of the longest match (Allow winning a tie).
WILDCARD_ROBOTS = b"""User-agent: other-bot
Disallow: /

User-agent: llmpipe-test
Disallow: /r/*.pdf$
Disallow: /r/private*/
Disallow: /r/shop
Allow: /r/shop/open
Allow: /r/open
Disallow: /r/open/closed
Disallow: /r/tie
Allow: /r/tie
"""
ROBOTS_CASES = {
    "/r/doc.pdf": False, "/r/sub/doc.pdf": False,  # `*` spans slashes, `$` anchors the end
    "/r/doc.pdf?v=1": True, "/r/doc.pdfx": True,
    "/r/privateX/y": False, "/r/private/y": False, "/r/privateX": True,
    "/r/shop/x": False, "/r/shop/open/1": True,  # the longer Allow wins over the earlier Disallow
    "/r/open/x": True, "/r/open/closed/1": False,  # the longer Disallow wins over the earlier Allow
    "/r/tie": True,  # equal length: Allow wins
}


def test_robots_wildcards_end_anchor_and_longest_match(site):
    site.robots = WILDCARD_ROBOTS
    f = Fetcher(source(site))
    try:
        got = {path: f.fetch(f"{site.base}{path}") for path in ROBOTS_CASES}
    finally:
        f.close()
    for path, allowed in ROBOTS_CASES.items():
        if allowed:
            assert not isinstance(got[path], Skip) and f"Path {path}." in got[path].body.decode(), path
        else:
            assert isinstance(got[path], Skip) and got[path].reason == "robots_disallowed", path
    fetched = {p for p in site.hits if p != "/robots.txt"}
    assert fetched == {p for p, allowed in ROBOTS_CASES.items() if allowed}  # nothing disallowed was requested
    assert len(site.hits["/robots.txt"]) == 1


def test_robots_crawl_delay_is_honoured(site, tmp_path):
    site.robots = b"User-agent: *\nCrawl-delay: 0.4\nDisallow: /private\n"
    urls = [f"{site.base}/r/1", f"{site.base}/r/2", f"{site.base}/r/3"]
    list(crawl(source(site, urls=urls, delay_s=0.0, concurrency=3), ScrapeParams(extractor="resiliparse"), tmp_path))
    times = sorted(t for u in ("/r/1", "/r/2", "/r/3") for t in site.hits[u])
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert len(times) == 3 and min(gaps) >= 0.35, gaps


@pytest.fixture
def rebinding_dns(monkeypatch):
    """Stands in for DNS only (the servers are real): `rebind.test` and `other.test` answer 127.0.0.1 the
    first time they are looked up and 127.0.0.2 after that, as a rebinding attacker's name server would.
    Every lookup is recorded, the connect's own lookup of a literal address included."""
    real, lookups = socket.getaddrinfo, []

    def getaddrinfo(host, port, *args, **kwargs):
        lookups.append(host)
        if host in ("rebind.test", "other.test"):
            host = "127.0.0.1" if lookups.count(host) == 1 else "127.0.0.2"
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return lookups


@pytest.fixture
def trap(site):
    """A real server on the address the second DNS answer gives (same port): it must never see a request."""
    t = Site()
    server = serve(t, "127.0.0.2", site.port)
    yield t
    server.shutdown()
    server.server_close()


def fetch_url(cfg: HttpSource, url: str):
    f = Fetcher(cfg)
    try:
        return f.fetch(url)
    finally:
        f.close()


def test_the_connection_goes_to_the_checked_address_not_a_second_lookup(site, trap, rebinding_dns):
    url = f"http://rebind.test:{site.port}/a"
    result = fetch_url(source(site, respect_robots=False), url)
    assert not isinstance(result, Skip), result
    assert result.url == url and b"The first page." in result.body
    assert set(site.hits) == {"/a"} and site.hosts == [f"rebind.test:{site.port}"] and not trap.hits
    assert rebinding_dns.count("rebind.test") == 1  # the check's lookup; httpx did not resolve again
    assert [h for h in rebinding_dns if h != "rebind.test"] == ["127.0.0.1"]  # the connect: the checked address


def test_every_redirect_hop_is_resolved_and_checked_again(site, trap, rebinding_dns):
    result = fetch_url(source(site, respect_robots=False), f"http://rebind.test:{site.port}/moved")
    # /moved was fetched from 127.0.0.1; the hop to /c now resolves to 127.0.0.2, which is not allowed
    assert isinstance(result, Skip) and result.reason == "refused_private_address", result
    assert result.where.endswith("/c") and set(site.hits) == {"/moved"} and not trap.hits


@pytest.fixture
def tls_site(tmp_path, monkeypatch):
    """The site over HTTPS with a certificate for `rebind.test` only, from a CA the client is told to
    trust (httpx reads SSL_CERT_FILE); the names the client sends in SNI are recorded."""
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("rebind.test").configure_cert(ctx)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
    s = Site()
    ctx.sni_callback = lambda sock, name, _ctx: s.sni.append(name)
    server = serve(s, tls=ctx)
    yield s
    server.shutdown()
    server.server_close()


def test_https_connects_to_the_pinned_address_but_verifies_the_name(tls_site, rebinding_dns):
    cfg = source(tls_site, respect_robots=False, retries=0)
    ok = fetch_url(cfg, f"https://rebind.test:{tls_site.port}/a")
    assert not isinstance(ok, Skip), ok
    assert b"The first page." in ok.body and tls_site.sni == ["rebind.test"]
    assert [h for h in rebinding_dns if h != "rebind.test"] == ["127.0.0.1"]
    # the same address under a name the certificate does not carry: verification fails, nothing is sent
    bad = fetch_url(cfg, f"https://other.test:{tls_site.port}/a")
    assert isinstance(bad, Skip) and bad.reason == "connection_error", bad
    assert len(tls_site.hits["/a"]) == 1 and tls_site.sni == ["rebind.test", "other.test"]
