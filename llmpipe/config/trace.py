"""The trace section: how `llmpipe trace`, /v1/trace and the model card trace text into the training
data (llmpipe/tokens/trace.py). The index itself (the trace-index stage) depends on no setting here,
so this section is no DVC param of it."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from llmpipe.config.base import Section


class TraceParams(Section):
    # Shorter verbatim matches are common phrases, not provenance (OLMoTrace keeps long spans too).
    min_tokens: Annotated[int, Field(ge=1, le=4096)] = 8
    max_docs: Annotated[int, Field(ge=1, le=100)] = 3  # documents listed per span
