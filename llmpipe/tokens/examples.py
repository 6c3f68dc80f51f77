"""Finetuning examples on disk: rows of token ids with a loss mask, packed or padded.

A folder holds tokens.npy (int32, rows x (block_size + 1)), mask.npy (uint8, the same shape: 1 where
the token is a target the loss counts) and conversations.jsonl (the conversations, for evaluation).
A row gives inputs row[:-1] and targets row[1:], like a pretraining batch.
- packed: several rendered conversations a row, each whole in one row (each starts with
  <|endoftext|>, as documents do in pretraining); what none fills is filler the mask leaves out;
- padded: one conversation a row, filled with <|endoftext|> that the mask leaves out.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from llmpipe.tokens.chat import Rendered
from llmpipe.util.io import InputError, atomic_dir

TOKENS, MASK, CONVERSATIONS = "tokens.npy", "mask.npy", "conversations.jsonl"


PACK_LOOKBACK = 64  # open rows a conversation may go back to (first fit over all rows costs O(n x rows))


def packed(examples: list[Rendered], block_size: int, filler: int) -> tuple[np.ndarray, np.ndarray]:
    """The examples in rows, each whole in one row (an answer cut from its passage would be trained
    without what it is read from): first fit, each goes to the earliest of the last PACK_LOOKBACK rows
    with room for it, else starts a new row; what no example fills is filler the mask leaves out (about
    3% of the demo's rows at block_size 256, where back to back packing cut 29% of the conversations)."""
    width = block_size + 1
    place: list[tuple[int, int]] = []  # (row, first column) of each example
    used: list[int] = []  # tokens taken in each row
    for e in examples:
        if len(e.ids) > width:
            raise ValueError(f"an example of {len(e.ids)} tokens does not fit a row of {width} (block_size + 1)")
        row = next((r for r in range(max(0, len(used) - PACK_LOOKBACK), len(used)) if used[r] + len(e.ids) <= width),
                   len(used))
        if row == len(used):
            used.append(0)
        place.append((row, used[row]))
        used[row] += len(e.ids)
    tokens = np.full((len(used), width), filler, dtype=np.int32)
    weights = np.zeros((len(used), width), dtype=np.uint8)
    for e, (r, s) in zip(examples, place):
        tokens[r, s : s + len(e.ids)], weights[r, s : s + len(e.mask)] = e.ids, e.mask
    return tokens, weights


def padded(examples: list[Rendered], block_size: int, filler: int) -> tuple[np.ndarray, np.ndarray]:
    width = block_size + 1
    tokens = np.full((len(examples), width), filler, dtype=np.int32)
    weights = np.zeros((len(examples), width), dtype=np.uint8)
    for r, e in enumerate(examples):
        tokens[r, : len(e.ids)], weights[r, : len(e.mask)] = e.ids, e.mask
    return tokens, weights


def write_examples(dest: Path, tokens: np.ndarray, mask: np.ndarray, conversations: list[dict]) -> None:
    with atomic_dir(dest) as tmp:
        np.save(tmp / TOKENS, tokens)
        np.save(tmp / MASK, mask)
        with open(tmp / CONVERSATIONS, "w", encoding="utf-8") as f:
            for c in conversations:
                f.write(json.dumps(c, ensure_ascii=False) + "\n")


def read_examples(src: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        tokens = np.load(src / TOKENS, allow_pickle=False)
        mask = np.load(src / MASK, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise InputError(f"{src}: unreadable examples ({err})") from None
    if tokens.shape != mask.shape or tokens.ndim != 2:
        raise InputError(f"{src}: tokens {tokens.shape} and mask {mask.shape} must be equal 2-d shapes")
    return tokens, mask


def read_conversations(src: Path) -> list[dict]:
    path = src / CONVERSATIONS
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: unreadable ({err})") from None
