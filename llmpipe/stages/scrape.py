"""Stage 1, scrape: gather raw documents from the configured sources into one Parquet table."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Iterable, Iterator

import pandas as pd

from .. import layout
from ..config import DemoSource, LocalSource, Params, ScrapeParams
from ..io import InputError, write_parquet
from ..sources import iter_demo, iter_local
from .base import StageResult

log = logging.getLogger(__name__)

COLUMNS = ["id", "source", "path", "title", "text", "sha256", "fetched_at"]


def iter_sources(cfg: ScrapeParams, root: Path) -> Iterator[dict]:
    for source in cfg.sources:
        if isinstance(source, DemoSource):
            yield from iter_demo(source)
        elif isinstance(source, LocalSource):
            yield from iter_local(source, root)
        else:  # pragma: no cover - the config union lists every kind
            raise TypeError(f"unknown source kind {source!r}")


def collect_documents(docs: Iterable[dict], max_doc_bytes: int) -> tuple[pd.DataFrame, dict]:
    """Core: documents -> table. Empty and oversized documents are counted, not kept."""
    rows, seen_ids = [], set()
    stats = {"docs_in": 0, "docs_out": 0, "bytes_out": 0, "dropped_empty": 0,
             "dropped_oversize": 0, "dropped_duplicate_id": 0}
    now = pd.Timestamp.now(tz="UTC").isoformat()
    for doc in docs:
        stats["docs_in"] += 1
        size = len(doc["text"].encode("utf-8"))
        if not doc["text"].strip():
            stats["dropped_empty"] += 1
        elif size > max_doc_bytes:
            stats["dropped_oversize"] += 1
        elif doc["id"] in seen_ids:
            stats["dropped_duplicate_id"] += 1
        else:
            seen_ids.add(doc["id"])
            rows.append({**doc, "fetched_at": doc.get("fetched_at", now)})
            stats["bytes_out"] += size
    stats["docs_out"] = len(rows)
    return pd.DataFrame(rows, columns=COLUMNS), stats


def run(params: Params, root: Path, sink=None) -> StageResult:
    t0 = time.perf_counter()
    df, stats = collect_documents(iter_sources(params.scrape, root), params.scrape.max_doc_bytes)
    if df.empty:
        raise InputError(f"scrape: no documents could be read from the sources ({stats})")
    write_parquet(root / layout.SCRAPE_DOCS, df)
    stats["seconds"] = round(time.perf_counter() - t0, 3)
    log.info("scrape: %d documents, %.1f MB", stats["docs_out"], stats["bytes_out"] / 1e6)
    return StageResult(stats)
