"""The token shard format: writing and reading shards and their manifest.

Shards use llm.c's format, so llm.c and modded-nanogpt loaders read them unchanged:
a header of 256 int32 (magic, version, token count) followed by the tokens, uint16 with magic
20240520 / version 1, or uint32 with magic 20240801 / version 7 for vocabularies over 65,536.
Beside each shard, `<shard>.idx.npy` holds the token offsets where documents start in it, and
manifest.json describes the whole set (tokenizer hash, end-of-text id, dtype, per-shard counts).
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from llmpipe.util.io import InputError, atomic_path, read_json, write_json

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


# --- writing shards ------------------------------------------------------------------------------


def shard_header(dtype: np.dtype, count: int) -> bytes:
    magic, version = FORMATS[np.dtype(dtype)]
    header = np.zeros(HEADER_INTS, dtype=np.int32)
    header[:3] = (magic, version, count)
    return header.tobytes()


def write_index(shard: Path, doc_starts: np.ndarray) -> None:
    """<shard>.idx.npy: the offsets where documents start in the shard."""
    with atomic_path(shard.with_name(shard.name + ".idx.npy")) as tmp, open(tmp, "wb") as f:
        np.save(f, doc_starts.astype(np.int64), allow_pickle=False)


class ShardWriter:
    """Appends encoded documents and cuts a shard every `shard_tokens` tokens (documents may span).

    Tokens go straight to the open shard's temporary file (its header is written when the shard is cut),
    so memory stays that of one document whatever the shard size: a buffer of a whole shard held 200 MB
    per split at the default 100M tokens. A shard appears under its name only when complete."""

    def __init__(self, out_dir: Path, prefix: str, shard_tokens: int, dtype: np.dtype):
        self.out_dir, self.prefix, self.shard_tokens, self.dtype = out_dir, prefix, shard_tokens, np.dtype(dtype)
        self.fill = 0
        self.starts: list[int] = []
        self.shards: list[dict] = []
        self.docs_total = 0
        self._open: tuple[contextlib.ExitStack, BinaryIO] | None = None

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
            self._file().write(arr[pos : pos + take].tobytes())
            self.fill += take
            pos += take
            if self.fill == self.shard_tokens:
                self._flush()

    def _file(self) -> BinaryIO:
        if self._open is None:
            stack = contextlib.ExitStack()
            tmp = stack.enter_context(atomic_path(self.out_dir / self._name()))
            f = stack.enter_context(open(tmp, "wb"))
            f.write(bytes(HEADER_BYTES))  # the token count is known when the shard is cut
            self._open = stack, f
        return self._open[1]

    def _name(self) -> str:
        return f"{self.prefix}_{len(self.shards):06d}.bin"

    def _flush(self) -> None:
        if self.fill == 0:
            return
        (stack, f), self._open = self._open, None
        with stack:  # closes the file, then renames it onto the shard's name; on an error deletes it
            f.seek(0)
            f.write(shard_header(self.dtype, self.fill))
        name = self._name()
        write_index(self.out_dir / name, np.array(self.starts, dtype=np.int64))
        self.shards.append({"file": name, "tokens": int(self.fill), "doc_starts": len(self.starts)})
        self.fill, self.starts = 0, []

    def close(self) -> list[dict]:
        self._flush()
        return self.shards

    def abort(self) -> None:
        """Drop the shard being written: its temporary file goes, nothing appears under its name."""
        if self._open is not None:
            (stack, _), self._open = self._open, None
            stack.__exit__(RuntimeError, RuntimeError("shard abandoned"), None)  # atomic_path: delete, no rename
        self.fill, self.starts = 0, []

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, *_) -> None:
        """Leaving on an error aborts the open shard (a caller's close() in a finally could otherwise
        publish a cut-short shard with a valid header); leaving normally is the caller's close()."""
        if exc_type is not None:
            self.abort()


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


def write_manifest(token_dir: Path, info: dict) -> None:
    write_json(token_dir / MANIFEST, info)
