"""Local files, archives and WARC/WET input, and the bad input the scrape stage must survive."""

import gzip
import io
import json
import tarfile
import zipfile
from collections import Counter

import pandas as pd
import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from llmpipe.data.extract import ExtractionTimeout, extract_text
from llmpipe.data.sources import ScrapeParams, Skip, Unit, iter_unit, iter_warc_stream
from llmpipe.data.sources.local import LocalSource, iter_local
from llmpipe.data.sources.warc import WarcSource

TEXT = "A plain paragraph of English prose, long enough to be a document of its own. " * 5
HTML = ("<html><head><title>T</title><style>p {color: red}</style><script>track()</script></head><body>"
        "<nav><a href='/'>Home</a> <a href='/x'>Menu item</a></nav><main><h1>Title</h1>"
        + f"<p>{TEXT}</p>" * 3 + "</main><footer>Copyright 2026</footer></body></html>")


def split(items):
    docs = [i for i in items if isinstance(i, dict)]
    skips = Counter(i.reason for i in items if isinstance(i, Skip))
    return docs, skips


def local(tmp_path, pattern="**/*", **cfg):
    return split(list(iter_local(LocalSource(paths=[pattern]), tmp_path, ScrapeParams(**cfg))))


def test_each_local_format(tmp_path):
    (tmp_path / "a.txt").write_text(TEXT)
    (tmp_path / "b.md").write_text("# Heading\n\n" + TEXT)
    (tmp_path / "c.html").write_text(HTML)
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps({"text": f"record {i}. " + TEXT, "url": f"u{i}"})
                                                for i in range(3)) + "\n")
    pd.DataFrame({"text": [f"row {i}. " + TEXT for i in range(4)]}).to_parquet(tmp_path / "e.parquet")
    docs, skips = local(tmp_path)
    assert not skips
    by_path = {d["path"]: d for d in docs}
    assert set(by_path) == {"a.txt", "b.md", "c.html", "d.jsonl:1", "d.jsonl:2", "d.jsonl:3",
                            "e.parquet#1", "e.parquet#2", "e.parquet#3", "e.parquet#4"}
    html = by_path["c.html"]["text"]
    assert "plain paragraph" in html and "track()" not in html and "color: red" not in html
    assert by_path["d.jsonl:2"]["url"] == "u1" and by_path["d.jsonl:2"]["text"].startswith("record 1.")
    assert len({d["id"] for d in docs}) == len(docs)
    assert all(len(d["sha256"]) == 64 and d["fetched_at"] for d in docs)


def test_archives_and_unsafe_members(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in [("docs/one.txt", TEXT.encode()), ("../evil.txt", b"escape"),
                           ("/etc/passwd.txt", b"root"), ("docs/page.html", HTML.encode())]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (tmp_path / "bundle.tar.gz").write_bytes(buf.getvalue())
    with zipfile.ZipFile(tmp_path / "bundle.zip", "w") as zf:
        zf.writestr("inner/two.txt", TEXT)
        zf.writestr("../../up.txt", "escape")
    docs, skips = local(tmp_path)
    assert sorted(d["path"] for d in docs) == ["bundle.tar.gz!docs/one.txt", "bundle.tar.gz!docs/page.html",
                                               "bundle.zip!inner/two.txt"]
    assert skips == {"unsafe_member_path": 3}
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path.parent / "up.txt").exists()


def test_gzip_bomb_is_bounded_by_the_size_limit(tmp_path):
    with gzip.open(tmp_path / "bomb.txt.gz", "wb") as f:
        for _ in range(64):
            f.write(b"A" * (1 << 20))  # 64 MiB of one letter: ~64 KB compressed
    assert (tmp_path / "bomb.txt.gz").stat().st_size < 1_000_000
    docs, skips = local(tmp_path, max_doc_bytes=1_000_000)
    assert not docs and skips == {"oversize": 1}


def test_bad_files_are_counted_and_the_rest_is_read(tmp_path):
    (tmp_path / "good.txt").write_text(TEXT)
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "nul.txt").write_bytes(b"text\x00with\x00nul bytes" * 10)
    (tmp_path / "image.txt").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "latin1.txt").write_bytes(("Caf\xe9 cr\xe8me, " + TEXT).encode("latin-1"))  # one bad byte per word
    (tmp_path / "garbage.txt").write_bytes(bytes([0xC3, 0x28]) * 200 + b" x")
    (tmp_path / "truncated.txt.gz").write_bytes(gzip.compress(TEXT.encode() * 100)[:200])
    (tmp_path / "huge.txt").write_bytes(b"x" * 3_000_000)  # one line over the limit: never read whole
    (tmp_path / "bad.jsonl").write_text('{"text": "ok document"}\nnot json\n{"other": 1}\n')
    (tmp_path / "data.bin").write_bytes(b"\x01\x02")
    docs, skips = local(tmp_path, max_doc_bytes=1_000_000)
    assert sorted(d["path"] for d in docs) == ["bad.jsonl:1", "good.txt", "latin1.txt"]
    latin = next(d for d in docs if d["path"] == "latin1.txt")["text"]
    assert latin.startswith("Caf\ufffd cr\ufffdme")  # repaired, not dropped: 2 bad bytes in ~400
    assert skips == {"empty": 1, "binary": 2, "undecodable": 1, "corrupt_gzip": 1, "oversize": 1,
                     "invalid_json": 1, "missing_text_field": 1, "unsupported_format": 1}


def test_a_declared_charset_is_used(tmp_path):
    src = LocalSource(paths=["*.txt"], encoding="cp1252")
    (tmp_path / "win.txt").write_bytes("“Smart quotes” – naïve".encode("cp1252"))
    docs, skips = split(list(iter_local(src, tmp_path, ScrapeParams())))
    assert docs[0]["text"] == "“Smart quotes” – naïve" and not skips


def warc_bytes(records, gz=True) -> bytes:
    buf = io.BytesIO()
    writer = WARCWriter(buf, gzip=gz)
    for kind, url, payload, ctype, status in records:
        if kind == "response":
            headers = StatusAndHeaders(status, [("Content-Type", ctype)], protocol="HTTP/1.1")
            rec = writer.create_warc_record(url, "response", payload=io.BytesIO(payload), http_headers=headers)
        else:
            rec = writer.create_warc_record(url, kind, payload=io.BytesIO(payload), warc_content_type=ctype)
        writer.write_record(rec)
    return buf.getvalue()


RECORDS = [
    ("response", "http://example.org/a", HTML.encode(), "text/html; charset=utf-8", "200 OK"),
    ("response", "http://example.org/img", b"\x89PNG....", "image/png", "200 OK"),
    ("response", "http://example.org/missing", b"<p>not found</p>", "text/html", "404 Not Found"),
    ("conversion", "http://example.org/b", ("WET text of page b. " + TEXT).encode(), "text/plain", None),
    ("response", "http://example.org/latin", HTML.replace("<h1>Title</h1>", "<h1>Gr\xfc\xdfe aus K\xf6ln.</h1>").encode("latin-1"),
     "text/html; charset=iso-8859-1", "200 OK"),
]


@pytest.mark.parametrize("gz", [True, False])
def test_warc_and_wet_records(tmp_path, gz):
    path = tmp_path / ("crawl.warc.gz" if gz else "crawl.warc")
    path.write_bytes(warc_bytes(RECORDS, gz))
    docs, skips = split(list(iter_unit(Unit(0, (path.name,)), ScrapeParams(sources=[WarcSource(paths=["*"])]),
                                       tmp_path)))
    assert [d["url"] for d in docs] == ["http://example.org/a", "http://example.org/b", "http://example.org/latin"]
    assert skips == {"unsupported_content_type": 1, "http_404": 1}
    assert "plain paragraph" in docs[0]["text"] and "track()" not in docs[0]["text"]
    assert docs[1]["text"].startswith("WET text of page b.")
    assert "Grüße aus Köln." in docs[2]["text"]
    assert all(d["source"] == "warc" and d["fetched_at"] and d["path"] == path.name for d in docs)


def test_truncated_warc_keeps_the_records_before_the_damage(tmp_path):
    data = warc_bytes(RECORDS[:1] + RECORDS[3:4] + RECORDS[:1], gz=True)
    docs, skips = split(list(iter_warc_stream(io.BytesIO(data[: len(data) - 100]), "cut.warc.gz", ScrapeParams())))
    assert len(docs) == 2 and skips == {"truncated_or_corrupt_warc": 1}


def test_warc_with_a_wrong_content_length(tmp_path):
    data = warc_bytes(RECORDS[3:4] + RECORDS[3:4], gz=False)
    first_len = data.index(b"Content-Length: ") + len(b"Content-Length: ")
    end = data.index(b"\r\n", first_len)
    bad = data[:first_len] + str(int(data[first_len:end]) + 40).encode() + data[end:]
    docs, skips = split(list(iter_warc_stream(io.BytesIO(bad), "bad.warc", ScrapeParams())))
    assert skips["truncated_or_corrupt_warc"] == 1  # reported, not raised
    assert len(docs) <= 1


def test_extraction_timeout_on_and_off_the_main_thread():
    import threading
    import time

    import llmpipe.data.extract as ex

    ex.EXTRACTORS["sleepy"] = lambda html: time.sleep(5) or "late"
    try:
        t0 = time.monotonic()
        with pytest.raises(ExtractionTimeout):
            extract_text("<p>x</p>", "sleepy", timeout_s=0.2)  # SIGALRM
        result = []

        def off_main():  # a Dask worker's thread: the worker thread is abandoned at the deadline
            try:
                extract_text("<p>x</p>", "sleepy", timeout_s=0.2)
            except ExtractionTimeout:
                result.append("timeout")

        thread = threading.Thread(target=off_main)
        thread.start()
        thread.join(3)
        assert result == ["timeout"] and time.monotonic() - t0 < 2
    finally:
        del ex.EXTRACTORS["sleepy"]
