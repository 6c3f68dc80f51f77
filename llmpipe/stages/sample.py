"""Stage 8, sample: generate text from the prompts in params, stopping at <|endoftext|>."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from pydantic import ValidationError
from tokenizers import Tokenizer

from .. import layout
from ..config import Params, ParamsError, SampleParams, format_errors
from ..generate import generate_batch
from ..io import atomic_path
from ..model import GPT
from ..tokens import EOT
from ..weights import load_model
from .base import StageResult

log = logging.getLogger(__name__)


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """The text before the first stop string, and whether one was found."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


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


def run(params: Params, root: Path, sink=None) -> StageResult:
    t0 = time.perf_counter()
    model = load_model(root / layout.MODEL)
    tok = Tokenizer.from_file(str(root / layout.TOKENIZER))
    samples = sample_texts(model, tok, params.sample)
    dest = root / layout.SAMPLES
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


def generate_cli(params: Params, root: Path, args) -> None:
    """`llmpipe generate "prompt" ...`: stream completions to the terminal."""
    overrides = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
                 "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed, "stop": args.stop,
                 "compile": args.compile}
    try:
        cfg = SampleParams.model_validate({**params.sample.model_dump(), "prompts": args.prompts,
                                           **{k: v for k, v in overrides.items() if v is not None}})
    except ValidationError as err:  # a bad option: say which, like a bad params.yaml key (exit 2)
        raise ParamsError(format_errors("llmpipe generate options (sample.*)", err)) from None
    model = load_model(root / layout.MODEL)
    tok = Tokenizer.from_file(str(root / layout.TOKENIZER))
    eot = tok.token_to_id(EOT)
    if len(cfg.prompts) > 1:  # a batch: print each completion when the batch is done
        for s in sample_texts(model, tok, cfg):
            print(f"--- {s['prompt']!r}\n{s['prompt']}{s['completion']}\n", flush=True)
        return
    prompt = cfg.prompts[0]
    print(prompt, end="", flush=True)
    shown = ""

    def stream(_row: int, ids: list[int]) -> bool:
        """Print what is new; end the row at a stop string (never printing it)."""
        nonlocal shown
        text, stopped = cut_at_stop(tok.decode(ids), cfg.stop)
        if not text.endswith("\ufffd"):  # wait until a multi-byte character is complete
            print(text[len(shown):], end="", flush=True)
            shown = text
        return stopped

    generate_batch(model, [tok.encode(prompt).ids], cfg.max_new_tokens, eot_id=eot, temperature=cfg.temperature,
                   top_k=cfg.top_k, top_p=cfg.top_p, seed=cfg.seed, stop_fn=stream, compile=cfg.compile)
    print("\n", flush=True)
