"""The train/val split by document: decided by a hash of each document id, shared by the tokenizer
(trained on the train split only) and the token shards."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow.parquet as pq
import xxhash

from llmpipe.config.tokens import SplitParams
from llmpipe.util.io import InputError, iter_parquet_batches


def val_mask(ids: list[str], val_fraction: float, seed: int) -> np.ndarray:
    """True where a document goes to val. Decided by a hash of its id alone, so adding documents never
    moves others; at least one document lands on each side when there are two or more."""
    u = np.array([xxhash.xxh64_intdigest(f"{seed}:{i}".encode("utf-8")) / 2.0**64 for i in ids])
    mask = u < val_fraction
    if len(ids) >= 2 and not mask.any():
        mask[int(np.argmin(u))] = True
    if len(ids) >= 2 and mask.all():
        mask[int(np.argmax(u))] = False
    return mask


def parquet_val_mask(pf, val_fraction: float, seed: int) -> np.ndarray:
    """val_mask for the documents of an open pyarrow ParquetFile, in row order (reads the ids only)."""
    return val_mask(pf.read(columns=["id"]).column("id").to_pylist(), val_fraction, seed)


def iter_split_docs(path: Path, split: SplitParams, want_val: bool, batch_rows: int = 64,
                    batch_bytes: int = 32_000_000) -> Iterator[tuple[str, str]]:
    """Stream (id, text) of one split's documents from a Parquet file without loading the corpus whole
    (reads of at most batch_rows documents and about batch_bytes, whatever the documents' sizes)."""
    try:
        pf = pq.ParquetFile(path)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found (did the dedup stage run?)") from None
    mask = parquet_val_mask(pf, split.val_fraction, split.seed)
    row = 0
    for batch in iter_parquet_batches(path, batch_rows, ["id", "text"], max_bytes=batch_bytes):
        for doc_id, text in zip(batch.column("id").to_pylist(), batch.column("text").to_pylist()):
            if bool(mask[row]) == want_val:
                yield doc_id, text
            row += 1


def iter_split_texts(path: Path, split: SplitParams, want_val: bool, **kw) -> Iterator[str]:
    """The texts of iter_split_docs."""
    return (text for _, text in iter_split_docs(path, split, want_val, **kw))
