"""The evaluate section."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from llmpipe.config.base import Section


class BaselineParams(Section):
    """Baselines scored beside the model on the same val targets and bytes (llmpipe/evals/ngram.py,
    llmpipe/evals/compress.py)."""

    enabled: bool = True  # false: the model's figures alone
    # Kneser-Ney n-gram fitted on the train split; on the demo corpus 5 beat 4 by 0.005-0.025 bits per
    # byte and 6 beat 5 by under 0.004, each order costing ~30% more time
    ngram_order: Annotated[int, Field(ge=1, le=8)] = 5
    # fit the n-gram on at most this many train tokens, the split's last ones (order 5 peaks near 180 bytes a token)
    ngram_max_train_tokens: Annotated[int, Field(ge=1)] = 10_000_000
    compressor: Literal["xz", "none"] = "xz"
    # xz sees at most this many MB of train text before val (its last ones): time grows with it (the demo's
    # 8.7 MB: ~35 s); preset 9's dictionary holds 64 MiB
    max_compressor_mb: Annotated[float, Field(gt=0)] = 16.0
    xz_extreme: bool = True  # xz -9e, its highest level (PRESET_EXTREME): about 40% slower than -9


class EvaluateParams(Section):
    # Score at most this many val tokens (null: the whole val split), in fixed non-overlapping windows.
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    batch_size: Annotated[int, Field(ge=1)] = 8
    baselines: BaselineParams = BaselineParams()  # n-gram, unigram and xz on the same val targets
