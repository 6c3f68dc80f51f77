"""Stage 7, evaluate: held-out loss, perplexity and bits per byte of the trained model, and beside them
the baselines (a Kneser-Ney n-gram, an add-one unigram, xz) on the same val targets and bytes, and how
well the model copies a span from its context (llmpipe/evals/copying.py)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from tokenizers import Tokenizer

from llmpipe.evals.baselines import baseline_metrics
from llmpipe.evals.copying import copy_probe, varied_copy_probe
from llmpipe.model.weights import load_model
from llmpipe.stages.registry import StageParams, StageResult, stage
from llmpipe.tokens.bpe import token_byte_lengths, token_bytes
from llmpipe.tokens.loader import TokenData
from llmpipe.training.evaluate import evaluate_model

log = logging.getLogger(__name__)
STAGE = stage("evaluate")


def run(params: StageParams, root: Path, sink=None) -> StageResult:
    t0 = time.perf_counter()
    cfg = params.evaluate
    tok_path = root / STAGE.inp("tokenizer")
    model = load_model(root / STAGE.inp("model"))
    val = TokenData(root / STAGE.inp("tokens"), "val", tokenizer_path=tok_path)
    tok = Tokenizer.from_file(str(tok_path))
    lengths = token_byte_lengths(tok)
    metrics = evaluate_model(model, val, lengths, cfg.batch_size, cfg.max_tokens)
    stream, scored = val.scored(cfg.max_tokens)  # the val tokens the model scored, for the probe and baselines
    if cfg.copy_spans:  # the assistant's questions are answered by copying from the passage
        probe = copy_probe(model, stream, cfg.copy_spans, cfg.batch_size)
        if probe:
            metrics.update(probe)
            log.info("evaluate: a val span shown twice: top-1 %.3f on the repeat against %.3f on the first "
                     "showing (the copy rule %.3f); loss %.3f against %.3f nats per token",
                     probe["copy_repeat_top1"], probe["copy_first_top1"], probe["copy_rule_top1"],
                     probe["copy_repeat_loss"], probe["copy_first_loss"])
        else:
            log.warning("evaluate: no copy probe: the %d scored val tokens hold no span of block_size // 2 = %d "
                        "tokens (evaluate.copy_spans)", len(stream), model.cfg.block_size // 2)
        if varied := varied_copy_probe(model, stream, cfg.copy_spans, cfg.batch_size):
            metrics.update(varied)  # copying found by content: spans of other lengths than the half context
            log.info("evaluate: spans of %d-%d tokens shown twice: top-1 %.3f on the repeat against %.3f",
                     varied["copy_varied_min_tokens"], varied["copy_varied_max_tokens"],
                     varied["copy_varied_repeat_top1"], varied["copy_varied_first_top1"])
        else:
            log.warning("evaluate: no varied copy probe: the %d scored val tokens hold too few rows of %d tokens",
                        len(stream), model.cfg.block_size)
    metrics["model_seconds"] = round(time.perf_counter() - t0, 3)
    log.info("evaluate: val loss %.4f, perplexity %.2f, %.4f bits per byte over %d tokens",
             metrics["val_loss"], metrics["perplexity"], metrics["bits_per_byte"], metrics["tokens"])
    if cfg.baselines.enabled:
        train = TokenData(root / STAGE.inp("tokens"), "train")
        base = baseline_metrics(train.arrays, stream, scored, lengths, token_bytes(tok), val.manifest.vocab_size,
                                val.manifest.eot_id, cfg.baselines)
        if (n := base.pop("baseline_bytes")) != metrics["bytes"]:  # the baselines score the model's bytes
            raise RuntimeError(f"the baselines scored {n} bytes, the model {metrics['bytes']}")
        metrics.update(base, gain_over_ngram_bpb=base["ngram_bits_per_byte"] - metrics["bits_per_byte"])
        log.info("evaluate: baselines in bits per byte: %d-gram KN %.4f, unigram %.4f%s",
                 cfg.baselines.ngram_order, base["ngram_bits_per_byte"], base["unigram_bits_per_byte"],
                 f", xz {base['compressor_bits_per_byte']:.4f} after train"
                 f" ({base['compressor_alone_bits_per_byte']:.4f} alone)" if "compressor_bits_per_byte" in base else "")
    metrics["seconds"] = round(time.perf_counter() - t0, 3)
    return StageResult(metrics)
