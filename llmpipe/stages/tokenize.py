"""Stage 5, tokenize: encode every document, `<|endoftext|>` after each, into llm.c token shards."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Iterator

from tokenizers import Tokenizer
from tqdm import tqdm

from llmpipe.config.tokens import TokenizeParams
from llmpipe.data.ngrams import NgramSet
from llmpipe.stages.registry import StageParams, StageResult, stage
from llmpipe.tokens.bpe import EOT
from llmpipe.tokens.encoder import load_encoder
from llmpipe.tokens.shards import ShardWriter, token_dtype, tokenizer_hash, write_manifest
from llmpipe.tokens.split import read_val_mask
from llmpipe.util.io import InputError, atomic_dir, iter_parquet_batches

log = logging.getLogger(__name__)
STAGE = stage("tokenize")


def iter_text_batches(path: Path, batch_bytes: int, rows: int = 256) -> Iterator[list[str]]:
    """Documents in file order, in lists of about `batch_bytes` of text. The Parquet reads are bounded
    by bytes too (not `rows` rows whatever their size), so memory stays bounded with huge documents."""
    texts, size = [], 0
    for batch in iter_parquet_batches(path, rows, ["text"], max_bytes=batch_bytes):
        for text in batch.column("text").to_pylist():
            texts.append(text)
            size += len(text)
            if size >= batch_bytes:
                yield texts
                texts, size = [], 0
    if texts:
        yield texts


def check_sample(texts: list[str], budget: int = 1 << 19, piece: int = 1 << 14) -> list[str]:
    """Up to `budget` characters from the first documents (their first `piece` characters each), on
    which the fast encoder must agree with tokenizers before it is used."""
    out, used = [], 0
    for t in texts:
        if used >= budget:
            break
        out.append(t[:piece])
        used += len(out[-1])
    return out


OVERLAP_NGRAM = 13


def tokenize_corpus(docs_path: Path, tokenizer_path: Path, out_dir: Path, assignments: Path,
                    cfg: TokenizeParams) -> dict:
    """Core: Parquet documents -> train/val shards (sides from the split stage's assignments) + manifest
    in out_dir. Returns stats, with val_overlap_13gram: the share of the val split's distinct word
    13-grams (llmpipe.data.ngrams, the split stage's definition) that the train split holds."""
    tok = Tokenizer.from_file(str(tokenizer_path))
    eot = tok.token_to_id(EOT)
    if eot is None:
        raise InputError(f"{tokenizer_path}: has no {EOT} token")
    dtype = token_dtype(tok.get_vocab_size())
    mask = read_val_mask(assignments, docs_path)
    ngrams = {"train": NgramSet(OVERLAP_NGRAM), "val": NgramSet(OVERLAP_NGRAM)}
    writers = {s: ShardWriter(out_dir, s, cfg.shard_tokens, dtype) for s in ("train", "val")}
    n_bytes = {"train": 0, "val": 0}
    row, encoder = 0, None
    with tqdm(total=len(mask), desc="tokenize", unit="doc", mininterval=2.0, disable=len(mask) < 100) as bar:
        for texts in iter_text_batches(docs_path, cfg.batch_bytes):
            if encoder is None:
                encoder = load_encoder(tokenizer_path, cfg.workers, check_sample(texts))
            # the engines return ids in input order whatever the thread count: shards do not depend on it
            for text, ids in zip(texts, encoder.encode_batch(texts)):
                split_name = "val" if mask[row] else "train"
                writers[split_name].add(ids, eot)
                n_bytes[split_name] += len(text.encode("utf-8"))
                ngrams[split_name].add_text(text)
                row += 1
            bar.update(len(texts))
    shards = []
    for split_name, w in writers.items():
        for s in w.close():
            shards.append({**s, "split": split_name})
    write_manifest(out_dir, {
        "format": "llm.c",
        "tokenizer_sha256": tokenizer_hash(tokenizer_path),
        "eot_id": eot,
        "vocab_size": tok.get_vocab_size(),
        "dtype": dtype.name,
        "shards": shards,
        "docs": {s: writers[s].docs_total for s in writers},
        "bytes": n_bytes,
        "encoder": encoder.engine if encoder else "none",
    })
    stats = {f"{s}_{k}": v for s in writers for k, v in (
        ("tokens", sum(x["tokens"] for x in shards if x["split"] == s)),
        ("docs", writers[s].docs_total), ("bytes", n_bytes[s]))}
    stats["shards"] = len(shards)
    stats["val_overlap_13gram"] = round(ngrams["train"].overlap(ngrams["val"].array()), 6)
    return stats


def run(params: StageParams, root: Path, sink=None) -> StageResult:
    t0 = time.perf_counter()
    src, tok_path = root / STAGE.inp("docs"), root / STAGE.inp("tokenizer")
    for p in (src, tok_path, root / STAGE.inp("split")):
        if not p.exists():
            raise InputError(f"{p}: file not found (did the upstream stage run?)")
    with atomic_dir(root / STAGE.out("tokens")) as tmp:
        stats = tokenize_corpus(src, tok_path, tmp, root / STAGE.inp("split"), params.tokenize)
    stats["seconds"] = round(time.perf_counter() - t0, 3)
    stats["tokens_per_s"] = round((stats["train_tokens"] + stats["val_tokens"]) / max(stats["seconds"], 1e-9))
    log.info("tokenize: %d train / %d val tokens in %d shards", stats["train_tokens"], stats["val_tokens"],
             stats["shards"])
    return StageResult(stats)
