"""The evaluate section."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from llmpipe.config.base import Section


class EvaluateParams(Section):
    # Score at most this many val tokens (null: the whole val split), in fixed non-overlapping windows.
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    batch_size: Annotated[int, Field(ge=1)] = 8
