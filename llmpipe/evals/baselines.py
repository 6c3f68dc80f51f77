"""The baselines beside the model's bits per byte, on the same val targets and the same byte count:
a Kneser-Ney n-gram and an add-one unigram fitted on the train split's tokens, and xz coding the val
text after the train text (and alone)."""

from __future__ import annotations

import logging
import time
from typing import Sequence

import numpy as np

from llmpipe.config.evaluate import BaselineParams
from llmpipe.evals.compress import stream_bytes, xz_baseline
from llmpipe.evals.ngram import fit_kneser_ney, unigram_bits

log = logging.getLogger(__name__)


def tail_tokens(arrays: Sequence[np.ndarray], n: int) -> np.ndarray:
    """The last `n` tokens of a split's shards in order, read from the end (shards may be memory maps)."""
    parts, need = [], n
    for arr in reversed(arrays):
        if need <= 0:
            break
        parts.append(np.asarray(arr[max(len(arr) - need, 0) :]))
        need -= len(parts[-1])
    return np.concatenate(parts[::-1]) if parts else np.zeros(0, dtype=np.int64)


def tail_bytes(arrays: Sequence[np.ndarray], pieces: list[bytes], max_bytes: int) -> bytes:
    """The train text xz sees before val: the last `max_bytes` bytes of the split's token stream."""
    lengths = np.array([len(p) or 1 for p in pieces], dtype=np.int64)
    parts, have = [], 0
    for arr in reversed(arrays):
        for end in range(len(arr), 0, -(1 << 20)):  # back to front, a million tokens at a time
            ids = np.asarray(arr[max(end - (1 << 20), 0) : end], dtype=np.int64)
            parts.append(ids)
            have += int(lengths[ids].sum())
            if have >= max_bytes:
                return stream_bytes(np.concatenate(parts[::-1]), pieces)[-max_bytes:]
    return stream_bytes(np.concatenate(parts[::-1]), pieces) if parts else b""


def baseline_metrics(train: Sequence[np.ndarray], val: np.ndarray, scored: np.ndarray, token_lengths: np.ndarray,
                     pieces: list[bytes], vocab_size: int, eot_id: int, cfg: BaselineParams) -> dict:
    """Bits per byte of the baselines on val's `scored` targets (val's tokens before a target are its
    context), over the UTF-8 bytes those targets stand for."""
    targets = np.asarray(val[scored], dtype=np.int64)
    n_bytes = max(int(token_lengths[targets].sum()), 1)
    out: dict = {"baseline_bytes": n_bytes}
    t0 = time.perf_counter()
    fit_on = tail_tokens(train, cfg.ngram_max_train_tokens)
    model = fit_kneser_ney(fit_on, cfg.ngram_order, vocab_size, pad_id=eot_id)
    out["ngram_bits_per_byte"] = float(model.stream_bits(val)[scored].sum()) / n_bytes
    out["ngram_order"] = cfg.ngram_order
    out["ngram_train_tokens"] = len(fit_on)
    out["ngram_seconds"] = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    out["unigram_bits_per_byte"] = float(unigram_bits(fit_on, targets, vocab_size).sum()) / n_bytes
    out["unigram_seconds"] = round(time.perf_counter() - t0, 3)
    if cfg.compressor == "xz":
        t0 = time.perf_counter()
        max_bytes = int(cfg.max_compressor_mb * 1e6)
        context = tail_bytes(train, pieces, max_bytes)
        if len(context) == max_bytes:
            log.info("xz baseline: the train text is longer than %s MB; xz sees its last %d bytes",
                     cfg.max_compressor_mb, max_bytes)
        bits = xz_baseline(context, stream_bytes(targets, pieces), cfg.xz_extreme)
        out["compressor_bits_per_byte"] = bits["conditional_bits"] / n_bytes
        out["compressor_alone_bits_per_byte"] = bits["alone_bits"] / n_bytes
        out["compressor_context_bytes"] = len(context)
        out["compressor_seconds"] = round(time.perf_counter() - t0, 3)
    return out
