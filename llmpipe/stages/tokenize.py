"""Stage 5, tokenize: encode every document, `<|endoftext|>` after each, into llm.c token shards."""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from tokenizers import Tokenizer
from tqdm import tqdm

from llmpipe.config.tokens import TokenizeParams
from llmpipe.data.ngrams import NgramSet
from llmpipe.stages.registry import StageParams, StageResult, stage
from llmpipe.tokens.bpe import EOT
from llmpipe.tokens.encoder import load_encoder
from llmpipe.tokens.shards import ShardWriter, token_dtype, tokenizer_hash, write_manifest
from llmpipe.tokens.split import read_val_mask
from llmpipe.util.io import InputError, atomic_dir, atomic_path, iter_parquet_batches, write_parquet
from llmpipe.util.resume import ShardCount, ShardLedger, text_hash

log = logging.getLogger(__name__)
STAGE = stage("tokenize")


# The columns kept per document beside the shards (tokens/<split>_docs.parquet): where each token
# came from, for tracing spans and for `llmpipe lineage --step`.
DOC_COLUMNS = ["id", "source", "path", "url", "title"]


def iter_text_batches(path: Path, batch_bytes: int, rows: int = 256) -> Iterator[tuple[list[str], list[dict]]]:
    """Documents in file order, in lists of about `batch_bytes` of text, with each one's provenance
    (DOC_COLUMNS). The Parquet reads are bounded by bytes too (not `rows` rows whatever their size),
    so memory stays bounded with huge documents."""
    have = set(pq.ParquetFile(path).schema_arrow.names)
    meta_cols = [c for c in DOC_COLUMNS if c in have]
    texts, metas, size = [], [], 0
    for batch in iter_parquet_batches(path, rows, ["text", *meta_cols], max_bytes=batch_bytes):
        cols = {c: batch.column(c).to_pylist() for c in meta_cols}
        for i, text in enumerate(batch.column("text").to_pylist()):
            texts.append(text)
            metas.append({c: cols[c][i] for c in meta_cols})
            size += len(text)
            if size >= batch_bytes:
                yield texts, metas
                texts, metas, size = [], [], 0
    if texts:
        yield texts, metas


def write_doc_table(out_dir: Path, split_name: str, rows: list[dict]) -> None:
    """tokens/<split>_docs.parquet: per document in shard order, its id, source, location (URL or
    path), title, first token's offset in the split (shards concatenated) and token count."""
    frame = pd.DataFrame(rows, columns=["id", "source", "location", "title", "start", "tokens"])
    write_parquet(out_dir / f"{split_name}_docs.parquet", frame.astype({"start": "int64", "tokens": "int64"}))


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
OVERLAP_SAMPLE = 16  # val_overlap_13gram from the n-grams whose hash is a multiple of 16


CHUNK_FILES = ("tokens", "lengths", "ngrams-train", "ngrams-val")  # per input chunk: chunk-<k>-<name>.npy


def save_array(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)


def encode_chunk(texts: list[str], sides: np.ndarray, encoder, eot: int, dtype: np.dtype, hasher: NgramSet,
                 ledger: ShardLedger, chunk: str) -> dict:
    """Encode one chunk of documents into the ledger's chunk-<k>-*.npy files: the ids of every document
    followed by `eot`, concatenated; each document's length; and the distinct sampled word 13-grams of
    its train and its val documents. Returns what the completion record keeps (the engine, the bytes)."""
    encoded = encoder.encode_arrays(texts)  # in input order whatever the thread count
    lengths = np.array([len(ids) + 1 for ids in encoded], dtype=np.int64)
    tokens = np.empty(int(lengths.sum()), dtype=dtype)
    pos = 0
    # the cast cannot wrap: token_dtype chose the dtype for the largest id in the vocabulary
    for ids, n in zip(encoded, lengths.tolist()):
        tokens[pos : pos + n - 1], tokens[pos + n - 1] = ids, eot
        pos += n
    grams, n_bytes = {"train": [], "val": []}, {"train": 0, "val": 0}
    for text, val in zip(texts, sides.tolist()):
        side = "val" if val else "train"
        grams[side].append(hasher.text_ngrams(text))
        n_bytes[side] += len(text.encode("utf-8"))
    arrays = {"tokens": tokens, "lengths": lengths,
              **{f"ngrams-{s}": np.unique(np.concatenate(g)) if g else np.empty(0, np.uint64) for s, g in grams.items()}}
    for name in CHUNK_FILES:
        save_array(ledger.path(f"{chunk}-{name}.npy"), arrays[name])
    return {"engine": encoder.engine, "bytes": n_bytes}


def tokenize_corpus(docs_path: Path, tokenizer_path: Path, out_dir: Path, assignments: Path,
                    cfg: TokenizeParams, ledger: ShardLedger | None = None) -> dict:
    """Core: Parquet documents -> train/val shards (sides from the split stage's assignments) + manifest
    in out_dir. Returns stats, with val_overlap_13gram: the share of the val split's distinct word
    13-grams (llmpipe.data.ngrams, the split stage's definition) that the train split holds.

    The documents are encoded chunk by chunk (tokenize.batch_bytes of text) into `ledger`'s work folder,
    each chunk with a completion record (llmpipe.util.resume), so a killed run re-encodes only the
    chunks it had not finished; the shards are then cut from the chunks' tokens, the same bytes either
    way. Without a ledger, a temporary folder holds the chunks."""
    if ledger is None:
        with tempfile.TemporaryDirectory() as tmp:
            return tokenize_corpus(docs_path, tokenizer_path, out_dir, assignments, cfg, ShardLedger(Path(tmp), "", ""))
    tok = Tokenizer.from_file(str(tokenizer_path))
    eot = tok.token_to_id(EOT)
    if eot is None:
        raise InputError(f"{tokenizer_path}: has no {EOT} token")
    dtype = token_dtype(max(tok.get_vocab().values()) + 1)  # the largest id, not the count: ids may have gaps
    mask = read_val_mask(assignments, docs_path)
    # a 1/16 sample of the n-grams by hash: the same n-grams on both sides, so the fraction stays unbiased
    # (hundreds of thousands of samples on the demo), and memory stays a sixteenth of all distinct n-grams
    ngrams = {s: NgramSet(OVERLAP_NGRAM, sample=OVERLAP_SAMPLE) for s in ("train", "val")}
    hasher = NgramSet(OVERLAP_NGRAM, sample=OVERLAP_SAMPLE)
    with contextlib.ExitStack() as stack:  # a failure drops the shards being written (ShardWriter.__exit__)
        writers = {s: stack.enter_context(ShardWriter(out_dir, s, cfg.shard_tokens, dtype)) for s in ("train", "val")}
        n_bytes = {"train": 0, "val": 0}
        doc_rows: dict[str, list[dict]] = {"train": [], "val": []}
        offset = {"train": 0, "val": 0}
        row, encoder, first_sample, engines, resumed = 0, None, None, [], []
        with tqdm(total=len(mask), desc="tokenize", unit="doc", mininterval=2.0, disable=len(mask) < 100) as bar:
            for k, (texts, metas) in enumerate(iter_text_batches(docs_path, cfg.batch_bytes)):
                chunk, sides = f"chunk-{k:05d}", mask[row : row + len(texts)]
                if k == 0:  # the engine is chosen on the first documents, whichever chunks are resumed
                    first_sample = check_sample(texts)
                inputs = text_hash([*texts, sides.astype(np.uint8).tobytes().hex()])
                done = ledger.lookup(chunk, inputs)
                resumed.append(done is not None)
                if done is None:
                    encoder = encoder or load_encoder(tokenizer_path, cfg.workers, first_sample)
                    done = encode_chunk(texts, sides, encoder, eot, dtype, hasher, ledger, chunk)
                    ledger.commit(chunk, inputs, [f"{chunk}-{name}.npy" for name in CHUNK_FILES], done)
                engines.append(done["engine"])
                arrays = {name: np.load(ledger.path(f"{chunk}-{name}.npy")) for name in CHUNK_FILES}
                starts = np.concatenate([[0], np.cumsum(arrays["lengths"])])
                for i, (meta, val) in enumerate(zip(metas, sides.tolist())):
                    split_name = "val" if val else "train"
                    writers[split_name].add(arrays["tokens"][starts[i] : starts[i + 1]])
                    doc_rows[split_name].append({
                        "id": meta.get("id"), "source": meta.get("source"),
                        "location": meta.get("url") or meta.get("path") or "", "title": meta.get("title") or "",
                        "start": offset[split_name], "tokens": int(arrays["lengths"][i])})
                    offset[split_name] += int(arrays["lengths"][i])
                for s in ngrams:
                    ngrams[s].add(arrays[f"ngrams-{s}"])
                    n_bytes[s] += done["bytes"][s]
                row += len(texts)
                bar.update(len(texts))
        shards = []
        for split_name, rows in doc_rows.items():
            write_doc_table(out_dir, split_name, rows)
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
            "encoder": engines[0] if engines else "none",  # chosen on the first documents, resumed or not
        })
        stats = {f"{s}_{k}": v for s in writers for k, v in (
            ("tokens", sum(x["tokens"] for x in shards if x["split"] == s)),
            ("docs", writers[s].docs_total), ("bytes", n_bytes[s]))}
        stats["shards"] = len(shards)
        stats["val_overlap_13gram"] = round(ngrams["train"].overlap(ngrams["val"].array()), 6)
        stats.update(ShardCount("tokenize", resumed).metrics())  # shards here: the chunks of input encoded
        return stats


def run(params: StageParams, root: Path, sink=None) -> StageResult:
    t0 = time.perf_counter()
    src, tok_path = root / STAGE.inp("docs"), root / STAGE.inp("tokenizer")
    for p in (src, tok_path, root / STAGE.inp("split")):
        if not p.exists():
            raise InputError(f"{p}: file not found (did the upstream stage run?)")
    # each chunk's tokens depend on the tokenizer file too
    ledger = ShardLedger.open(root, STAGE.name, __name__, {"tokenize": params.tokenize.model_dump(mode="json"),
                                                           "tokenizer": tokenizer_hash(tok_path)})
    with atomic_dir(root / STAGE.out("tokens")) as tmp:
        stats = tokenize_corpus(src, tok_path, tmp, root / STAGE.inp("split"), params.tokenize, ledger)
    ledger.clear()
    stats["seconds"] = round(time.perf_counter() - t0, 3)
    stats["tokens_per_s"] = round((stats["train_tokens"] + stats["val_tokens"]) / max(stats["seconds"], 1e-9))
    log.info("tokenize: %d train / %d val tokens in %d shards", stats["train_tokens"], stats["val_tokens"],
             stats["shards"])
    return StageResult(stats)
