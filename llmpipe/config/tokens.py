"""The split, tokenizer and tokenize sections."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from llmpipe.config.base import Seed, Section


class SplitParams(Section):
    """Train/val split by document, deterministic from the document id (shared by two stages)."""

    val_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.1
    seed: Seed = 0


class TokenizerParams(Section):
    # at least the 256 single bytes and the 5 special tokens (<|endoftext|> and the chat markers)
    vocab_size: Annotated[int, Field(ge=261, le=1_000_000)] = 4096
    min_frequency: Annotated[int, Field(ge=1)] = 2
    nfc: bool = False


class TokenizeParams(Section):
    shard_tokens: Annotated[int, Field(ge=1024)] = 100_000_000
    workers: Annotated[int, Field(ge=0, le=1024)] = 0  # encoding threads; 0: one per core
    batch_bytes: Annotated[int, Field(ge=1024)] = 16_000_000  # text encoded at once (bounds memory)
