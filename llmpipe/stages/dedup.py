"""Stage 3, dedup: exact and MinHash near-duplicate removal (llmpipe/data/dedup.py), streamed over the
filter's parts; writes the kept documents, the removed ones with what they duplicate, a report and the
index of the kept corpus for later incremental runs."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from llmpipe.stages.registry import StageParams, StageResult, stage
from llmpipe.util.executors import release_cluster
from llmpipe.util.io import (InputError, atomic_path, iter_parquet_batches, parquet_schema, require_columns, stats_columns, write_json, write_parquet)
from llmpipe.util.resume import ShardLedger

from llmpipe.data.dedup import Batches, DedupIndex, boilerplate_lines, find_duplicates, removed_table, strip_lines

log = logging.getLogger(__name__)
STAGE = stage("dedup")


def parquet_batches(path: Path, shard_docs: int, shard_bytes: int | None = None) -> Batches:
    """Shards of at most shard_docs documents and about shard_bytes of text (a shard of a few huge
    documents is as small in memory as one of many short ones)."""
    require_columns(pd.DataFrame(columns=parquet_schema(path).names), ["id", "text"], path)
    return lambda: (b.to_pandas() for b in iter_parquet_batches(path, shard_docs, ["id", "text"],
                                                                   max_bytes=shard_bytes))


def write_kept(src: Path, dest: Path, removed: set[int], shard_docs: int,
               transform: Callable[[str], str] | None, shard_bytes: int | None = None) -> None:
    """Pass 3: copy the documents that stay (all columns), shard by shard (one row group each, so a
    reader of `dest` is bounded too), to `dest` atomically."""
    row = 0
    schema = parquet_schema(src)
    with atomic_path(dest) as tmp, pq.ParquetWriter(tmp, schema, write_statistics=stats_columns(schema)) as writer:
        for batch in iter_parquet_batches(src, shard_docs, max_bytes=shard_bytes):
            keep = np.array([row + i not in removed for i in range(batch.num_rows)], dtype=bool)
            row += batch.num_rows
            table = pa.Table.from_batches([batch]).filter(pa.array(keep))
            if transform is not None and table.num_rows:
                texts = [transform(t) for t in table.column("text").to_pylist()]
                table = table.set_column(table.schema.get_field_index("text"), "text", pa.array(texts, pa.string()))
            writer.write_table(table)


def run(params: StageParams, root: Path, sink=None) -> StageResult:
    t0 = time.perf_counter()
    cfg = params.dedup
    src = root / STAGE.inp("docs")
    if not src.exists():
        raise InputError(f"{src}: not found (did the filter stage run?)")
    batches = parquet_batches(src, cfg.shard_docs, cfg.shard_bytes)
    drop = frozenset(boilerplate_lines(batches, cfg)) if cfg.boilerplate.enabled else frozenset()
    transform = (lambda t: strip_lines(t, drop)) if drop else None
    reference = DedupIndex.load(root / cfg.reference_index, cfg) if cfg.reference_index else None
    (root / STAGE.out("docs")).parent.mkdir(parents=True, exist_ok=True)
    # pass 1 (the signatures) resumes shard by shard; its shards also depend on the boilerplate lines
    ledger = ShardLedger.open(root, STAGE.name, __name__, {"dedup": cfg.model_dump(mode="json"),
                                                           "boilerplate_lines": sorted(drop)})
    ledger.folder.mkdir(parents=True, exist_ok=True)  # its temporary files too: a killed run's go with it
    d = find_duplicates(batches, cfg, reference, drop, index_out=root / STAGE.out("index"),
                        workdir=ledger.folder, ledger=ledger, dask_address=params.scale.dask_address)
    release_cluster(params.scale)  # only pass 1 (the signatures) ran on the cluster, if one is set
    if d.stats["docs_in"] == 0:
        raise InputError(f"{src}: no documents")
    write_parquet(root / STAGE.out("removed"), removed_table(d))
    write_kept(src, root / STAGE.out("docs"), set(d.removed), cfg.shard_docs, transform, cfg.shard_bytes)
    report = {**d.report, "boilerplate_lines": len(drop)}
    write_json(root / STAGE.out("report"), report)
    ledger.clear()
    stats = {**d.stats, "boilerplate_lines": len(drop), "seconds": round(time.perf_counter() - t0, 3),
             "cluster_size_histogram": report["cluster_size_histogram"]}
    log.info("dedup: %d in, %d exact, %d near, %d out", stats["docs_in"], stats["exact_dups"],
             stats["near_dups"], stats["docs_out"])
    return StageResult(stats, artifacts=[root / STAGE.out("report"), root / STAGE.out("removed")])
