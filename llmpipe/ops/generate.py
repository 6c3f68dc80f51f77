"""`llmpipe generate "prompt" ...`: stream completions of the trained model to the terminal, with the
sample section of params.yaml as defaults for the options."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError
from tokenizers import Tokenizer

from llmpipe.config.base import ParamsError, format_errors
from llmpipe.config.sample import SampleParams
from llmpipe.model.weights import load_model
from llmpipe.stages.registry import stage
from llmpipe.stages.sample import cut_at_stop, held_back, sample_texts
from llmpipe.tokens.bpe import EOT
from llmpipe.training.generate import generate_batch

SAMPLE = stage("sample")


def generate_cli(sample: SampleParams, root: Path, args) -> None:
    """`llmpipe generate "prompt" ...`: stream completions to the terminal."""
    overrides = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
                 "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed, "stop": args.stop,
                 "compile": args.compile}
    try:
        cfg = SampleParams.model_validate({**sample.model_dump(), "prompts": args.prompts,
                                           **{k: v for k, v in overrides.items() if v is not None}})
    except ValidationError as err:  # a bad option: say which, like a bad params.yaml key (exit 2)
        raise ParamsError(format_errors("llmpipe generate options (sample.*)", err)) from None
    model = load_model(root / SAMPLE.inp("model"))
    tok = Tokenizer.from_file(str(root / SAMPLE.inp("tokenizer")))
    eot = tok.token_to_id(EOT)
    if len(cfg.prompts) > 1:  # a batch: print each completion when the batch is done
        for s in sample_texts(model, tok, cfg):
            print(f"--- {s['prompt']!r}\n{s['prompt']}{s['completion']}\n", flush=True)
        return
    prompt = cfg.prompts[0]
    print(prompt, end="", flush=True)
    shown = ""

    def show(text: str) -> None:
        nonlocal shown
        print(text[len(shown):], end="", flush=True)
        shown = text

    def stream(_row: int, ids: list[int]) -> bool:
        """Print what is new; end the row at a stop string (never printing it, nor its start)."""
        text, stopped = cut_at_stop(tok.decode(ids), cfg.stop)
        if not stopped:  # the end may be the start of a stop string that the next token completes
            text = text[: len(text) - held_back(text, cfg.stop)]
        if not text.endswith("\ufffd") and len(text) > len(shown):  # a multi-byte character waits to be whole
            show(text)
        return stopped

    out = generate_batch(model, [tok.encode(prompt).ids], cfg.max_new_tokens, eot_id=eot,
                         temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, seed=cfg.seed,
                         stop_fn=stream, compile=cfg.compile)[0]
    show(cut_at_stop(tok.decode(out), cfg.stop)[0])  # what was held back, once nothing can follow it
    print("\n", flush=True)


def command(args) -> None:
    from llmpipe.config.sections import load_sections

    generate_cli(load_sections(args.params, ["sample"]).sample, args.root, args)
