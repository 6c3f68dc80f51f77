"""Reading token shards for training and evaluation: deterministic random batches and eval windows."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from llmpipe.tokens.shards import MANIFEST, load_manifest, read_shard
from llmpipe.util.io import InputError


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
        self.token_dir = Path(token_dir)
        self._starts: list[np.ndarray] | None = None

    def doc_starts(self) -> list[np.ndarray]:
        """Per shard, the sorted offsets where documents start (the `.idx.npy` beside each shard)."""
        if self._starts is None:
            starts = []
            for s in self.manifest.shards(self.split):
                path = self.token_dir / (s["file"] + ".idx.npy")
                try:
                    starts.append(np.sort(np.load(path, allow_pickle=False).astype(np.int64)))
                except (OSError, ValueError) as err:
                    raise InputError(f"{path}: document offsets unreadable ({err})") from err
            self._starts = starts
        return self._starts

    def _align(self, shard_idx: np.ndarray, offsets: np.ndarray, block: int) -> np.ndarray:
        """Move each offset forward to the next document start when one lies within `block` tokens
        and leaves a whole row; rows inside a long document stay where they fell."""
        out = offsets.copy()
        for i, (s, o) in enumerate(zip(shard_idx, offsets)):
            starts = self.doc_starts()[s]
            j = np.searchsorted(starts, o)
            if j < len(starts) and starts[j] - o < block and starts[j] + block + 1 <= self.lengths[s]:
                out[i] = starts[j]
        return out

    def row_starts(self, step: int, micro_step: int, rows: int, block: int, seed: int,
                   rank: int | None = 0, world: int = 1, stream: int = 0,
                   doc_aligned: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(shard index, offset in that shard) of each row of global batch (step, micro_step) that
        belongs to `rank`, or of all its rows in rank order when `rank` is None (`llmpipe lineage
        --step`). Each row is the block + 1 tokens from its offset; random_batch reads them.

        The global batch is a pure function of (seed, step, micro_step): no loader state to save, a
        resumed run draws exactly the batches the uninterrupted run would, and N ranks together draw
        exactly the rows one process would. `stream` separates independent uses (0 training, 1 eval).
        With `doc_aligned`, rows start at a document's first token where one is near (see _align)."""
        usable = np.maximum(self.lengths - block - 1, 0).astype(np.float64)
        if usable.sum() == 0:
            raise InputError(f"{self.split} split has no shard longer than block_size + 1 = {block + 1} tokens")
        rng = np.random.default_rng([seed, stream, step, micro_step])
        shard_idx = rng.choice(len(self.arrays), size=rows * world, p=usable / usable.sum())
        offsets = (rng.random(rows * world) * usable[shard_idx]).astype(np.int64)
        mine = slice(None) if rank is None else slice(rank * rows, (rank + 1) * rows)
        shard_idx, offsets = shard_idx[mine], offsets[mine]
        if doc_aligned:  # row by row: aligning a rank's slice equals slicing the aligned global batch
            offsets = self._align(shard_idx, offsets, block)
        return shard_idx, offsets

    def row_tokens(self, shard: int, offset: int, block: int) -> np.ndarray:
        return np.asarray(self.arrays[shard][offset : offset + block + 1], dtype=np.int64)

    def random_batch(self, step: int, micro_step: int, rows: int, block: int, seed: int,
                     rank: int = 0, world: int = 1, stream: int = 0,
                     doc_aligned: bool = False, repeat_share: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """The (x, y) rows of global batch (step, micro_step) that belong to `rank` (see row_starts);
        with `repeat_share`, that share of the global batch's rows shows its first half twice."""
        starts = self.row_starts(step, micro_step, rows, block, seed, rank, world, stream, doc_aligned)
        batch = np.stack([self.row_tokens(s, o, block) for s, o in zip(*starts)])
        if repeat_share:
            picked = repeat_picks(step, micro_step, rows, seed, rank, world, stream, repeat_share)
            batch[picked] = first_half_twice(batch[picked])
        batch = torch.from_numpy(batch)
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

    def scored(self, max_tokens: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The split's tokens in order and a mask of the targets windows() covers (every token but each
        shard's first, up to `max_tokens` of them), so other scorers (the n-gram and compressor
        baselines) score exactly the model's targets; the stream ends at the last scored token."""
        stream = np.concatenate([np.asarray(a) for a in self.arrays])
        mask = np.ones(len(stream), dtype=bool)
        mask[np.cumsum(self.lengths) - self.lengths] = False
        kept = np.flatnonzero(mask)
        if max_tokens is not None and len(kept) > max_tokens:
            mask[kept[max_tokens:]] = False
            kept = kept[:max_tokens]
        end = int(kept[-1]) + 1 if len(kept) else 0
        return stream[:end], mask[:end]


def repeat_count(share: float, rows: int) -> int:
    """How many of `rows` rows repeat their first half: share x rows, to the nearest (halves up)."""
    return int(share * rows + 0.5)


def repeat_picks(step: int, micro_step: int, rows: int, seed: int, rank: int | None, world: int, stream: int,
                 share: float) -> np.ndarray:
    """Which of `rank`'s rows of global batch (step, micro_step) repeat their first half (a bool per
    row; rank None: all ranks' rows in rank order): repeat_count(share, the global batch's rows) of
    them, drawn from (seed, stream, step, micro_step) alone, so N ranks together pick the rows one
    process would. A repeated half is natural text that only copying from the context predicts; since
    every repeat sits half a row back, a small model learns to copy from that one distance, not induction
    by content (docs/assistant.md, "The copying was one distance")."""
    total = rows * world
    chosen = np.random.default_rng([seed, stream, step, micro_step, 1]).permutation(total)[: repeat_count(share, total)]
    mask = np.zeros(total, dtype=bool)
    mask[chosen] = True
    return mask if rank is None else mask[rank * rows : (rank + 1) * rows]


def first_half_twice(rows: np.ndarray) -> np.ndarray:
    """(n, block + 1) rows as trained with a repeat: the first block // 2 tokens, then the row's first
    block + 1 - block // 2 tokens again (so the targets run one token past the first showing)."""
    half = (rows.shape[1] - 1) // 2
    return np.concatenate([rows[:, :half], rows[:, : rows.shape[1] - half]], axis=1)
