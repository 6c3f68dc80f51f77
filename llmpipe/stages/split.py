"""Stage split: each document's side, train or val, decided once for every later stage.

1. Group: documents that share a key (split.group: the work of the demo's plays, both editions alike;
   the registered domain of a web page; a record field; a regex over the path) go to one side together,
   chosen by a hash of the key, so one work never straddles train and val.
2. Decontaminate, as Paloma does: a val document whose distinct word n-grams (13 by default) are found in
   the train split more than split.decontaminate.max_overlap of the time moves to train with the rest
   of its group; moved documents join train, so the check repeats until nothing moves.

Writes data/split/assignments.parquet (id, group, side, reason, overlap; the documents' row order;
reason: "group" or "contaminated" or "group_contaminated") and data/split/report.json (every document
moved and why, the overlaps, documents, groups and bytes per side). Nothing moves silently; a split
that leaves val empty stops with an InputError naming the key.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from llmpipe.config.tokens import SplitParams
from llmpipe.data.ngrams import NgramSet
from llmpipe.stages.registry import StageParams, StageResult, stage
from llmpipe.tokens.split import group_keys, side_of_groups
from llmpipe.util.io import InputError, atomic_path, iter_parquet_batches, parquet_schema, write_json

log = logging.getLogger(__name__)
STAGE = stage("split")
MARK_BATCH = 1 << 22  # train n-grams looked up in the val union at once (32 MB of hashes)
REPORT_GROUPS = 1000  # val groups listed by name in the report (their count is always there)


def read_meta(docs: Path) -> dict[str, list]:
    """The columns that name a document's group, without the texts."""
    names = set(parquet_schema(docs).names)
    if "id" not in names or "text" not in names:
        raise InputError(f"{docs}: missing column(s) {[c for c in ('id', 'text') if c not in names]}")
    wanted = [c for c in ("id", "path", "url", "group") if c in names]
    table = pq.read_table(docs, columns=wanted)
    n = table.num_rows
    return {c: table.column(c).to_pylist() if c in wanted else [None] * n for c in ("id", "path", "url", "group")}


def iter_texts(docs: Path):
    """(row, text) of every document, a few MB of text at a time."""
    row = 0
    for batch in iter_parquet_batches(docs, 64, ["text"], max_bytes=32_000_000):
        for text in batch.column("text").to_pylist():
            yield row, text
            row += 1


def decontaminate(docs: Path, val: np.ndarray, keys: list[str], split: SplitParams) -> tuple[dict, np.ndarray]:
    """Moves contaminated val documents (and their groups) to train, in place in `val`. Returns
    ({row: (reason, overlap when moved)}, the final overlap of every document; NaN for train's).

    Only the val side's n-grams are held (a tenth of the corpus's by default): a first pass collects
    them, a second streams the documents, marking which of them train holds and placing each val
    document's in the union. Holding the train side's instead cost 8 bytes per train n-gram, ~3 GB at
    2 GB of text; the overlaps are the same."""
    cfg = split.decontaminate
    hasher, val_union = NgramSet(cfg.ngram), NgramSet(cfg.ngram)
    for row, text in iter_texts(docs):
        if val[row]:
            val_union.add(hasher.text_ngrams(text))
    union = val_union.array()
    del val_union
    index_type = np.uint32 if len(union) < 2**32 else np.int64
    # each val document's n-grams as positions in the union (half the bytes of the hashes, and marking is
    # one fancy index), computed in the second pass: holding every val document's hashes until the union
    # was complete cost as much again as the union, most of the stage's peak at 2 GB of text
    positions: dict[int, np.ndarray] = {}
    in_train = np.zeros(len(union), dtype=bool)

    def mark(parts: list[np.ndarray]) -> None:
        # many documents' n-grams sorted together, then looked up at once: dense sorted queries walk the
        # union nearly in order (a lookup per document was the stage's largest cost, growing with the union)
        h = np.sort(np.concatenate(parts))  # repeats may stay: marking twice is marking once
        pos = np.searchsorted(union, h).clip(max=len(union) - 1)
        in_train[pos[union[pos] == h]] = True

    pending, size = [], 0
    for row, text in iter_texts(docs):
        if val[row]:
            positions[row] = np.searchsorted(union, hasher.text_ngrams(text)).astype(index_type)
        elif len(union):
            pending.append(hasher.text_ngrams(text))
            size += len(pending[-1])
            if size >= MARK_BATCH:
                mark(pending)
                pending, size = [], 0
    if pending:
        mark(pending)
    overlap = np.full(len(val), np.nan)
    moved: dict[int, tuple[str, float]] = {}
    members: dict[str, list[int]] = {}
    for r in positions:
        members.setdefault(keys[r], []).append(r)
    while True:
        for r, pos in positions.items():
            if val[r]:
                overlap[r] = float(in_train[pos].mean()) if len(pos) else 0.0
        dirty = {keys[r] for r in positions if val[r] and overlap[r] > cfg.max_overlap}
        if not dirty:
            return moved, overlap
        for key in sorted(dirty):
            for r in members[key]:
                reason = "contaminated" if overlap[r] > cfg.max_overlap else "group_contaminated"
                moved[r] = (reason, float(overlap[r]))
                val[r] = False
                in_train[positions[r]] = True


def text_bytes(docs: Path) -> np.ndarray:
    return np.array([len(text.encode("utf-8")) for _, text in iter_texts(docs)], dtype=np.int64)


def assign(docs: Path, split: SplitParams) -> tuple[pa.Table, dict]:
    """Core: the assignments table (documents' row order) and the report."""
    meta = read_meta(docs)
    ids = meta["id"]
    if not ids:
        raise InputError(f"{docs}: no documents to split")
    keys, fallback = group_keys(ids, meta["path"], meta["url"], meta["group"], split.group)
    val = side_of_groups(keys, split.val_fraction, split.seed)
    moved, overlap = ({}, np.full(len(ids), np.nan))
    if split.decontaminate.enabled:
        moved, overlap = decontaminate(docs, val, keys, split)
    if not val.any():
        raise InputError(f"split.decontaminate.max_overlap: every val document overlaps the train split by more "
                         f"than {split.decontaminate.max_overlap} ({len(moved)} moved), so val would be empty "
                         f"(raise it or split.val_fraction, or keep documents that share text together with "
                         f"split.group)")
    sizes = text_bytes(docs)
    reasons = [moved[r][0] if r in moved else "group" for r in range(len(ids))]
    table = pa.table({"id": ids, "group": keys, "side": ["val" if v else "train" for v in val],
                      "reason": reasons, "overlap": pa.array([None if np.isnan(o) else float(o) for o in overlap],
                                                             pa.float64())})
    val_overlaps = overlap[val]
    val_groups = sorted({k for k, v in zip(keys, val) if v})
    report = {
        "group_by": split.group.by, "val_fraction": split.val_fraction,
        "ngram": split.decontaminate.ngram, "max_overlap": split.decontaminate.max_overlap,
        "docs": {"train": int((~val).sum()), "val": int(val.sum())},
        "bytes": {"train": int(sizes[~val].sum()), "val": int(sizes[val].sum())},
        "groups": {"train": len({k for k, v in zip(keys, val) if not v}), "val": len(val_groups)},
        "groups_from_id": fallback,
        "val_groups": val_groups[:REPORT_GROUPS],
        "moved": [{"id": ids[r], "group": keys[r], "reason": why, "overlap": round(o, 6)}
                  for r, (why, o) in sorted(moved.items())],
        "val_overlap_max": float(np.nanmax(val_overlaps)) if split.decontaminate.enabled else None,
        "val_overlap_mean": float(np.nanmean(val_overlaps)) if split.decontaminate.enabled else None,
    }
    return table, report


def run(params: StageParams, root: Path, sink=None) -> StageResult:
    t0 = time.perf_counter()
    table, report = assign(root / STAGE.inp("docs"), params.split)
    with atomic_path(root / STAGE.out("assignments")) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    write_json(root / STAGE.out("report"), report)
    for m in report["moved"]:
        log.info("split: %s moved to train (%s, overlap %.4f)", m["id"], m["reason"], m["overlap"])
    metrics = {f"{side}_{what}": report[what][side]
               for what in ("docs", "bytes", "groups") for side in ("train", "val")}
    metrics.update({"moved_to_train": len(report["moved"]), "groups_from_id": report["groups_from_id"],
                    "seconds": round(time.perf_counter() - t0, 3)})
    if report["val_overlap_max"] is not None:
        metrics["val_doc_overlap_max"] = round(report["val_overlap_max"], 6)
    # few large groups make val's share of the bytes land far from val_fraction (one group can be most of
    # the corpus): say so rather than train on a sliver
    share = metrics["val_bytes"] / max(metrics["val_bytes"] + metrics["train_bytes"], 1)
    metrics["val_byte_share"] = round(share, 4)
    if share > 3 * params.split.val_fraction or share < params.split.val_fraction / 3:
        log.warning("split: val holds %.1f%% of the bytes, far from split.val_fraction = %s (%d groups): "
                    "with few groups the share is coarse; change split.val_fraction, split.seed or "
                    "split.group", 100 * share, params.split.val_fraction, metrics["train_groups"] +
                    metrics["val_groups"])
    log.info("split: %d train / %d val documents (%d val groups), %d moved to train", metrics["train_docs"],
             metrics["val_docs"], metrics["val_groups"], metrics["moved_to_train"])
    return StageResult(metrics, artifacts=[root / STAGE.out("report")])
