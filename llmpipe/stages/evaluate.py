"""Stage 7, evaluate: held-out loss, perplexity and bits per byte of the trained model."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from tokenizers import Tokenizer

from .. import layout
from ..config import Params
from ..evaluate import evaluate_model
from ..tokens import TokenData
from ..weights import load_model
from .base import StageResult
from .tokenizer import token_byte_lengths

log = logging.getLogger(__name__)


def run(params: Params, root: Path, sink=None) -> StageResult:
    t0 = time.perf_counter()
    tok_path = root / layout.TOKENIZER
    model = load_model(root / layout.MODEL)
    val = TokenData(root / layout.TOKENS, "val", tokenizer_path=tok_path)
    token_bytes = token_byte_lengths(Tokenizer.from_file(str(tok_path)))
    metrics = evaluate_model(model, val, token_bytes, params.evaluate.batch_size, params.evaluate.max_tokens)
    metrics["seconds"] = round(time.perf_counter() - t0, 3)
    log.info("evaluate: val loss %.4f, perplexity %.2f, %.4f bits per byte over %d tokens",
             metrics["val_loss"], metrics["perplexity"], metrics["bits_per_byte"], metrics["tokens"])
    return StageResult(metrics)
