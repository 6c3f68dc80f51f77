"""Stage 3, dedup: exact duplicates by normalized-text hash, then MinHash LSH near-duplicates.

Rule for which document survives: in every duplicate cluster the first document in input order is
kept (the earliest scraped), every other member is removed and recorded with the id it duplicates.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import xxhash
from datasketch import MinHash

from .. import layout
from ..config import DedupParams, Params
from ..io import InputError, read_parquet, require_columns, write_parquet
from ..text import normalize_for_hash, word_shingles
from .base import StageResult

log = logging.getLogger(__name__)


def exact_hash(text: str) -> int:
    return xxhash.xxh3_64_intdigest(normalize_for_hash(text).encode("utf-8"))


def minhash_signatures(shingle_sets: list[list[bytes]], cfg: DedupParams) -> np.ndarray:
    """(n_docs, num_perm) uint64 MinHash signatures, from datasketch with a seeded xxhash."""
    seed = cfg.seed

    def hashfunc(b: bytes) -> int:
        return xxhash.xxh32_intdigest(b, seed)

    sigs = np.empty((len(shingle_sets), cfg.num_perm), dtype=np.uint64)
    for i, m in enumerate(MinHash.generator(shingle_sets, num_perm=cfg.num_perm, seed=seed, hashfunc=hashfunc)):
        sigs[i] = m.hashvalues
    return sigs


def candidate_pairs(sigs: np.ndarray, bands: int, rows: int) -> set[tuple[int, int]]:
    """Pairs of documents that share at least one whole band of their signatures."""
    pairs: set[tuple[int, int]] = set()
    for b in range(bands):
        buckets: dict[bytes, list[int]] = defaultdict(list)
        block = np.ascontiguousarray(sigs[:, b * rows : (b + 1) * rows])
        for i in range(len(block)):
            buckets[block[i].tobytes()].append(i)
        for members in buckets.values():
            first = members[0]
            pairs.update((first, j) for j in members[1:])  # a star per bucket suffices for clustering
    return pairs


class UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:  # the lower index becomes the root, so it is the one kept
            self.parent[max(ri, rj)] = min(ri, rj)


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def dedup_documents(df: pd.DataFrame, cfg: DedupParams) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Core: returns (kept documents, removed [id, duplicate_of, kind, similarity], stats)."""
    n = len(df)
    texts = df["text"].tolist()
    ids = df["id"].tolist()
    removed: dict[int, tuple[int, str, float]] = {}

    if cfg.exact:
        first_by_hash: dict[int, int] = {}
        for i, text in enumerate(texts):
            h = exact_hash(text)
            if h in first_by_hash:
                removed[i] = (first_by_hash[h], "exact", 1.0)
            else:
                first_by_hash[h] = i
    n_exact = len(removed)

    if cfg.near:
        alive = [i for i in range(n) if i not in removed]
        shingles = [word_shingles(texts[i], cfg.shingle_size) for i in alive]
        nonempty = [k for k, s in enumerate(shingles) if s]
        sigs = minhash_signatures([shingles[k] for k in nonempty], cfg)
        uf = UnionFind(n)
        sim: dict[int, float] = {}
        for a, b in candidate_pairs(sigs, cfg.bands, cfg.rows):
            i, j = alive[nonempty[a]], alive[nonempty[b]]
            if cfg.verify:
                s = jaccard(set(shingles[nonempty[a]]), set(shingles[nonempty[b]]))
                if s < cfg.jaccard_threshold:
                    continue
            else:
                s = float(np.mean(sigs[a] == sigs[b]))
            uf.union(i, j)
            sim[max(i, j)] = max(sim.get(max(i, j), 0.0), s)
        for i in alive:
            root = uf.find(i)
            if root != i:
                removed[i] = (root, "near", round(sim.get(i, 0.0), 4))

    keep_mask = np.ones(n, dtype=bool)
    keep_mask[list(removed)] = False
    kept = df[keep_mask].reset_index(drop=True)
    removed_df = pd.DataFrame(
        [{"id": ids[i], "duplicate_of": ids[j], "kind": kind, "similarity": s}
         for i, (j, kind, s) in sorted(removed.items())],
        columns=["id", "duplicate_of", "kind", "similarity"],
    )
    stats = {"docs_in": n, "exact_dups": n_exact, "near_dups": len(removed) - n_exact, "docs_out": len(kept)}
    return kept, removed_df, stats


def run(params: Params, root: Path, sink=None) -> StageResult:
    t0 = time.perf_counter()
    src = root / layout.FILTER_DOCS
    df = read_parquet(src)
    require_columns(df, ["id", "text"], src)
    if df.empty:
        raise InputError(f"{src}: no documents")
    kept, removed, stats = dedup_documents(df, params.dedup)
    write_parquet(root / layout.DEDUP_REMOVED, removed)
    write_parquet(root / layout.DEDUP_DOCS, kept)
    stats["seconds"] = round(time.perf_counter() - t0, 3)
    log.info("dedup: %d in, %d exact, %d near, %d out", stats["docs_in"], stats["exact_dups"],
             stats["near_dups"], stats["docs_out"])
    return StageResult(stats, artifacts=[root / layout.DEDUP_REMOVED])
