"""The sample section (also the defaults of `llmpipe generate`)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from llmpipe.config.base import Seed, Section


class SampleParams(Section):
    prompts: list[str] = Field(default_factory=lambda: ["ROMEO.\n"], min_length=1)
    max_new_tokens: Annotated[int, Field(ge=1, le=100_000)] = 200
    temperature: Annotated[float, Field(ge=0.0, le=10.0)] = 0.8
    top_k: Annotated[int, Field(ge=0)] = 50
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    seed: Seed = 1
    # Generation also stops when one of these strings appears (it is not included in the output).
    stop: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    # torch.compile the per-token step: faster per token on CPU after a compile that takes a while (cached
    # on disk by inductor), so it pays on long generations (bench/generate.py; docs/benchmarks.md).
    compile: bool = False
