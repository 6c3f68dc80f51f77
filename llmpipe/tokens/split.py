"""The train/val split by group of documents: the group keys, the side of each group, and the one reader
of the split stage's assignments that every consumer uses (tokenizer, tokenize, tasks, sft-data, seen).

A group keeps documents that share text together (both editions of a play, the pages of one site), so
no work straddles train and val. The split stage (llmpipe/stages/split.py) decides each document's
side once, decontaminates val, and writes data/split/assignments.parquet in the documents' row order.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow.parquet as pq
import xxhash

from llmpipe.config.tokens import SplitGroup
from llmpipe.util.io import InputError, iter_parquet_batches

ASSIGNMENT_COLUMNS = ["id", "group", "side", "reason", "overlap"]


def val_mask(keys: list[str], val_fraction: float, seed: int) -> np.ndarray:
    """True where a key goes to val. Decided by a hash of the key alone, so adding keys never moves
    others; at least one key lands on each side when there are two or more."""
    u = np.array([xxhash.xxh64_intdigest(f"{seed}:{k}".encode("utf-8")) / 2.0**64 for k in keys])
    mask = u < val_fraction
    if len(keys) >= 2 and not mask.any():
        mask[int(np.argmin(u))] = True
    if len(keys) >= 2 and mask.all():
        mask[int(np.argmax(u))] = False
    return mask


def group_keys(ids: list[str], paths: list[str | None], urls: list[str | None], groups: list[str | None],
               cfg: SplitGroup) -> tuple[list[str], int]:
    """(the group key of each document, how many fell back to their own id). `groups` is the column the
    sources set (all None for documents scraped before it existed)."""
    if cfg.by == "id":
        return list(ids), 0
    keys, fallback = [], 0
    if cfg.by == "source":
        for doc_id, group in zip(ids, groups):
            keys.append(f"group:{group}" if group else f"id:{doc_id}")
            fallback += not group
        return keys, fallback
    pattern = re.compile(cfg.path_regex)
    for doc_id, path, url in zip(ids, paths, urls):
        m = pattern.search(path or url or "")
        if m is None:
            keys.append(f"id:{doc_id}")
            fallback += 1
        else:
            keys.append(f"path:{m.group(1) if pattern.groups else m.group(0)}")
    if ids and fallback == len(ids):
        raise InputError(f"split.group.path_regex: {cfg.path_regex!r} matches no document's path or URL "
                         f"(e.g. {paths[0] or urls[0]!r})")
    return keys, fallback


def side_of_groups(keys: list[str], val_fraction: float, seed: int) -> np.ndarray:
    """True for documents whose group goes to val (a hash of the group key, as val_mask)."""
    distinct = sorted(set(keys))
    if len(distinct) < 2:
        raise InputError(f"split.group.by: all {len(keys)} documents fall in one group "
                         f"({distinct[0] if distinct else 'none'!r}), so val would be empty: group by a part "
                         "of the path or URL instead (split.group.by: path_regex with e.g. "
                         "split.group.path_regex: 'https?://[^/]+/([^/]+)' for a site's sections), or by "
                         "document (split.group.by: id)")
    in_val = dict(zip(distinct, val_mask(distinct, val_fraction, seed)))
    return np.array([bool(in_val[k]) for k in keys], dtype=bool)


def read_val_mask(assignments: Path, docs: Path) -> np.ndarray:
    """The split stage's sides, True for val, in the documents' row order. The assignments must name the
    documents of `docs` in the same order (else they are stale: run the split stage)."""
    try:
        table = pq.read_table(assignments, columns=["id", "side"])
    except FileNotFoundError:
        raise InputError(f"{assignments}: file not found (did the split stage run?)") from None
    try:
        doc_ids = pq.read_table(docs, columns=["id"]).column("id").to_pylist()
    except FileNotFoundError:
        raise InputError(f"{docs}: file not found (did the dedup stage run?)") from None
    if table.column("id").to_pylist() != doc_ids:
        raise InputError(f"{assignments}: does not list the documents of {docs} in order "
                         f"({table.num_rows} rows, {len(doc_ids)} documents; run `llmpipe split`)")
    return np.array([s == "val" for s in table.column("side").to_pylist()], dtype=bool)


def iter_split_docs(docs: Path, assignments: Path, want_val: bool, batch_rows: int = 64,
                    batch_bytes: int = 32_000_000) -> Iterator[tuple[str, str]]:
    """Stream (id, text) of one split's documents from a Parquet file without loading the corpus whole
    (reads of at most batch_rows documents and about batch_bytes, whatever the documents' sizes)."""
    mask = read_val_mask(assignments, docs)
    row = 0
    for batch in iter_parquet_batches(docs, batch_rows, ["id", "text"], max_bytes=batch_bytes):
        for doc_id, text in zip(batch.column("id").to_pylist(), batch.column("text").to_pylist()):
            if bool(mask[row]) == want_val:
                yield doc_id, text
            row += 1


def iter_split_texts(docs: Path, assignments: Path, want_val: bool, **kw) -> Iterator[str]:
    """The texts of iter_split_docs."""
    return (text for _, text in iter_split_docs(docs, assignments, want_val, **kw))
