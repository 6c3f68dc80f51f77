"""Tokenizer helpers, the token shard format and the loaders that read it.

Shards use llm.c's format, so llm.c and modded-nanogpt loaders read them unchanged:
a header of 256 int32 (magic, version, token count) followed by the tokens, uint16 with magic
20240520 / version 1, or uint32 with magic 20240801 / version 7 for vocabularies over 65,536.
Beside each shard, `<shard>.idx.npy` holds the token offsets where documents start in it, and
manifest.json describes the whole set (tokenizer hash, end-of-text id, dtype, per-shard counts).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import xxhash

from .io import InputError, atomic_path, read_json, write_json

EOT = "<|endoftext|>"
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
FORMATS = {  # dtype -> (magic, version)
    np.dtype(np.uint16): (20240520, 1),
    np.dtype(np.uint32): (20240801, 7),
}
MANIFEST = "manifest.json"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.uint32)


def tokenizer_hash(path: Path | str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --- split ---------------------------------------------------------------------------------------


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


# --- writing shards ------------------------------------------------------------------------------


def write_shard(path: Path, tokens: np.ndarray, doc_starts: np.ndarray) -> None:
    magic, version = FORMATS[tokens.dtype]
    header = np.zeros(HEADER_INTS, dtype=np.int32)
    header[:3] = (magic, version, len(tokens))
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.tobytes())
    with atomic_path(path.with_name(path.name + ".idx.npy")) as tmp, open(tmp, "wb") as f:
        np.save(f, doc_starts.astype(np.int64), allow_pickle=False)


class ShardWriter:
    """Appends encoded documents and cuts a shard every `shard_tokens` tokens (documents may span)."""

    def __init__(self, out_dir: Path, prefix: str, shard_tokens: int, dtype: np.dtype):
        self.out_dir, self.prefix, self.shard_tokens, self.dtype = out_dir, prefix, shard_tokens, dtype
        self.buf = np.empty(shard_tokens, dtype=dtype)
        self.fill = 0
        self.starts: list[int] = []
        self.shards: list[dict] = []
        self.docs_total = 0

    def add(self, ids, eot: int | None = None) -> None:
        """Append one document's ids (a list or array), followed by `eot` when given."""
        if eot is None:
            arr = np.asarray(ids, dtype=self.dtype)
        else:
            arr = np.empty(len(ids) + 1, dtype=self.dtype)
            arr[:-1], arr[-1] = ids, eot
        self.starts.append(self.fill)
        self.docs_total += 1
        pos = 0
        while pos < len(arr):
            take = min(len(arr) - pos, self.shard_tokens - self.fill)
            self.buf[self.fill : self.fill + take] = arr[pos : pos + take]
            self.fill += take
            pos += take
            if self.fill == self.shard_tokens:
                self._flush()

    def _flush(self) -> None:
        if self.fill == 0:
            return
        name = f"{self.prefix}_{len(self.shards):06d}.bin"
        write_shard(self.out_dir / name, self.buf[: self.fill], np.array(self.starts, dtype=np.int64))
        self.shards.append({"file": name, "tokens": int(self.fill), "doc_starts": len(self.starts)})
        self.fill, self.starts = 0, []

    def close(self) -> list[dict]:
        self._flush()
        return self.shards


# --- reading shards ------------------------------------------------------------------------------


def read_shard(path: Path | str) -> np.ndarray:
    """Memory-map one shard after checking its header against its size."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise InputError(f"{path}: shard not found") from None
    if size < HEADER_BYTES:
        raise InputError(f"{path}: truncated shard ({size} bytes, the header alone is {HEADER_BYTES})")
    header = np.fromfile(path, dtype=np.int32, count=3)
    by_magic = {m: (dt, v) for dt, (m, v) in FORMATS.items()}
    if int(header[0]) not in by_magic:
        raise InputError(f"{path}: wrong magic {int(header[0])} (not an llm.c token shard)")
    dtype, version = by_magic[int(header[0])]
    if int(header[1]) != version:
        raise InputError(f"{path}: unsupported version {int(header[1])} for magic {int(header[0])}")
    count = int(header[2])
    expected = HEADER_BYTES + count * dtype.itemsize
    if size != expected:
        raise InputError(f"{path}: header says {count} tokens ({expected} bytes) but the file has {size} bytes")
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(count,))


@dataclass
class Manifest:
    root: Path
    data: dict

    @property
    def eot_id(self) -> int:
        return int(self.data["eot_id"])

    @property
    def vocab_size(self) -> int:
        return int(self.data["vocab_size"])

    def shards(self, split: str) -> list[dict]:
        return [s for s in self.data["shards"] if s["split"] == split]


def load_manifest(token_dir: Path | str, tokenizer_path: Path | str | None = None) -> Manifest:
    """Read and check manifest.json against its shards (and against a tokenizer, when given)."""
    token_dir = Path(token_dir)
    path = token_dir / MANIFEST
    data = read_json(path)
    for key in ("tokenizer_sha256", "eot_id", "vocab_size", "dtype", "shards"):
        if key not in data:
            raise InputError(f"{path}: missing key {key!r}")
    if tokenizer_path is not None:
        got = tokenizer_hash(tokenizer_path)
        if got != data["tokenizer_sha256"]:
            raise InputError(f"{path}: shards were made with tokenizer {data['tokenizer_sha256'][:12]}, "
                             f"not with {tokenizer_path} ({got[:12]}); re-run the tokenize stage")
    for s in data["shards"]:
        arr = read_shard(token_dir / s["file"])
        if len(arr) != s["tokens"] or arr.dtype != np.dtype(data["dtype"]):
            raise InputError(f"{path}: disagrees with shard {s['file']} "
                             f"({len(arr)} {arr.dtype} tokens on disk, manifest says {s['tokens']} {data['dtype']})")
    return Manifest(token_dir, data)


class TokenData:
    """The shards of one split, memory-mapped: random (x, y) batches for training, windows for eval."""

    def __init__(self, token_dir: Path | str, split: str, tokenizer_path: Path | str | None = None):
        self.manifest = load_manifest(token_dir, tokenizer_path)
        self.split = split
        self.arrays = [read_shard(Path(token_dir) / s["file"]) for s in self.manifest.shards(split)]
        if not self.arrays:
            raise InputError(f"{Path(token_dir) / MANIFEST}: no {split} shards")
        self.lengths = np.array([len(a) for a in self.arrays], dtype=np.int64)
        self.n_tokens = int(self.lengths.sum())

    def random_batch(self, step: int, micro_step: int, rows: int, block: int, seed: int,
                     rank: int = 0, world: int = 1, stream: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows of global batch (step, micro_step) that belong to `rank`.

        The global batch is a pure function of (seed, step, micro_step): no loader state to save, a
        resumed run draws exactly the batches the uninterrupted run would, and N ranks together draw
        exactly the rows one process would. `stream` separates independent uses (0 training, 1 eval)."""
        usable = np.maximum(self.lengths - block - 1, 0).astype(np.float64)
        if usable.sum() == 0:
            raise InputError(f"{self.split} split has no shard longer than block_size + 1 = {block + 1} tokens")
        rng = np.random.default_rng([seed, stream, step, micro_step])
        shard_idx = rng.choice(len(self.arrays), size=rows * world, p=usable / usable.sum())
        offsets = (rng.random(rows * world) * usable[shard_idx]).astype(np.int64)
        mine = slice(rank * rows, (rank + 1) * rows)
        chunks = [np.asarray(self.arrays[s][o : o + block + 1], dtype=np.int64)
                  for s, o in zip(shard_idx[mine], offsets[mine])]
        batch = torch.from_numpy(np.stack(chunks))
        return batch[:, :-1], batch[:, 1:]

    def windows(self, block: int, max_tokens: int | None = None) -> Iterator[np.ndarray]:
        """Non-overlapping windows of block + 1 tokens over the split, in order (the last token of a
        window is the first of the next), until `max_tokens` targets are covered."""
        covered = 0
        for arr in self.arrays:
            for start in range(0, len(arr) - 1, block):
                w = np.asarray(arr[start : start + block + 1], dtype=np.int64)
                if max_tokens is not None:
                    w = w[: max_tokens - covered + 1]
                if len(w) < 2:
                    return
                yield w
                covered += len(w) - 1
                if max_tokens is not None and covered >= max_tokens:
                    return


def write_manifest(token_dir: Path, info: dict) -> None:
    write_json(token_dir / MANIFEST, info)
