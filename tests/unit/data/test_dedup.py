import random

import pandas as pd

from llmpipe.config.dedup import DedupParams
import numpy as np
import pytest
from datasketch import MinHash

from llmpipe.config.dedup import BoilerplateParams
from llmpipe.data.dedup import DedupIndex, dedup_documents, find_duplicates, removed_table
from llmpipe.data.minhash import ShingleHasher, signatures

random.seed(0)
VOCAB = [f"w{i}" for i in range(5000)]


def text(n=300, seed=0):
    rng = random.Random(seed)
    return " ".join(rng.choice(VOCAB) for _ in range(n))


def perturb(t, k, seed=1):
    words = t.split()
    rng = random.Random(seed)
    for i in rng.sample(range(len(words)), k):
        words[i] = "changed"
    return " ".join(words)


def test_exact_near_and_distinct():
    base = text(seed=1)
    docs = pd.DataFrame({
        "id": ["a", "a-case", "a-near", "b", "c"],
        "text": [base, base.upper().replace(" ", "  ") + "!!", perturb(base, 2), text(seed=2), text(seed=3)],
    })
    kept, removed, stats = dedup_documents(docs, DedupParams())
    assert list(kept["id"]) == ["a", "b", "c"]
    assert {k: stats[k] for k in ("docs_in", "exact_dups", "near_dups", "docs_out")} == \
        {"docs_in": 5, "exact_dups": 1, "near_dups": 1, "docs_out": 3}
    rows = removed.set_index("id")
    assert rows.loc["a-case", "duplicate_of"] == "a" and rows.loc["a-case", "kind"] == "exact"
    assert rows.loc["a-near", "duplicate_of"] == "a" and rows.loc["a-near", "kind"] == "near"
    assert 0.75 <= rows.loc["a-near", "similarity"] < 1.0


def test_verification_rejects_weak_candidates():
    base = text(seed=5)
    far = perturb(base, 120, seed=9)  # ~40% of words changed: Jaccard of 5-grams far below 0.75
    docs = pd.DataFrame({"id": ["x", "y"], "text": [base, far]})
    kept, removed, _ = dedup_documents(docs, DedupParams(bands=56, rows=2))  # very permissive LSH
    assert len(kept) == 2 and removed.empty


def test_empty_short_all_duplicates():
    docs = pd.DataFrame({"id": ["e", "s", "d1", "d2", "d3"], "text": ["", "two words", "same", "same", "same"]})
    kept, removed, stats = dedup_documents(docs, DedupParams())
    assert list(kept["id"]) == ["e", "s", "d1"]
    assert stats["empty_docs"] == 1 and stats["short_docs"] == 4  # "two words" and the three "same"
    assert stats["exact_dups"] == 2
    assert set(removed["duplicate_of"]) == {"d1"}


def test_cluster_keeps_first_document():
    base = text(seed=7)
    docs = pd.DataFrame({"id": ["first", "second", "third"],
                         "text": [perturb(base, 1, 1), base, perturb(base, 1, 2)]})
    kept, removed, _ = dedup_documents(docs, DedupParams(exact=False))
    assert list(kept["id"]) == ["first"]
    assert set(removed["duplicate_of"]) == {"first"}


def test_signatures_are_datasketch_minhashes():
    hasher = ShingleHasher(5, seed=1)
    docs = [text(400, seed=s) for s in range(5)] + ["short", ""]
    shingles = [hasher(d) for d in docs]
    sigs = signatures(shingles, 112, seed=1, chunk=64)  # small chunks: long documents span several
    for sh, sig in zip(shingles, sigs):
        m = MinHash(num_perm=112, seed=1, hashfunc=int)
        m.update_batch(sh.tolist())
        assert np.array_equal(m.hashvalues, sig)


def test_spaceless_scripts_use_character_shingles():
    hasher = ShingleHasher(5, seed=1)
    zh = "".join(chr(0x4E00 + (i * 7919) % 20000) + ("。" if i % 40 == 39 else "") for i in range(400))
    assert len(hasher(zh)) > 350  # character 5-grams, not the few shingles of ten giant "words"
    near = zh[:100] + "研究" + zh[102:]  # J about 0.95
    docs = pd.DataFrame({"id": ["zh", "zh-near", "ja"], "text": [zh, near, "日本語の文章は空白で区切られません。" * 4]})
    kept, removed, _ = dedup_documents(docs, DedupParams())
    assert list(kept["id"]) == ["zh", "ja"] and removed.iloc[0]["duplicate_of"] == "zh"


@pytest.mark.parametrize("shard_docs,workers", [(1, 1), (3, 1), (1000, 1), (3, 2)])
def test_decisions_do_not_depend_on_shards_or_workers(shard_docs, workers):
    base = [text(seed=s) for s in range(4)]
    docs = pd.DataFrame({"id": [f"d{i}" for i in range(10)],
                         "text": base + [perturb(base[0], 3, 1), base[1], perturb(base[2], 2, 2), "",
                                         perturb(base[0], 2, 3), text(seed=99)]})
    kept, removed, stats = dedup_documents(docs, DedupParams(workers=workers), shard_docs=shard_docs)
    assert list(kept["id"]) == ["d0", "d1", "d2", "d3", "d7", "d9"]
    assert stats["empty_docs"] == 1
    assert dict(zip(removed["id"], removed["duplicate_of"])) == {"d4": "d0", "d5": "d1", "d6": "d2", "d8": "d0"}


def test_report_histogram_and_all_or_no_duplicates():
    d = find_duplicates(lambda: iter([pd.DataFrame({"id": list("abcd"), "text": [text(seed=1)] * 4})]), DedupParams())
    assert d.stats["docs_out"] == 1 and d.report["cluster_size_histogram"] == {"4": 1}
    assert len(d.report["sample_pairs"]) == 3
    d = find_duplicates(lambda: iter([pd.DataFrame({"id": list("abc"), "text": [text(seed=s) for s in (1, 2, 3)]})]),
                        DedupParams())
    assert d.stats["docs_out"] == 3 and d.report["cluster_size_histogram"] == {}


def test_incremental_against_reference_index(tmp_path):
    cfg = DedupParams()
    old = pd.DataFrame({"id": ["o1", "o2"], "text": [text(seed=1), text(seed=2)]})
    find_duplicates(lambda: iter([old]), cfg, index_out=tmp_path / "index")
    index = DedupIndex.load(tmp_path / "index", cfg)
    assert index.ids == ["o1", "o2"] and index.sigs.shape == (2, 112)
    new = pd.DataFrame({"id": ["n1", "n2", "n3"],
                        "text": [perturb(text(seed=1), 2, 5), text(seed=3), text(seed=2)]})
    # only the new batch is read: the old texts are not given at all
    d = find_duplicates(lambda: iter([new]), cfg, reference=index, index_out=tmp_path / "index2")
    table = removed_table(d).set_index("id")
    assert table.loc["n1", "duplicate_of"] == "o1" and table.loc["n1", "kind"] == "near"
    assert table.loc["n3", "duplicate_of"] == "o2" and table.loc["n3", "kind"] == "exact"
    assert d.stats["removed_as_duplicate_of_reference"] == 2
    assert DedupIndex.load(tmp_path / "index2", cfg).ids == ["o1", "o2", "n2"]
    with pytest.raises(Exception, match="shingle_size"):
        DedupIndex.load(tmp_path / "index", DedupParams(shingle_size=3))


def test_boilerplate_lines_removed_before_dedup():
    footer = "Copyright 2026 Example Corp. All rights reserved. Privacy policy."
    docs = pd.DataFrame({"id": [f"p{i}" for i in range(4)],
                         "text": [f"{text(60, seed=i)}\n{footer}" for i in range(4)]})
    cfg = DedupParams(boilerplate=BoilerplateParams(enabled=True, min_docs=3))
    kept, _, _ = dedup_documents(docs, cfg)
    assert len(kept) == 4 and not any(footer in t for t in kept["text"])
    kept, _, _ = dedup_documents(docs, DedupParams())
    assert all(footer in t for t in kept["text"])


def test_stage_run_streams_parquet_and_dedups_against_reference(tmp_path):
    """The stage itself: Parquet in (extra columns kept), every output written, then a second corpus
    deduplicated against the first run's index named in params."""
    import json

    from llmpipe.stages.registry import output
    from llmpipe.stages.params import parse_params
    from llmpipe.stages import dedup as stage

    def write_input(rows):
        path = tmp_path / output("filter.docs")
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_parquet(path)

    first = [text(seed=s) for s in range(5)]
    write_input({"id": [f"a{i}" for i in range(6)], "text": first + [perturb(first[2], 2, 4)],
                 "lang": ["en"] * 6})
    params = parse_params({"dedup": {"shard_docs": 2}})
    result = stage.run(params, tmp_path)
    kept = pd.read_parquet(tmp_path / output("dedup.docs"))
    assert list(kept["id"]) == [f"a{i}" for i in range(5)] and "lang" in kept.columns
    report = json.loads((tmp_path / output("dedup.report")).read_text())
    assert report["near_dups"] == 1 and report["cluster_size_histogram"] == {"2": 1}
    assert result.metrics["docs_out"] == 5 and tmp_path / output("dedup.report") in result.artifacts
    reference = tmp_path / "reference-index"
    (tmp_path / output("dedup.index")).rename(reference)

    write_input({"id": ["b0", "b1", "b2"], "text": [perturb(first[0], 2, 9), text(seed=50), first[4]],
                 "lang": ["en"] * 3})
    params = parse_params({"dedup": {"shard_docs": 2, "reference_index": "reference-index"}})
    stage.run(params, tmp_path)
    removed = pd.read_parquet(tmp_path / output("dedup.removed")).set_index("id")
    assert removed.loc["b0", "duplicate_of"] == "a0" and removed.loc["b2", "duplicate_of"] == "a4"
    assert list(pd.read_parquet(tmp_path / output("dedup.docs"))["id"]) == ["b1"]
    assert DedupIndex.load(tmp_path / output("dedup.index"), DedupParams()).ids == [f"a{i}" for i in range(5)] + ["b1"]


# --- candidate pairs inside LSH buckets, similarities of removed rows, chains ----------------------

from llmpipe.data.minhash import candidate_pairs, jaccard  # noqa: E402


def test_bucket_pairs_all_when_small_bounded_when_large():
    col = np.array([7, 7, 7, 3], dtype=np.uint64)  # one bucket of three: 0, 1, 2
    assert {tuple(p) for p in candidate_pairs([col], 64, 16).tolist()} == {(0, 1), (0, 2), (1, 2)}
    assert {tuple(p) for p in candidate_pairs([col]).tolist()} == {(0, 1), (0, 2)}  # the star (exact hashes)
    big = np.zeros(100, dtype=np.uint64)  # a bucket above the limit: first member + 2 next neighbours each
    pairs = {tuple(p) for p in candidate_pairs([big], 4, 2).tolist()}
    assert {(0, j) for j in range(1, 100)} <= pairs and {(j, j + 1) for j in range(99)} <= pairs
    assert {(j, j + 2) for j in range(98)} <= pairs and (5, 8) not in pairs
    assert len(pairs) == 99 + 98 + 97  # star, then (j, j + 1) and (j, j + 2) for the other members


def _min_shingle_collision():
    """Three documents with equal first MinHash value (one band of one row: a single bucket), in index
    order x, y, z: y and z a true pair, x below the threshold to both."""
    hasher = ShingleHasher(5, seed=1)
    for seed in range(200):
        y = text(seed=100 + seed)
        z, x = perturb(y, 3, seed=seed), perturb(y, 40, seed=seed + 1000)
        sigs = signatures([hasher(t) for t in (x, y, z)], 1, seed=1)
        if sigs[0, 0] == sigs[1, 0] == sigs[2, 0]:
            return x, y, z
    raise AssertionError("no collision found")


def test_true_pair_in_bucket_whose_first_member_is_far():
    x, y, z = _min_shingle_collision()
    hasher = ShingleHasher(5, seed=1)
    assert jaccard(hasher(x), hasher(y)) < 0.75 and jaccard(hasher(x), hasher(z)) < 0.75
    assert jaccard(hasher(y), hasher(z)) >= 0.75
    docs = pd.DataFrame({"id": ["x", "y", "z"], "text": [x, y, z]})
    kept, removed, stats = dedup_documents(docs, DedupParams(bands=1, rows=1, exact=False))
    assert list(kept["id"]) == ["x", "y"]
    assert dict(zip(removed["id"], removed["duplicate_of"])) == {"z": "y"}
    # the old star (each member against the bucket's first only) never compares y with z
    kept, _, _ = dedup_documents(docs, DedupParams(bands=1, rows=1, exact=False, bucket_all_pairs_max=1,
                                                   bucket_neighbours=0))
    assert len(kept) == 3


def _chain():
    """a ~ b and b ~ c above the threshold, a ~ c below it; in index order a, c, b."""
    b = text(seed=21)
    a, c = perturb(b, 7, seed=31), perturb(b, 7, seed=32)
    return pd.DataFrame({"id": ["a", "c", "b"], "text": [a, c, b]})


def test_removed_similarity_is_to_the_named_document_and_chains_counted():
    docs = _chain()
    hasher = ShingleHasher(5, seed=1)
    sh = {i: hasher(t) for i, t in zip(docs["id"], docs["text"])}
    assert jaccard(sh["a"], sh["c"]) < 0.75 <= min(jaccard(sh["a"], sh["b"]), jaccard(sh["b"], sh["c"]))
    cfg = DedupParams(bands=56, rows=2)  # permissive LSH: every pair here is a candidate
    kept, removed, stats = dedup_documents(docs, cfg)
    assert list(kept["id"]) == ["a"]
    for i, dup, sim in zip(removed["id"], removed["duplicate_of"], removed["similarity"]):
        assert dup == "a" and sim == round(jaccard(sh[i], sh[dup]), 4)
    assert stats["removed_below_threshold"] == 1  # c, removed for a through b
    # without verification: the MinHash estimate against the named document
    _, removed, _ = dedup_documents(docs, cfg.model_copy(update={"verify": False}))
    sig = dict(zip(docs["id"], signatures([sh[i] for i in docs["id"]], cfg.num_perm, cfg.seed)))
    for i, dup, s in zip(removed["id"], removed["duplicate_of"], removed["similarity"]):
        assert s == round(float(np.mean(sig[i] == sig[dup])), 4)


def test_direct_clusters_remove_only_matches_of_the_kept_document():
    docs = _chain()
    cfg = DedupParams(bands=56, rows=2, clusters="direct")
    kept, removed, stats = dedup_documents(docs, cfg)
    assert list(kept["id"]) == ["a", "c"]  # c matches only b, which is removed
    assert dict(zip(removed["id"], removed["duplicate_of"])) == {"b": "a"}
    assert (removed["similarity"] >= 0.75).all() and stats["removed_below_threshold"] == 0


def test_stage_reports_chains(tmp_path):
    import json

    from llmpipe.stages.registry import output
    from llmpipe.stages.params import parse_params
    from llmpipe.stages import dedup as stage

    path = tmp_path / output("filter.docs")
    path.parent.mkdir(parents=True, exist_ok=True)
    _chain().to_parquet(path)
    result = stage.run(parse_params({"dedup": {"bands": 56, "rows": 2}}), tmp_path)
    assert result.metrics["removed_below_threshold"] == 1
    assert json.loads((tmp_path / output("dedup.report")).read_text())["removed_below_threshold"] == 1
    removed = pd.read_parquet(tmp_path / output("dedup.removed")).set_index("id")
    assert removed.loc["c", "similarity"] < 0.75 <= removed.loc["b", "similarity"]


def test_long_documents_hash_piece_by_piece_to_the_same_shingles():
    """A document longer than the hashing batch is hashed in pieces cut between words (characters, for
    text without spaces): the same exact hashes, shingles and offsets as in one piece, so memory is
    bounded by the piece, not the document."""
    from llmpipe.data.minhash import ShingleHasher

    words = " ".join(f"w{i % 997} x{i % 13}" for i in range(40_000))
    texts = [words, "short text here", "日本語のテキストです。" * 3000, "a b", "", words[:5000] + "\n\n" + words[:3000]]
    hasher = ShingleHasher(5, 1)
    whole, pieces = hasher.shard(texts, batch_bytes=1 << 30), hasher.shard(texts, batch_bytes=1000)
    for a, b in zip(whole, pieces):
        np.testing.assert_array_equal(a, b)
