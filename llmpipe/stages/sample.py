"""Stage 8, sample: generate text from the prompts in params, stopping at <|endoftext|>."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from tokenizers import Tokenizer

from llmpipe.config.sample import SampleParams
from llmpipe.model.gpt import GPT
from llmpipe.model.weights import load_model
from llmpipe.stages.registry import StageParams, StageResult, stage
from llmpipe.tokens.bpe import EOT
from llmpipe.training.generate import generate_batch
from llmpipe.util.io import atomic_path

log = logging.getLogger(__name__)
STAGE = stage("sample")


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """The text before the first stop string, and whether one was found."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


def held_back(text: str, stops: list[str]) -> int:
    """How many characters at the end of text could be the start of a stop string."""
    return max((k for s in stops for k in range(min(len(s) - 1, len(text)), 0, -1) if s.startswith(text[-k:])),
               default=0)


def sample_texts(model: GPT, tok: Tokenizer, cfg: SampleParams) -> list[dict]:
    """Core: one completion per prompt, the prompts generated together as one batch."""
    eot = tok.token_to_id(EOT)
    stop_fn = (lambda _row, ids: cut_at_stop(tok.decode(ids), cfg.stop)[1]) if cfg.stop else None
    t0 = time.perf_counter()
    completions = generate_batch(model, [tok.encode(p).ids for p in cfg.prompts], cfg.max_new_tokens,
                                 eot_id=eot, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                                 seed=cfg.seed, stop_fn=stop_fn, compile=cfg.compile)
    seconds = round(time.perf_counter() - t0, 3)
    out = []
    for prompt, ids in zip(cfg.prompts, completions):
        text, stopped = cut_at_stop(tok.decode(ids), cfg.stop)
        out.append({"prompt": prompt, "completion": text, "new_tokens": len(ids),
                    "stopped_at_eot": len(ids) < cfg.max_new_tokens and not stopped,
                    "stopped_at_string": stopped, "seconds": seconds})
    return out


def run(params: StageParams, root: Path, sink=None) -> StageResult:
    t0 = time.perf_counter()
    model = load_model(root / STAGE.inp("model"))
    tok = Tokenizer.from_file(str(root / STAGE.inp("tokenizer")))
    samples = sample_texts(model, tok, params.sample)
    dest = root / STAGE.out("samples")
    with atomic_path(dest) as tmp:
        tmp.write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples), encoding="utf-8")
    for s in samples:
        print(f"\n--- prompt: {s['prompt']!r}\n{s['prompt']}{s['completion']}\n", flush=True)
    new_tokens = sum(s["new_tokens"] for s in samples)
    seconds = time.perf_counter() - t0
    metrics = {"samples": len(samples), "new_tokens": new_tokens,
               "tokens_per_s": round(new_tokens / max(samples[0]["seconds"], 1e-9), 1),
               "seconds": round(seconds, 3)}
    return StageResult(metrics, artifacts=[dest])
