import pandas as pd
import pytest

from llmpipe.data.sources import ScrapeParams, Skip
from llmpipe.data.sources.demo import DemoSource, iter_demo
from llmpipe.data.sources.local import LocalSource, iter_local
from llmpipe.stages import scrape
from llmpipe.stages.params import parse_params
from llmpipe.stages.registry import output
from llmpipe.stages.scrape import collect_documents
from llmpipe.util.io import InputError, read_json


def doc(i, text):
    return {"id": f"d{i}", "source": "test", "path": f"p{i}", "url": None, "title": f"t{i}", "text": text,
            "sha256": "x", "fetched_at": "2026-01-01T00:00:00Z"}


def test_collect_counts_what_it_drops():
    docs = [doc(1, "hello world"), doc(2, "   "), doc(3, "x" * 100), doc(1, "dup id"), Skip("binary", "f.bin")]
    stats = collect_documents(docs, max_doc_bytes=50)
    assert stats.totals["docs_in"] == 4 and stats.totals["docs_out"] == 1 and stats.totals["bytes_out"] == 11
    assert stats.group("skipped") == {"empty": 1, "oversize": 1, "duplicate_id": 1, "binary": 1}
    assert stats.examples["skipped"]["binary"] == [{"where": "f.bin", "detail": ""}]


def test_stage_reads_mixed_sources_and_reports_bad_input(tmp_path):
    (tmp_path / "in").mkdir()
    for i in range(5):
        (tmp_path / "in" / f"doc{i}.txt").write_text(f"Document {i}. " + "Some prose to read. " * 20)
    (tmp_path / "in" / "blob.txt").write_bytes(bytes(300))
    (tmp_path / "in" / "empty.txt").write_bytes(b"")
    params = parse_params({"scrape": {"sources": [
        {"kind": "local", "paths": ["in/*.txt"], "files_per_shard": 3},
        {"kind": "local", "paths": ["in/doc0.txt"]},  # the same file twice: one copy kept
        {"kind": "warc", "paths": ["nothing/*.warc.gz"]}]}, "scale": {"workers": 1}})
    metrics = scrape.run(params, tmp_path).metrics
    parts = sorted((tmp_path / output("scrape.docs")).glob("part-*.parquet"))
    # units: [blob, doc0, doc1], [doc2, doc3, doc4], [empty] (no part), [doc0 again] (a repeat: removed)
    assert [p.name for p in parts] == ["part-00000.parquet", "part-00001.parquet"]
    df = pd.concat(pd.read_parquet(p) for p in parts)
    assert sorted(df["path"]) == [f"in/doc{i}.txt" for i in range(5)]
    assert list(df.columns) == ["id", "source", "path", "url", "title", "text", "sha256", "fetched_at", "group"]
    assert metrics["docs_out"] == 5 and metrics["skipped_binary"] == 1 and metrics["skipped_empty"] == 1
    assert metrics["skipped_duplicate_id"] == 1 and metrics["skipped_no_files_matched"] == 1
    report = read_json(tmp_path / output("scrape.report"))
    assert report["skipped"]["binary"] == 1 and report["examples"]["binary"][0]["where"] == "in/blob.txt"


def test_stage_fails_only_when_nothing_could_be_read(tmp_path):
    (tmp_path / "bad.txt").write_bytes(bytes(100))
    params = parse_params({"scrape": {"sources": [{"kind": "local", "paths": ["*.txt"]}]}})
    with pytest.raises(InputError, match="no documents could be read.*binary: 1"):
        scrape.run(params, tmp_path)
    assert not (tmp_path / output("scrape.docs")).exists()


def test_local_files_with_provenance(tmp_path):
    (tmp_path / "a.txt").write_text("first file")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("second file")
    docs = list(iter_local(LocalSource(paths=["**/*.txt"]), tmp_path, ScrapeParams()))
    assert not any(isinstance(d, Skip) for d in docs)
    assert sorted(d["path"] for d in docs) == ["a.txt", "sub/b.txt"]
    assert all(len(d["sha256"]) == 64 for d in docs)


def test_demo_corpus_is_real_shakespeare():
    docs = list(iter_demo(DemoSource(max_docs=3)))
    assert len(docs) == 3
    df = pd.DataFrame(docs)
    assert df["id"].is_unique and df["id"].str.startswith("shakespeare/").all()
    assert (df["text"].str.len() > 1000).all()
    assert df["title"].str.len().gt(0).all()


def test_html_pages_keep_their_title_and_path(tmp_path):
    """A real corpus of saved pages came out with empty titles: the extractors return the main text only."""
    body = "<p>" + "The quality of mercy is not strained; it droppeth as the gentle rain from heaven. " * 8 + "</p>"
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "merchant.html").write_text(
        "<html><head><meta charset='utf-8'><title>\n  The Merchant of Venice &amp; Portia\n</title></head>"
        f"<body><nav>Home | Plays</nav><article><h1>Act IV</h1>{body}</article></body></html>")
    (tmp_path / "site" / "untitled.htm").write_text(f"<html><body><article>{body}</article></body></html>")
    params = parse_params({"scrape": {"sources": [{"kind": "local", "paths": ["site/*.htm*"]}]},
                           "scale": {"workers": 1}})
    scrape.run(params, tmp_path)
    df = pd.concat(pd.read_parquet(p) for p in (tmp_path / output("scrape.docs")).glob("part-*.parquet"))
    by_path = dict(zip(df["path"], df["title"]))
    assert by_path == {"site/merchant.html": "The Merchant of Venice & Portia", "site/untitled.htm": ""}
    assert df["text"].str.contains("quality of mercy").all()
