"""Stage 7, evaluate: held-out loss, perplexity and bits per byte of the trained model."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from tokenizers import Tokenizer

from llmpipe.model.weights import load_model
from llmpipe.stages.registry import StageParams, StageResult, stage
from llmpipe.tokens.bpe import token_byte_lengths
from llmpipe.tokens.loader import TokenData
from llmpipe.training.evaluate import evaluate_model

log = logging.getLogger(__name__)
STAGE = stage("evaluate")


def run(params: StageParams, root: Path, sink=None) -> StageResult:
    t0 = time.perf_counter()
    tok_path = root / STAGE.inp("tokenizer")
    model = load_model(root / STAGE.inp("model"))
    val = TokenData(root / STAGE.inp("tokens"), "val", tokenizer_path=tok_path)
    token_bytes = token_byte_lengths(Tokenizer.from_file(str(tok_path)))
    metrics = evaluate_model(model, val, token_bytes, params.evaluate.batch_size, params.evaluate.max_tokens)
    metrics["seconds"] = round(time.perf_counter() - t0, 3)
    log.info("evaluate: val loss %.4f, perplexity %.2f, %.4f bits per byte over %d tokens",
             metrics["val_loss"], metrics["perplexity"], metrics["bits_per_byte"], metrics["tokens"])
    return StageResult(metrics)
