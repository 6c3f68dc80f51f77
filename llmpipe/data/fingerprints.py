"""Pass 1 of deduplication (llmpipe/data/dedup.py): per shard of documents, the exact hashes, MinHash
signatures and band keys, computed in worker processes and kept on disk shard by shard.

Each shard's arrays go to the stage's work folder with a completion record (llmpipe.util.resume): a run
killed during pass 1 or later finds the finished shards there and computes only the others. A shard is
identified by the hash of its documents' ids and texts, so a changed input redoes exactly the shards
whose documents changed (and, the shards being cut by count and size, those after a shifted boundary).
"""

from __future__ import annotations

import itertools
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import xxhash

from llmpipe.config.dedup import DedupParams
from llmpipe.data.minhash import ShingleHasher, band_keys, signatures_flat
from llmpipe.util.executors import exit_with_parent, in_order, ordered_on_cluster
from llmpipe.util.io import atomic_path
from llmpipe.util.resume import ShardLedger, text_hash

Batches = Callable[[], Iterator[pd.DataFrame]]  # a fresh pass over the corpus, shard by shard
ARRAYS = ("sigs", "keys", "exact", "counts")  # the files of one shard: <shard>-<name>.npy


def line_hash(line: str) -> int:
    return xxhash.xxh3_64_intdigest(" ".join(line.split()).casefold().encode("utf-8"))


def strip_lines(text: str, drop: set[int]) -> str:
    return "\n".join(ln for ln in text.split("\n") if len(ln.strip()) == 0 or line_hash(ln) not in drop)


def _save(ledger: ShardLedger, name: str, array: np.ndarray) -> None:
    with atomic_path(ledger.path(name)) as tmp, open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)


def fingerprint_shard(ids: list[str], texts: list[str], cfg: DedupParams, drop: frozenset[int], shard: str,
                      ledger: ShardLedger) -> dict:
    """Pass 1 for one shard (run in a worker process when dedup.workers > 1): the signatures, band keys,
    exact hashes and counts are written to the ledger's `<shard>-*.npy` files, unless its completion
    record says they are there already; returns the shard's `short` count and whether it was resumed."""
    inputs = text_hash([*ids, *texts])
    done = ledger.lookup(shard, inputs)
    if done is not None:
        return {**done, "resumed": True}
    if drop:
        texts = [strip_lines(t, drop) for t in texts]
    exact, flat, offsets, units = ShingleHasher(cfg.shingle_size, cfg.seed).shard(texts)
    sigs = signatures_flat(flat, offsets, cfg.num_perm, cfg.seed)
    sizes = np.array([len(t.encode("utf-8")) for t in texts], dtype=np.int64)
    counts = np.stack([np.diff(offsets).astype(np.int64), sizes], axis=1)
    for name, array in zip(ARRAYS, (sigs, band_keys(sigs, cfg.bands, cfg.rows), exact, counts)):
        _save(ledger, f"{shard}-{name}.npy", array)
    result = {"short": int(((units > 0) & (units < cfg.shingle_size)).sum())}
    ledger.commit(shard, inputs, [f"{shard}-{name}.npy" for name in ARRAYS], result)
    return {**result, "resumed": False}


def ordered_map(fn, jobs: Iterator[tuple], workers: int) -> Iterator:
    """fn(*job) for each job, in order, on `workers` processes with at most 2 x workers shards in flight
    (so memory stays bounded by the shard size); in this process when workers is 1 or there is only
    one job (starting processes would cost more than it saves)."""
    jobs = iter(jobs)
    head = [job for job in (next(jobs, None), next(jobs, None)) if job is not None]
    if workers == 1 or len(head) < 2:
        yield from (fn(*job) for job in itertools.chain(head, jobs))
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=exit_with_parent) as pool:
        chained = itertools.chain(head, jobs)
        del head  # the chain holds the first two jobs only until they are submitted
        yield from in_order(chained, lambda job: pool.submit(fn, *job), 2 * workers,
                            lambda future: future.result())


@dataclass
class FirstPass:
    """What pass 1 keeps in memory (compact per-document facts) and where the signatures lie."""

    ids: list[str] = field(default_factory=list)
    exact: list[np.ndarray] = field(default_factory=list)
    n_shingles: list[np.ndarray] = field(default_factory=list)
    sizes: list[np.ndarray] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)  # per shard: the prefix of its -sigs.npy / -keys.npy
    short: int = 0
    resumed: list[bool] = field(default_factory=list)


def fingerprint_pass(batches: Batches, cfg: DedupParams, drop: frozenset[int], ledger: ShardLedger,
                     workers: int, dask_address: str | None = None) -> FirstPass:
    """Pass 1 over every shard: on local processes, or on the Dask cluster at `dask_address` (its workers
    write to the ledger's folder, so they must see it: a shared file system, as for the other stages)."""
    out = FirstPass()

    def jobs():
        for k, df in enumerate(batches()):
            ids = list(df["id"])
            out.ids.extend(ids)
            out.files.append(ledger.path(f"shard-{k:05d}"))
            yield ids, list(df["text"]), cfg, drop, f"shard-{k:05d}", ledger

    results = (ordered_on_cluster(fingerprint_shard, jobs(), dask_address, "dedup") if dask_address
               else ordered_map(fingerprint_shard, jobs(), workers))
    for k, part in enumerate(results):
        base = out.files[k]
        counts = np.load(f"{base}-counts.npy")
        out.exact.append(np.load(f"{base}-exact.npy"))
        out.n_shingles.append(counts[:, 0])
        out.sizes.append(counts[:, 1])
        out.short += part["short"]
        out.resumed.append(part["resumed"])
    return out
