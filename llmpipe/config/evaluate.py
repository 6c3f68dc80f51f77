"""The evaluate section."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from llmpipe.config.base import Section


class BaselineParams(Section):
    """Baselines scored beside the model on the same val targets and bytes (llmpipe/evals/ngram.py,
    llmpipe/evals/compress.py)."""

    enabled: bool = True
    # Kneser-Ney n-gram fitted on the train split (4: best on the demo corpus; see docs)
    ngram_order: Annotated[int, Field(ge=1, le=8)] = 4
    # fit the n-gram on at most this many train tokens, the split's last ones (fitting peaks near 80 bytes a token)
    ngram_max_train_tokens: Annotated[int, Field(ge=1)] = 20_000_000
    compressor: Literal["xz", "none"] = "xz"
    # xz sees at most this many MB of train text before val (its last ones); preset 9's dictionary is 64 MiB
    max_compressor_mb: Annotated[float, Field(gt=0)] = 64.0


class EvaluateParams(Section):
    # Score at most this many val tokens (null: the whole val split), in fixed non-overlapping windows.
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    batch_size: Annotated[int, Field(ge=1)] = 8
    baselines: BaselineParams = BaselineParams()
