"""Near-duplicate detection quality and speed at the default settings, on a labelled set built from
real text, in one run; recall and precision also for the candidate scheme before issue 19 (each bucket
member verified against the bucket's first member only) and for `dedup.clusters: direct`.

    python bench/dedup.py [--docs 7000] [--words 300] [--memory-docs 100000]

The labelled set: the demo corpus (the Gutenberg Shakespeare, fetched as the scrape stage does) cut
into documents of --words words; a quarter of the documents are planted copies, in groups of 1 to 3
copies of one base document, each copy made from the base or (for later copies, half the time) from
the previous copy, with random word substitutions, insertions, deletions and swaps at one of the rates
in RATES (an edit per 1/rate words). So groups hold pairs on both sides of the 0.75 threshold and
chains (a ~ b, b ~ c, a !~ c). True Jaccard similarities (of word 5-gram sets, computed exactly with
Python sets, independently of llmpipe's hashing) are taken for every pair inside a group. All documents
are shuffled. Recall is also printed per band of true Jaccard: MinHash LSH at 14 x 8 finds a pair at
J = 0.75 with probability 1 - (1 - 0.75^8)^14 = 0.77, at 0.8 with 0.92 and at 0.85 with 0.99.

Measured for llmpipe.stages.dedup at params.yaml's dedup settings (FineWeb: 5-grams, 14 bands x 8
rows, verification on):
- recall: pairs inside a group with true Jaccard >= 0.75 that end in one cluster;
- precision: removed documents whose (document, duplicate_of) pair has true Jaccard >= 0.75;
- the same before (bucket_all_pairs_max=1, bucket_neighbours=0: the old star of each bucket around its
  first member) and with clusters=direct; chained removals (removed_below_threshold) of each;
- throughput from text to removal decisions, one process (MB/s and docs/s per core, best of 3);
- peak memory (tracemalloc) of the streaming stage core over synthetic documents read from a Parquet
  file (the texts stay on disk), at --memory-docs and half as many; a million documents is
  extrapolated along the line through those two points (the growth per document) and so labelled.
Last line: RESULT f1=<x> precision=<x> recall=<x> recall_before=<x> precision_before=<x> ... n_docs=<n>
"""

from __future__ import annotations

import _root  # noqa: F401  (first: takes bench/ off the import path, see bench/_root.py)

import argparse
import itertools
import random
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd

from llmpipe.stages.params import load_params
from llmpipe.data.minhash import ShingleHasher, band_keys, signatures_flat
from llmpipe.data.sources.demo import iter_demo
from llmpipe.data.dedup import dedup_documents, find_duplicates
from llmpipe.stages.dedup import parquet_batches
from llmpipe.data.text import normalize_for_hash

ROOT = Path(__file__).resolve().parent.parent


def shingle_set(text: str, n: int = 5) -> set[tuple[str, ...]]:
    words = normalize_for_hash(text).split()
    return {tuple(words[i : i + n]) for i in range(max(len(words) - n + 1, 1))} if words else set()


def true_jaccard(a: str, b: str) -> float:
    sa, sb = shingle_set(a), shingle_set(b)
    return len(sa & sb) / len(sa | sb) if sa or sb else 1.0


RATES = [0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2]


def edit(words: list[str], rate: float, rng: random.Random, vocab: list[str]) -> list[str]:
    out = list(words)
    for _ in range(int(rate * len(words))):
        op, i = rng.randrange(4), rng.randrange(len(out))
        if op == 0:
            out[i] = rng.choice(vocab)
        elif op == 1:
            out.insert(i, rng.choice(vocab))
        elif op == 2 and len(out) > 1:
            del out[i]
        elif i + 1 < len(out):
            out[i], out[i + 1] = out[i + 1], out[i]
    return out


def labelled_set(n_docs: int, n_words: int, seed: int = 0):
    """(documents, planted pairs (id, id, true Jaccard) inside each group of a base and its copies, vocab)."""
    params = load_params(ROOT / "params.yaml")
    demo = next(s for s in params.scrape.sources if s.kind == "demo")
    words = " ".join(d["text"] for d in iter_demo(demo)).split()
    vocab = sorted(set(words))
    rng = random.Random(seed)
    n_base = n_docs * 3 // 4
    starts = rng.sample(range(0, len(words) - n_words, n_words), n_base)
    base = [words[s : s + n_words] for s in starts]
    docs = {f"b{i}": " ".join(w) for i, w in enumerate(base)}
    planted, k = [], 0
    for i in rng.sample(range(n_base), n_base):
        if k >= n_docs - n_base:
            break
        group, prev = [f"b{i}"], base[i]
        for m in range(min(rng.choice([1, 1, 2, 3]), n_docs - n_base - k)):
            prev = edit(base[i] if m == 0 or rng.random() < 0.5 else prev, RATES[k % len(RATES)], rng, vocab)
            docs[f"c{k}"] = " ".join(prev)
            group.append(f"c{k}")
            k += 1
        planted += [(a, b, true_jaccard(docs[a], docs[b])) for a, b in itertools.combinations(group, 2)]
    ids = list(docs)
    rng.shuffle(ids)
    return pd.DataFrame({"id": ids, "text": [docs[i] for i in ids]}), planted, vocab


def quality(removed: pd.DataFrame, planted, text: dict, threshold: float, shared) -> dict:
    """recall over planted pairs >= threshold, precision of the removed rows, F1, recall per J band, and
    how many missed pairs share an LSH bucket (`shared`: two ids -> whether a band key is equal)."""
    root = dict(zip(removed["id"], removed["duplicate_of"]))

    def cluster(i: str) -> str:
        while i in root:
            i = root[i]
        return i
    positives = [(a, b) for a, b, j in planted if j >= threshold]
    found = sum(cluster(a) == cluster(b) for a, b in positives)
    missed_in_bucket = sum(cluster(a) != cluster(b) and shared(a, b) for a, b in positives)
    recall = found / max(len(positives), 1)
    correct = sum(true_jaccard(text[i], text[j]) >= threshold for i, j in root.items())
    precision = correct / max(len(root), 1)
    bands = {}
    for lo, hi in ((0.75, 0.8), (0.8, 0.85), (0.85, 0.9), (0.9, 1.01)):
        band = [(a, b) for a, b, j in planted if lo <= j < hi]
        bands[(lo, hi)] = (len(band), sum(cluster(a) == cluster(b) for a, b in band) / max(len(band), 1))
    return {"recall": recall, "found": found, "positives": len(positives), "precision": precision,
            "correct": correct, "removed": len(root), "bands": bands, "missed_in_bucket": missed_in_bucket,
            "f1": 2 * precision * recall / max(precision + recall, 1e-12)}


def bucket_sharing(df: pd.DataFrame, cfg):
    """A function of two ids: whether the documents have an equal band key (are LSH candidates)."""
    _, flat, offsets, _ = ShingleHasher(cfg.shingle_size, cfg.seed).shard(list(df["text"]))
    keys = band_keys(signatures_flat(flat, offsets, cfg.num_perm, cfg.seed), cfg.bands, cfg.rows)
    row = dict(zip(df["id"], range(len(df))))
    return lambda a, b: bool((keys[row[a]] == keys[row[b]]).any())


def peak_memory(n_docs: int, n_words: int, vocab: list[str], cfg) -> float:
    """Peak traced memory (MB) of the streaming core over n_docs random documents in a Parquet file."""
    rng = np.random.default_rng(1)
    v = np.array(vocab)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "docs.parquet"
        texts = [" ".join(v[rng.integers(0, len(v), n_words)]) for _ in range(n_docs)]
        pd.DataFrame({"id": [f"m{i}" for i in range(n_docs)], "text": texts}).to_parquet(path, row_group_size=cfg.shard_docs)
        del texts
        tracemalloc.start()
        find_duplicates(parquet_batches(path, cfg.shard_docs), cfg, workdir=Path(tmp))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=7000)
    ap.add_argument("--words", type=int, default=300)
    ap.add_argument("--memory-docs", type=int, default=100_000)
    args = ap.parse_args()
    # one process, so that the figures are per core (dedup.workers spreads shards over processes)
    cfg = load_params(ROOT / "params.yaml").dedup.model_copy(update={"workers": 1})
    df, planted, vocab = labelled_set(args.docs, args.words)
    mb = sum(len(t.encode("utf-8")) for t in df["text"]) / 1e6

    dedup_documents(df.head(200), cfg)  # warm-up (imports, caches)
    seconds = float("inf")
    for _ in range(3):  # best of three: the throughput figure is the machine's, not its neighbours'
        t0 = time.perf_counter()
        _, removed, stats = dedup_documents(df, cfg)
        seconds = min(seconds, time.perf_counter() - t0)

    text = dict(zip(df["id"], df["text"]))
    shared = bucket_sharing(df, cfg)
    after = quality(removed, planted, text, cfg.jaccard_threshold, shared)
    runs = {"after": (after, stats)}
    for name, update in (("before", {"bucket_all_pairs_max": 1, "bucket_neighbours": 0}),
                         ("direct", {"clusters": "direct"})):
        _, rem, st = dedup_documents(df, cfg.model_copy(update=update))
        runs[name] = (quality(rem, planted, text, cfg.jaccard_threshold, shared), st)
    recall, precision, f1 = after["recall"], after["precision"], after["f1"]

    half = peak_memory(args.memory_docs // 2, args.words, vocab, cfg)
    peak = peak_memory(args.memory_docs, args.words, vocab, cfg)
    per_doc = (peak - half) / (args.memory_docs - args.memory_docs // 2)
    per_million = peak + per_doc * (1e6 - args.memory_docs)
    print(f"set: {len(df)} documents of {args.words} words ({mb:.1f} MB), {len(planted)} planted pairs, "
          f"{after['positives']} with true Jaccard >= {cfg.jaccard_threshold}")
    print(f"{'':28s}" + "".join(f"{name:>22s}" for name in runs))
    rows = [("removed (exact+near)", lambda q, st: f"{st['exact_dups']}+{st['near_dups']}"),
            ("candidate pairs", lambda q, st: str(st["candidate_pairs"])),
            ("rejected by verification", lambda q, st: str(st["candidates_rejected"])),
            ("removed below threshold", lambda q, st: str(st.get("removed_below_threshold", "-")))]
    rows += [(f"recall J [{lo:.2f}, {min(hi, 1):.2f}) ({n})", lambda q, st, b=(lo, hi): f"{q['bands'][b][1]:.4f}")
             for (lo, hi), (n, _) in after["bands"].items()]
    rows += [("recall", lambda q, st: f"{q['recall']:.4f} ({q['found']}/{q['positives']})"),
             ("precision", lambda q, st: f"{q['precision']:.4f} ({q['correct']}/{q['removed']})"),
             ("missed, sharing a bucket", lambda q, st: str(q["missed_in_bucket"])),
             ("F1", lambda q, st: f"{q['f1']:.4f}")]
    for label, cell in rows:
        print(f"{label:28s}" + "".join(f"{cell(q, st):>22s}" for q, st in runs.values()))
    print(f"throughput: {mb / seconds:.2f} MB/s, {len(df) / seconds:.0f} docs/s on one core ({seconds:.2f} s)")
    print(f"peak memory streaming from Parquet: {half:.1f} MB for {args.memory_docs // 2} documents, {peak:.1f} MB "
          f"for {args.memory_docs} ({per_doc * 1e6:.0f} bytes more per document); a million documents, "
          f"extrapolated: {per_million:.0f} MB")
    before, direct = runs["before"][0], runs["direct"][0]
    print(f"RESULT f1={f1:.4f} precision={precision:.4f} recall={recall:.4f} recall_before={before['recall']:.4f} "
          f"precision_before={before['precision']:.4f} f1_before={before['f1']:.4f} "
          f"recall_direct={direct['recall']:.4f} precision_direct={direct['precision']:.4f} "
          f"removed_below_threshold={stats['removed_below_threshold']} missed_in_bucket={after['missed_in_bucket']} "
          f"missed_in_bucket_before={before['missed_in_bucket']} true_pairs={after['positives']} "
          f"mb_per_s_per_core={mb / seconds:.2f} "
          f"docs_per_s_per_core={len(df) / seconds:.0f} peak_mb={peak:.1f} n_docs={len(df)} "
          f"peak_mb_per_million_extrapolated={per_million:.0f}")


if __name__ == "__main__":
    main()
