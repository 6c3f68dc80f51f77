"""Deduplication: exact duplicates by normalized-text hash, then MinHash LSH near-duplicates
(llmpipe/data/minhash.py), optionally against the index of a corpus accepted earlier (incremental), with an
optional removal of boilerplate lines repeated across many documents first (as CCNet and Dolma do).

The input is read in shards of `dedup.shard_docs` documents, in three passes (shingles and
fingerprints; shingles again for the documents of candidate pairs only, to verify them; writing).
Between shards only compact per-document facts stay in memory (the id, the exact hash, shingle count
and size: about 100 bytes, measured by bench/dedup.py); band keys and signatures go to memory-mapped
files on disk, and candidate pairs are found one band's key column at a time. An in-memory LSH index
of Python objects costs about 5 kB per document.

Candidate pairs: documents sharing a band key (a bucket); a bucket of up to `dedup.bucket_all_pairs_max`
members has all its pairs verified, a larger one each member against its first member and its next
`dedup.bucket_neighbours` members (llmpipe.data.minhash.candidate_pairs), so the cost stays bounded.

Which document survives: in every duplicate cluster (`dedup.clusters: transitive`, the connected
components of verified pairs) the document with the lowest index is kept: a document of the reference
index before any new one, then input order (the earliest scraped). Every other member is removed and
recorded with the id of the kept document it duplicates and its similarity to that very document (1.0
for exact; the exact Jaccard of the shingle sets when verifying; else, and against reference documents,
whose texts are not kept, the MinHash estimate). A member reached through a chain may be below the
threshold to the kept document: `removed_below_threshold` counts them. With `dedup.clusters: direct`,
documents are taken in index order and one is removed only if it matches (>= threshold) a document
kept so far, named in duplicate_of (the earliest such); so none is below the threshold.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from llmpipe.config.dedup import DedupParams
from llmpipe.data.fingerprints import Batches, fingerprint_pass, line_hash, strip_lines  # noqa: F401
from llmpipe.data.minhash import ShingleHasher, UnionFind, candidate_pairs, jaccard
from llmpipe.util.io import InputError, atomic_dir, read_json, write_json
from llmpipe.util.resume import ShardCount, ShardLedger

log = logging.getLogger(__name__)

# --- boilerplate lines ---------------------------------------------------------------------------


def boilerplate_lines(batches: Batches, cfg: DedupParams) -> set[int]:
    """Hashes of lines (at least min_chars long) that occur in at least min_docs documents."""
    counts: Counter[int] = Counter()
    for df in batches():
        for text in df["text"]:
            counts.update({line_hash(ln) for ln in text.splitlines() if len(ln.strip()) >= cfg.boilerplate.min_chars})
    return {h for h, c in counts.items() if c >= cfg.boilerplate.min_docs}


# --- the index of an accepted corpus ---------------------------------------------------------------


@dataclass
class DedupIndex:
    """Fingerprints of accepted documents, kept between runs (numpy arrays on disk) so that a new batch
    is deduplicated against the corpus without reading or hashing it again."""

    ids: list[str]
    exact: np.ndarray  # (n,) uint64
    keys: np.ndarray  # (n, bands) uint64
    sigs: np.ndarray  # (n, num_perm) uint32
    meta: dict

    @staticmethod
    def meta_for(cfg: DedupParams) -> dict:
        return {"shingle_size": cfg.shingle_size, "bands": cfg.bands, "rows": cfg.rows, "seed": cfg.seed}

    @classmethod
    def empty(cls, cfg: DedupParams) -> "DedupIndex":
        return cls([], np.empty(0, np.uint64), np.empty((0, cfg.bands), np.uint64),
                   np.empty((0, cfg.num_perm), np.uint32), cls.meta_for(cfg))

    def save_with(self, folder: Path, ids: list[str], exact: np.ndarray, keys: np.ndarray, sigs: np.ndarray,
                  rows: np.ndarray, chunk: int = 65536) -> None:
        """Write this index plus the given `rows` of new fingerprints to `folder` (signatures copied
        chunk by chunk from their memory map, never whole in memory)."""
        with atomic_dir(folder) as tmp:
            np.save(tmp / "exact.npy", np.concatenate([np.asarray(self.exact), exact[rows]]))
            for name, old, new in (("keys.npy", self.keys, keys), ("sigs.npy", self.sigs, sigs)):
                out = np.lib.format.open_memmap(tmp / name, mode="w+", dtype=new.dtype,
                                                shape=(len(self.ids) + len(rows), new.shape[1]))
                for start in range(0, len(self.ids), chunk):
                    end = min(start + chunk, len(self.ids))
                    out[start:end] = old[start:end]
                for start in range(0, len(rows), chunk):
                    part = rows[start : start + chunk]
                    out[len(self.ids) + start : len(self.ids) + start + len(part)] = new[part]
                out.flush()
                del out
            all_ids = list(self.ids) + [ids[i] for i in rows]
            pq.write_table(pa.table({"id": pa.array(all_ids, pa.string())}), tmp / "ids.parquet")
            write_json(tmp / "meta.json", {**self.meta, "docs": len(all_ids)})

    @classmethod
    def load(cls, folder: Path, cfg: DedupParams) -> "DedupIndex":
        meta = read_json(folder / "meta.json")
        want = cls.meta_for(cfg)
        if {k: meta.get(k) for k in want} != want:
            raise InputError(f"{folder / 'meta.json'}: index made with {({k: meta.get(k) for k in want})}, "
                             f"but dedup params say {want}; rebuild it with the same settings")
        ids = pq.read_table(folder / "ids.parquet").column("id").to_pylist()
        idx = cls(ids, np.load(folder / "exact.npy", mmap_mode="r"), np.load(folder / "keys.npy", mmap_mode="r"),
                  np.load(folder / "sigs.npy", mmap_mode="r"), meta)
        if not (len(ids) == len(idx.exact) == len(idx.keys) == len(idx.sigs)):
            raise InputError(f"{folder}: ids, hashes, keys and signatures disagree in length")
        return idx


# --- the core ------------------------------------------------------------------------------------


@dataclass
class Decisions:
    removed: dict[int, tuple[int, str, float]]  # new-doc index -> (global index kept, kind, similarity)
    ids: list[str]  # new documents
    reference_ids: list[str]
    stats: dict
    report: dict


def find_duplicates(batches: Batches, cfg: DedupParams, reference: DedupIndex | None = None,
                    drop: frozenset[int] = frozenset(), index_out: Path | None = None,
                    workdir: Path | None = None, ledger: ShardLedger | None = None,
                    dask_address: str | None = None) -> Decisions:
    """Decide which documents of the corpus are duplicates (of each other or of `reference`), and write
    the index of reference + accepted documents to `index_out` when given. `drop`: hashes of
    boilerplate lines taken out of every text first. `ledger`: where pass 1 keeps each shard's
    fingerprints with a completion record, so a killed run resumes it (else a temporary folder);
    d.stats["shards_resumed"] says how many shards it found done. `dask_address`: pass 1 runs on that
    Dask cluster instead of dedup.workers local processes."""
    ref = reference or DedupIndex.empty(cfg)
    hasher = ShingleHasher(cfg.shingle_size, cfg.seed)
    transform = (lambda t: strip_lines(t, drop)) if drop else None
    workers = cfg.workers or os.cpu_count() or 1
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        # pass 1: fingerprints, shard by shard (in parallel), signatures to disk; resumable through `ledger`
        first = fingerprint_pass(batches, cfg, drop, ledger or ShardLedger(Path(tmp) / "pass1", "", ""), workers,
                                 dask_address)
        ids, exact, n_shingles, sizes, shard_files = first.ids, first.exact, first.n_shingles, first.sizes, first.files
        N = len(ids)
        cat = (lambda parts, empty: np.concatenate(parts) if parts else empty)
        exact_new = cat(exact, np.empty(0, np.uint64))
        n_shingles_new, sizes_new = cat(n_shingles, np.empty(0, np.int64)), cat(sizes, np.empty(0, np.int64))
        del exact
        keys_new = _stack_on_disk([Path(f"{f}-keys.npy") for f in shard_files], Path(tmp) / "keys.npy",
                                  (N, cfg.bands), np.uint64)
        sigs_new = _stack_on_disk([Path(f"{f}-sigs.npy") for f in shard_files], Path(tmp) / "sigs.npy",
                                  (N, cfg.num_perm), np.uint32)
        d = _decide(batches, cfg, ref, hasher, transform, ids, exact_new, keys_new, sigs_new, n_shingles_new,
                    sizes_new, Path(tmp))
        d.stats["short_docs"] = d.report["short_docs"] = first.short
        d.stats.update(ShardCount("dedup", first.resumed).metrics())
        if index_out is not None:
            kept = np.setdiff1d(np.arange(N), np.fromiter(d.removed, dtype=np.int64, count=len(d.removed)))
            ref.save_with(index_out, ids, exact_new, keys_new, sigs_new, kept)
        del sigs_new, keys_new
        return d


class ShingleStore:
    """The shingle sets of the documents in candidate pairs, on disk (sorted, unique uint32 hashes, about
    1.6 bytes per byte of text): verification reads a pair's two sets back through a cache bounded by
    `budget` bytes, so its memory does not grow with the number of documents to verify (held in memory,
    12 documents of 4-8 MB cost ~200 MB more than 4 did)."""

    def __init__(self, path: Path, budget: int):
        self.file = open(path, "w+b")  # noqa: SIM115 - closed with the temporary folder it lives in
        self.where: dict[int, tuple[int, int]] = {}
        self.cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self.budget, self.cached = budget, 0

    def add(self, row: int, shingles: np.ndarray) -> None:
        unique = np.unique(shingles)
        self.file.seek(0, os.SEEK_END)
        self.where[row] = (self.file.tell(), len(unique))
        self.file.write(unique.tobytes())

    def get(self, row: int) -> np.ndarray:
        if row in self.cache:
            self.cache.move_to_end(row)
            return self.cache[row]
        offset, count = self.where[row]
        self.file.seek(offset)
        arr = np.fromfile(self.file, dtype=np.uint32, count=count)
        self.cache[row] = arr
        self.cached += arr.nbytes
        while self.cached > self.budget and len(self.cache) > 2:  # the pair in hand stays
            self.cached -= self.cache.popitem(last=False)[1].nbytes
        return arr


def _stack_on_disk(files: list[Path], dest: Path, shape: tuple[int, int], dtype) -> np.ndarray:
    """The per-shard arrays in `files`, one after the other, as one memory-mapped array (the files stay
    until the stage has published its outputs: a run killed later still resumes pass 1)."""
    out = np.lib.format.open_memmap(dest, mode="w+", dtype=dtype, shape=shape)
    row = 0
    for f in files:
        part = np.load(f)
        out[row : row + len(part)] = part
        row += len(part)
    return out


def _decide(batches, cfg, ref, hasher, transform, ids, exact_new, keys_new, sigs_new, n_shingles_new,
            sizes_new, workdir: Path) -> Decisions:
    R, N = len(ref.ids), len(ids)

    removed: dict[int, tuple[int, str, float]] = {}
    if cfg.exact:  # equal hashes, grouped like band keys: each group's lowest global index is kept
        for root, g in candidate_pairs([np.concatenate([np.asarray(ref.exact), exact_new])]):
            if g >= R:
                removed[int(g) - R] = (int(root), "exact", 1.0)
    n_exact = len(removed)

    n_candidates = n_rejected = n_below = 0
    if cfg.near:
        alive = np.array([i for i in range(N) if i not in removed and n_shingles_new[i] > 0], dtype=np.int64)
        universe = np.concatenate([np.arange(R), R + alive])  # global indices taking part
        columns = (np.concatenate([np.asarray(ref.keys[:, b]), keys_new[:, b][alive]]) for b in range(cfg.bands))
        pairs = (universe[candidate_pairs(columns, cfg.bucket_all_pairs_max, cfg.bucket_neighbours)]
                 if len(universe) else np.empty((0, 2), np.int64))
        pairs = pairs[pairs[:, 1] >= R]  # reference documents were accepted already
        n_candidates = len(pairs)
        shingles_of = ShingleStore(Path(workdir) / "shingles.bin", cfg.shard_bytes)
        if cfg.verify:  # pass 2: shingles again, for the documents of new-new pairs only, to disk
            need = {int(g) - R for p in pairs if p[0] >= R for g in p}
            row = 0
            for df in batches():
                rows = [r for r in range(row, row + len(df)) if r in need]
                if rows:
                    texts = [df["text"].iloc[r - row] for r in rows]
                    _, flat, offsets, _ = hasher.shard([transform(t) for t in texts] if transform else texts)
                    for k, r in enumerate(rows):
                        shingles_of.add(r, flat[offsets[k] : offsets[k + 1]])
                row += len(df)
        sims: dict[tuple[int, int], float] = {}

        def similarity(i: int, j: int) -> float:
            """Of global documents i < j (j new): the exact Jaccard when verifying two new documents,
            else the MinHash estimate (a reference document's text is not kept)."""
            if (i, j) not in sims:
                if cfg.verify and i >= R:
                    sims[(i, j)] = jaccard(shingles_of.get(i - R), shingles_of.get(j - R))
                else:
                    si = ref.sigs[i] if i < R else sigs_new[i - R]
                    sims[(i, j)] = float(np.mean(si == sigs_new[j - R]))
            return sims[(i, j)]

        # a pair counts as a match at >= threshold when verifying, or always in direct mode; without
        # verification a transitive run takes every candidate pair (the LSH banding is the test)
        must_match = cfg.verify or cfg.clusters == "direct"
        kept_for: dict[int, int] = {}  # global new index -> the global index of the document it duplicates
        if cfg.clusters == "transitive":
            uf = UnionFind(R + N)
            for i, j in pairs.tolist():
                if uf.find(i) == uf.find(j):  # joined already: this pair cannot change the clusters
                    continue
                if must_match and similarity(i, j) < cfg.jaccard_threshold:
                    n_rejected += 1
                    continue
                uf.union(i, j)
            kept_for = {R + int(i): uf.find(R + int(i)) for i in alive if uf.find(R + int(i)) != R + int(i)}
        else:  # direct: in index order, a document matching a kept one goes, named after the earliest such
            for i, j in pairs.tolist():  # sorted by i, then j
                if j in kept_for or i in kept_for:  # j is settled, or i is removed (not kept)
                    continue
                if similarity(i, j) < cfg.jaccard_threshold:
                    n_rejected += 1
                    continue
                kept_for[j] = i
        for g, root in kept_for.items():  # the similarity to the very document named in duplicate_of
            sim = similarity(root, g)
            n_below += sim < cfg.jaccard_threshold  # chained: removed through intermediate documents
            removed[g - R] = (root, "near", round(sim, 4))
        shingles_of.file.close()

    keep = np.ones(N, dtype=bool)
    keep[list(removed)] = False
    clusters = Counter(root for root, _, _ in removed.values())
    stats = {"docs_in": N, "exact_dups": n_exact, "near_dups": len(removed) - n_exact, "docs_out": int(keep.sum()),
             "bytes_in": int(sizes_new.sum()), "bytes_removed": int(sizes_new[~keep].sum()),
             "empty_docs": int((n_shingles_new == 0).sum()), "candidate_pairs": n_candidates,
             "candidates_rejected": n_rejected, "removed_below_threshold": int(n_below), "reference_docs": R,
             "removed_as_duplicate_of_reference": sum(1 for root, _, _ in removed.values() if root < R)}
    histogram = Counter(1 + c for c in clusters.values())
    report = {**stats, "cluster_size_histogram": {str(k): v for k, v in sorted(histogram.items())},
              "sample_pairs": [{"id": ids[i], "duplicate_of": _global_id(r, ref.ids, ids), "kind": k,
                                "similarity": s} for i, (r, k, s) in sorted(removed.items())[: cfg.report_examples]]}
    return Decisions(removed, ids, list(ref.ids), stats, report)


def _global_id(g: int, reference_ids: list[str], ids: list[str]) -> str:
    """The id of global index g: reference documents first, then the new ones."""
    return reference_ids[g] if g < len(reference_ids) else ids[g - len(reference_ids)]


def removed_table(d: Decisions) -> pd.DataFrame:
    return pd.DataFrame([{"id": d.ids[i], "duplicate_of": _global_id(r, d.reference_ids, d.ids), "kind": k,
                          "similarity": s}
                         for i, (r, k, s) in sorted(d.removed.items())],
                        columns=["id", "duplicate_of", "kind", "similarity"])


def dedup_documents(df: pd.DataFrame, cfg: DedupParams, reference: DedupIndex | None = None,
                    shard_docs: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """In-memory form of the stage: returns (kept documents, removed [id, duplicate_of, kind, similarity],
    stats) and leaves the index in stats["index"] off (use find_duplicates for it)."""
    size = shard_docs or cfg.shard_docs
    drop = frozenset(boilerplate_lines(lambda: iter([df]), cfg)) if cfg.boilerplate.enabled else frozenset()
    transform = (lambda t: strip_lines(t, drop)) if drop else None
    d = find_duplicates(lambda: (df.iloc[i : i + size] for i in range(0, max(len(df), 1), size)), cfg,
                        reference, drop)
    keep = np.ones(len(df), dtype=bool)
    keep[list(d.removed)] = False
    kept = df[keep].reset_index(drop=True)
    if transform:
        kept = kept.assign(text=[transform(t) for t in kept["text"]])
    return kept, removed_table(d), d.stats


# --- the stage: Parquet in, Parquet out, shard by shard ------------------------------------------
