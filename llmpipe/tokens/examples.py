"""Finetuning examples on disk: rows of token ids with a loss mask, packed or padded.

A folder holds tokens.npy (int32, rows x (block_size + 1)), mask.npy (uint8, the same shape: 1 where
the token is a target the loss counts) and conversations.jsonl (the conversations, for evaluation).
A row gives inputs row[:-1] and targets row[1:], like a pretraining batch.
- packed: the rendered conversations back to back, cut into rows (a conversation may span two rows;
  each starts with <|endoftext|>, as documents do in pretraining), no token wasted on padding;
- padded: one conversation a row, filled with <|endoftext|> that the mask leaves out.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from llmpipe.tokens.chat import Rendered
from llmpipe.util.io import InputError, atomic_dir

TOKENS, MASK, CONVERSATIONS = "tokens.npy", "mask.npy", "conversations.jsonl"


def packed(examples: list[Rendered], block_size: int, filler: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.fromiter((t for e in examples for t in e.ids), dtype=np.int32)
    mask = np.fromiter((m for e in examples for m in e.mask), dtype=np.uint8)
    width = block_size + 1
    rows = -(-len(ids) // width) if len(ids) else 0
    tokens = np.full(rows * width, filler, dtype=np.int32)
    weights = np.zeros(rows * width, dtype=np.uint8)
    tokens[: len(ids)], weights[: len(mask)] = ids, mask
    return tokens.reshape(rows, width), weights.reshape(rows, width)


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
