"""The evaluate section."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from llmpipe.config.base import Section


class BaselineParams(Section):
    """Baselines scored beside the model on the same val targets and bytes (llmpipe/evals/ngram.py,
    llmpipe/evals/compress.py)."""

    enabled: bool = True  # false: the model's figures alone
    # Kneser-Ney n-gram fitted on the train split; on the demo corpus each order above 5 gains little and
    # costs more time (bench/baselines.py --orders 1 2 3 4 5 6 measures every order)
    ngram_order: Annotated[int, Field(ge=1, le=8)] = 5
    # fit the n-gram on at most this many train tokens, the split's last ones (memory grows with them)
    ngram_max_train_tokens: Annotated[int, Field(ge=1)] = 10_000_000
    compressor: Literal["xz", "none"] = "xz"
    # xz sees at most this many MB of train text before val (its last ones): time grows with it;
    # preset 9's dictionary holds 64 MiB
    max_compressor_mb: Annotated[float, Field(gt=0)] = 16.0
    xz_extreme: bool = True  # xz -9e, its highest level (PRESET_EXTREME): slower than -9


class EvaluateParams(Section):
    # Score at most this many val tokens (null: the whole val split), in fixed non-overlapping windows.
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    batch_size: Annotated[int, Field(ge=1)] = 8
    # In-context copying (llmpipe/evals/copying.py): this many val spans of block_size // 2 tokens, each
    # shown twice, and as many rows of val text ending in a repeat of its last 1/16 to 1/2 context (the
    # varied probe: copying by content, not from one distance); the loss and top-1 on the repeat against
    # the first showing. 0: not measured.
    copy_spans: Annotated[int, Field(ge=0)] = 32
    baselines: BaselineParams = BaselineParams()  # n-gram, unigram and xz on the same val targets
