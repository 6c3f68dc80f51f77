"""The record of how a pretraining run draws its batches, and the rows of any step recomputed from it.

Batches are a pure function of (seed, step, micro-step) (TokenData.row_starts), so a run needs to keep
only what shapes them: the seed, the rows per rank, the block size, document alignment and, per stretch
of steps, the number of ranks and micro-steps (a run resumed on another number of ranks changes them
from its first resumed step). The loop keeps this record in its history (so in every checkpoint); the
pretrain stage writes it into the model's config.json; `llmpipe lineage --step N` reads it back.

Steps are numbered as the logs number them: step N is the N-th optimizer update, whose loss is logged
at step N; it reads global batch N - 1 (the `step` argument of TokenData.row_starts).
"""

from __future__ import annotations

import numpy as np

from llmpipe.tokens.loader import TokenData, repeat_picks
from llmpipe.util.io import InputError

TRAIN_SPLIT, TRAIN_STREAM = "train", 0
KEY = "data_order"  # in a checkpoint's history and in the model's config.json


def record(history: dict, seed: int, rows: int, block: int, doc_aligned: bool, world: int, accum: int,
           start: int, repeat_share: float = 0.0) -> dict:
    """Add this process's layout (ranks, micro-steps) from step start + 1 to history's record."""
    order = history.setdefault(KEY, {"split": TRAIN_SPLIT, "stream": TRAIN_STREAM, "seed": seed,
                                     "micro_batch_size": rows, "block_size": block,
                                     "doc_aligned": doc_aligned, "repeat_share": repeat_share, "layout": []})
    layout = {"world_size": world, "grad_accum_steps": accum}
    last = order["layout"][-1] if order["layout"] else None
    if last is None or {k: v for k, v in last.items() if k != "first_step"} != layout:
        order["layout"].append({"first_step": start + 1, **layout})
    return order


def record_row_length(order: dict, step: int, length: int) -> None:
    """Note that step `step` (1-based) cut each row into pieces of `length` tokens, attention staying
    within a piece (the sequence-length warm-up; block_size once it is over). Kept as stretches, like the
    layout: the warm-up's end moves with a paced run's length, so it is recorded, not recomputed."""
    stretches = order.setdefault("row_lengths", [])
    if not stretches or stretches[-1]["length"] != length:
        stretches.append({"first_step": step, "length": length})


def stretch_at(stretches: list[dict], step: int) -> dict | None:
    """The stretch (a record list's entry from its first_step on) that step `step` (1-based) falls in."""
    found = [seg for seg in stretches if seg["first_step"] <= step]
    return found[-1] if found else None


def row_length_at_step(order: dict, step: int) -> int | None:
    """The piece length step `step` trained on; None for a run recorded before the record kept it."""
    found = stretch_at(order.get("row_lengths", []), step)
    return found["length"] if found else None


def layout_at(order: dict, step: int) -> dict:
    """The layout (world_size, grad_accum_steps) step `step` (1-based) ran with."""
    found = stretch_at(order.get("layout", []), step)
    if found is None:
        raise InputError(f"step {step}: the run's record starts at step "
                         f"{min((s['first_step'] for s in order.get('layout', [])), default='?')} "
                         "(a checkpoint from before the record was kept)")
    return found


def step_rows(data: TokenData, order: dict, step: int) -> list[tuple[int, int, int, int, bool]]:
    """(micro-step, row in the global micro-batch, shard index, offset, whether the row showed its first
    half twice) of every row step `step` trained on, all ranks' rows in rank order: the very rows
    TokenData.random_batch gave each rank (a record without repeat_share: a run from before it, none)."""
    if step < 1:
        raise InputError(f"--step {step}: steps are numbered from 1, as in the training logs")
    lay = layout_at(order, step)
    out = []
    for micro in range(lay["grad_accum_steps"]):
        shards, offsets = data.row_starts(step - 1, micro, order["micro_batch_size"], order["block_size"],
                                          order["seed"], rank=None, world=lay["world_size"],
                                          stream=order["stream"], doc_aligned=order["doc_aligned"])
        repeated = repeat_picks(step - 1, micro, order["micro_batch_size"], order["seed"], None, lay["world_size"],
                                order["stream"], order.get("repeat_share", 0.0))
        out += [(micro, i, int(s), int(o), bool(r)) for i, (s, o, r) in enumerate(zip(shards, offsets, repeated))]
    return out


def shard_bases(data: TokenData) -> np.ndarray:
    """Each shard's first token's offset in the split (shards concatenated, in manifest order)."""
    return np.concatenate([[0], np.cumsum(data.lengths)[:-1]]).astype(np.int64)
