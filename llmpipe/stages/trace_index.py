"""Stage trace-index: a suffix array over the train split's tokens, memory-mapped, so that any text
can be traced to the training documents that contain its spans verbatim (llmpipe/tokens/trace.py)."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np

from llmpipe.stages.registry import StageParams, StageResult, stage
from llmpipe.tokens.loader import TokenData
from llmpipe.tokens.shards import tokenizer_hash
from llmpipe.tokens.suffix import META_FILE, write_index
from llmpipe.tokens.trace import DOCS_FILE
from llmpipe.util.io import InputError, atomic_dir, read_json, write_json

log = logging.getLogger(__name__)
STAGE = stage("trace-index")


def build_trace_index(token_dir: Path, tokenizer_path: Path, out_dir: Path) -> dict:
    """Core: the train split's shards, concatenated -> suffix array, tokens and document table."""
    train = TokenData(token_dir, "train", tokenizer_path=tokenizer_path)
    docs = token_dir / "train_docs.parquet"
    if not docs.exists():
        raise InputError(f"{docs}: missing (made by the tokenize stage: run `dvc repro tokenize`)")
    tokens = np.concatenate([np.asarray(a) for a in train.arrays])
    meta = write_index(out_dir, tokens)
    shutil.copyfile(docs, out_dir / DOCS_FILE)
    meta["tokenizer_sha256"] = tokenizer_hash(tokenizer_path)
    write_json(out_dir / META_FILE, meta)
    return meta


def run(params: StageParams, root: Path, sink=None) -> StageResult:
    t0 = time.perf_counter()
    with atomic_dir(root / STAGE.out("index")) as tmp:
        meta = build_trace_index(root / STAGE.inp("tokens"), root / STAGE.inp("tokenizer"), tmp)
        size = sum(p.stat().st_size for p in tmp.iterdir())
    seconds = time.perf_counter() - t0
    log.info("trace-index: %d tokens indexed in %.1f s (%.1f MB)", meta["tokens"], seconds, size / 1e6)
    return StageResult({"tokens": meta["tokens"], "index_mb": round(size / 1e6, 3), "seconds": round(seconds, 3),
                        "mb_per_gb_tokens": round(size / 1e6 / max(meta["tokens"] * meta["token_bytes"] / 1e9, 1e-9), 1)})
