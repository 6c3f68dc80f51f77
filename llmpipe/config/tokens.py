"""The split, tokenizer and tokenize sections."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from llmpipe.config.base import NgramSize, Seed, Section


class SplitGroup(Section):
    """What keeps documents together on one side of the split (one work, one site, one file)."""

    # source: the `group` each source sets (the demo: the play, both editions alike; http and warc pages:
    #   the registered domain; local JSONL/Parquet records: the source's group_field), else the id;
    # id: every document its own group; path_regex: the regex below over each document's path (its URL
    #   when it has no path): its first capture group, or the whole match when it has none.
    by: Literal["source", "id", "path_regex"] = "source"
    path_regex: str | None = None

    @field_validator("path_regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as err:
                raise ValueError(f"not a regular expression: {err}") from None
        return value

    @model_validator(mode="after")
    def _regex_when_needed(self) -> "SplitGroup":
        if self.by == "path_regex" and not self.path_regex:
            raise ValueError("by: path_regex needs path_regex")
        return self


class Decontaminate(Section):
    """As Paloma: a val document whose share of word n-grams also found in the train split exceeds
    max_overlap moves to train, with the rest of its group (the split stage's report lists each)."""

    enabled: bool = True  # false: the hash of the group key alone decides (nothing moves)
    ngram: NgramSize = 13
    max_overlap: Annotated[float, Field(ge=0.0, le=1.0)] = 0.01


class SplitParams(Section):
    """Train/val split by group of documents (the split stage decides it once; the other stages read its
    assignments): a group is in val when a hash of its key falls under val_fraction."""

    val_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.1
    seed: Seed = 0
    group: SplitGroup = SplitGroup()  # what keeps documents together on one side
    decontaminate: Decontaminate = Decontaminate()


class TokenizerParams(Section):
    # at least the 256 single bytes and the 5 special tokens (<|endoftext|> and the chat markers)
    vocab_size: Annotated[int, Field(ge=261, le=1_000_000)] = 4096
    min_frequency: Annotated[int, Field(ge=1)] = 2
    nfc: bool = False


class TokenizeParams(Section):
    shard_tokens: Annotated[int, Field(ge=1024)] = 100_000_000
    workers: Annotated[int, Field(ge=0, le=1024)] = 0  # encoding threads; 0: one per core
    batch_bytes: Annotated[int, Field(ge=1024)] = 16_000_000  # text encoded at once (bounds memory)
