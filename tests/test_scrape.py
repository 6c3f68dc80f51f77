import pandas as pd

from llmpipe.config import DemoSource, LocalSource
from llmpipe.sources import iter_demo, iter_local
from llmpipe.stages.scrape import collect_documents


def doc(i, text):
    return {"id": f"d{i}", "source": "test", "path": f"p{i}", "title": f"t{i}", "text": text, "sha256": "x"}


def test_collect_counts_what_it_drops():
    docs = [doc(1, "hello world"), doc(2, "   "), doc(3, "x" * 100), doc(1, "dup id")]
    df, stats = collect_documents(docs, max_doc_bytes=50)
    assert list(df["id"]) == ["d1"]
    assert stats == {"docs_in": 4, "docs_out": 1, "bytes_out": 11, "dropped_empty": 1,
                     "dropped_oversize": 1, "dropped_duplicate_id": 1}
    assert "fetched_at" in df.columns


def test_local_files_with_provenance(tmp_path):
    (tmp_path / "a.txt").write_text("first file")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("second file")
    docs = list(iter_local(LocalSource(paths=["**/*.txt"]), tmp_path))
    assert sorted(d["path"] for d in docs) == ["a.txt", "sub/b.txt"]
    assert all(len(d["sha256"]) == 64 for d in docs)


def test_demo_corpus_is_real_shakespeare():
    docs = list(iter_demo(DemoSource(max_docs=3)))
    assert len(docs) == 3
    df = pd.DataFrame(docs)
    assert df["id"].is_unique and df["id"].str.startswith("shakespeare/").all()
    assert (df["text"].str.len() > 1000).all()
    assert df["title"].str.len().gt(0).all()
