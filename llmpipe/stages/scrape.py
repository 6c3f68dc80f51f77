"""Stage 1, scrape: read the configured sources into Parquet shards, one per work unit, with provenance.

Inputs that cannot become documents (an HTTP error, a truncated WARC, a binary file, an oversized
page, ...) are counted by reason with a few examples in data/scrape/report.json; the rest goes on.
The stage fails when nothing at all could be read (bad input, exit 2), and when the environment cannot
extract HTML: the extractor cannot be imported, or every page fails with one exception (exit 1).
"""

from __future__ import annotations

import functools
import logging
import pickle
import time
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from llmpipe.data.extract import extraction_tally
from llmpipe.data.sources import ScrapeParams, Skip, Unit, iter_unit, now_iso, plan_units
from llmpipe.stages.registry import StageParams, StageResult, stage
from llmpipe.util.executors import map_shards
from llmpipe.util.io import (InputError, atomic_dir, atomic_path, iter_parquet_batches, part_name, stats_columns,
                             write_json)
from llmpipe.util.resume import ShardCount, ShardLedger, json_hash
from llmpipe.util.tally import Tally

log = logging.getLogger(__name__)
STAGE = stage("scrape")

SCHEMA = pa.schema([("id", pa.string()), ("source", pa.string()), ("path", pa.string()),
                    ("url", pa.string()), ("title", pa.string()), ("text", pa.string()),
                    ("sha256", pa.string()), ("fetched_at", pa.string()), ("group", pa.string())])
WRITE_BATCH_DOCS = 1000  # rows buffered before a Parquet row group is written (with scrape.buffer_bytes)
EXAMPLES_PER_REASON = 5
# This many HTML pages or more, every one failing extraction with one exception type: the engine or
# its environment is broken (a missing or mismatched dependency), not the pages.
SYSTEMATIC_FAILURE_PAGES = 5


class ExtractionBroken(RuntimeError):
    """Every HTML page of the run failed extraction the same way (exit status 1: not bad input)."""


def collect_documents(items: Iterable[dict | Skip], max_doc_bytes: int, writer=None, stats: Tally | None = None,
                      buffer_bytes: int = 128_000_000) -> Tally:
    """Core: count and keep documents. Skips, empty, oversized and repeated-id documents are counted by
    reason (with examples); kept documents go to `writer` (a pyarrow ParquetWriter) in row groups of at
    most WRITE_BATCH_DOCS documents and about `buffer_bytes` of text, so that neither this buffer nor a
    later stage reading one row group grows with the number of large documents."""
    stats = stats or Tally(EXAMPLES_PER_REASON)
    seen_ids: set[str] = set()
    rows: list[dict] = []
    buffered = 0

    def skip(reason: str, where: str, detail: str = "") -> None:
        stats.note("skipped", reason, example={"where": where, "detail": detail})

    def flush() -> None:
        nonlocal buffered
        if rows and writer is not None:
            writer.write_table(pa.Table.from_pylist(rows, schema=SCHEMA))
        rows.clear()
        buffered = 0

    for item in items:
        if isinstance(item, Skip):
            skip(item.reason, item.where, item.detail)
            continue
        stats.count("docs_in")
        size = len(item["text"].encode("utf-8"))
        if not item["text"].strip():
            skip("empty", item["id"])
        elif size > max_doc_bytes:
            skip("oversize", item["id"], f"{size} bytes")
        elif item["id"] in seen_ids:
            skip("duplicate_id", item["id"])
        else:
            seen_ids.add(item["id"])
            rows.append({**item, "fetched_at": item["fetched_at"] or now_iso()})
            stats.count("docs_out")
            stats.count("bytes_out", size)
            buffered += size
            if len(rows) >= WRITE_BATCH_DOCS or buffered >= buffer_bytes:
                flush()
    flush()
    return stats


def unit_inputs(unit: Unit, root: Path) -> str:
    """What a unit's completion record says it read: the unit (its source and file names) and, for each
    of its files on the local disk, the size and modification time (a WARC file is not read twice to
    hash it; a document's fetched_at is its file's mtime anyway). Remote inputs (HTTP pages, the demo
    download) are identified by their names only: a scrape of them is a snapshot."""
    stats = []
    for name in unit.files:
        path = root / name
        if path.is_file():
            st = path.stat()
            stats.append([name, st.st_size, st.st_mtime_ns])
    return json_hash({"source": unit.source_index, "files": list(unit.files), "stat": stats})


def scrape_unit(job: tuple[int, Unit], cfg: ScrapeParams, root: Path, ledger: ShardLedger) -> tuple[Tally, bool]:
    """One shard: read a unit's inputs, write part-<index>.parquet (only when it kept documents) into the
    work folder, unless its completion record says it was read already. Returns (stats, resumed)."""
    index, unit = job
    name = part_name(index)
    inputs = unit_inputs(unit, root)
    done = ledger.lookup(name, inputs)
    if done is not None:
        return Tally.from_dict(done), True
    dest = ledger.path(name)
    try:
        with atomic_path(dest) as tmp, extraction_tally() as tally:
            with pq.ParquetWriter(tmp, SCHEMA, compression="zstd", write_statistics=stats_columns(SCHEMA)) as writer:
                stats = collect_documents(iter_unit(unit, cfg, root), cfg.max_doc_bytes, writer,
                                          buffer_bytes=cfg.buffer_bytes)
            for outcome, n in tally.items():
                stats.note("extraction", outcome, n)
    except Exception as err:
        try:
            pickle.loads(pickle.dumps(err))
        except Exception:  # noqa: BLE001 - a process-pool worker must hand back a picklable error
            raise RuntimeError(f"scrape shard {index}: {err.__class__.__name__}: {err}"[:2000]) from None
        raise
    if stats.totals["docs_out"] == 0:
        dest.unlink()
    ledger.commit(name, inputs, [name] if dest.exists() else [], stats.to_dict())
    return stats, False


def check_extraction(stats: Tally, extractor: str) -> None:
    """Fail when every HTML page (SYSTEMATIC_FAILURE_PAGES or more) failed extraction with one exception
    type: counting them as extract_error would report success with almost no documents."""
    outcomes = stats.group("extraction")
    pages = sum(outcomes.values())
    if pages < SYSTEMATIC_FAILURE_PAGES or outcomes["ok"] or len(outcomes) != 1:
        return
    (error, _), = outcomes.items()
    example = (stats.examples.get("skipped", {}).get("extract_error") or [{"where": "?", "detail": error}])[0]
    raise ExtractionBroken(
        f"scrape: all {pages} HTML pages failed extraction with {error} (e.g. {example['where']}: "
        f"{example['detail']}). One exception on every page points at the {extractor} engine or its "
        f"dependencies (a missing or mismatched package), not at the pages: check that "
        f"`python -c 'import {extractor}'` works, then upgrade pip and re-run the setup (`pip install -e .`)")


def drop_repeated_ids(out_dir: Path, stats: Tally, buffer_bytes: int) -> None:
    """Ids repeat across shards only when two sources name the same input: the later copy goes. A part
    that holds one is rewritten row group by row group (never read whole)."""
    seen: set[str] = set()
    for part in sorted(out_dir.glob("part-*.parquet")):
        ids = [i for b in iter_parquet_batches(part, 65536, ["id"]) for i in b.column(0).to_pylist()]
        repeated = [i in seen for i in ids]
        seen.update(ids)
        if not any(repeated):
            continue
        stats.note("skipped", "duplicate_id", sum(repeated))
        stats.count("docs_out", -sum(repeated))
        if all(repeated):
            part.unlink()
            continue
        row = 0
        with atomic_path(part) as tmp, pq.ParquetWriter(tmp, SCHEMA, compression="zstd",
                                                        write_statistics=stats_columns(SCHEMA)) as writer:
            for batch in iter_parquet_batches(part, WRITE_BATCH_DOCS, max_bytes=buffer_bytes):
                keep = pa.array([not r for r in repeated[row : row + batch.num_rows]])
                row += batch.num_rows
                writer.write_table(pa.Table.from_batches([batch]).filter(keep))


def run(params: StageParams, root: Path, sink=None) -> StageResult:
    t0 = time.perf_counter()
    cfg = params.scrape
    units = plan_units(cfg, root)
    ledger = ShardLedger.open(root, STAGE.name, __name__, cfg)
    shard = functools.partial(scrape_unit, cfg=cfg, root=root, ledger=ledger)
    results = map_shards(shard, list(enumerate(units)), params.scale, "scrape")
    count = ShardCount("scrape", [resumed for _, resumed in results])
    stats = Tally.merged([tally for tally, _ in results], EXAMPLES_PER_REASON)
    check_extraction(stats, cfg.extractor)
    with atomic_dir(root / STAGE.out("docs")) as out_dir:
        ledger.publish([n for n in map(part_name, range(len(units))) if ledger.path(n).is_file()], out_dir)
        drop_repeated_ids(out_dir, stats, cfg.buffer_bytes)
        skipped = stats.group("skipped")
        if stats.totals["docs_out"] == 0:
            reasons = ", ".join(f"{r}: {n}" for r, n in skipped.most_common()) or "no inputs"
            raise InputError(f"scrape: no documents could be read from the sources ({reasons})")
    report = {"skipped": dict(skipped), "examples": stats.examples.get("skipped", {})}
    write_json(root / STAGE.out("report"), report)
    ledger.clear()
    metrics = {**count.metrics(), **{k: stats.totals[k] for k in ("docs_in", "docs_out", "bytes_out")},
               "shards": len(list((root / STAGE.out("docs")).glob("part-*.parquet"))),
               "skipped": sum(skipped.values()),
               **{f"skipped_{r}": n for r, n in sorted(skipped.items())},
               "seconds": round(time.perf_counter() - t0, 3)}
    log.info("scrape: %d documents, %.1f MB, %d skipped %s", metrics["docs_out"], metrics["bytes_out"] / 1e6,
             metrics["skipped"], dict(skipped) or "")
    return StageResult(metrics, artifacts=[root / STAGE.out("report")])
