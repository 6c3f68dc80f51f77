"""The GGUF export run by llama.cpp against llmpipe itself: 32 greedy tokens on 3 prompts, token ids of
the prompts, and the largest logit difference over prompt + continuation, in f32.

    python bench/gguf.py [--steps 300] [--threads 2] [--keep out.gguf]

The model is the demo's (data/model and data/tokenizer/tokenizer.json, after `bash scripts/demo.sh` or
`dvc repro`) when both exist; otherwise the script trains a small one itself (300 steps: about a
minute on 2 idle cores, 7 on busy ones): a byte-level BPE tokenizer (512 tokens) on this repository's
README and docs/ pages and a 2-layer GQA model on the same text, so that its greedy choices are not near-ties of random
weights. llama.cpp runs with an f32 KV cache, so both sides compute in f32. Needs llama-cpp-python (the
dev extra). Measured: gguf_greedy_match=1 tokens_match=1 max_logit_diff=1.76e-05 (self-trained).

Last line: RESULT gguf_greedy_match=<0|1> tokens_match=<0|1> max_logit_diff=<x> model=<demo|self-trained>
  gguf_greedy_match  1 when llama.cpp's 32 greedy tokens equal llmpipe's on all 3 prompts
  tokens_match       1 when llama.cpp's tokenizer gives our ids for every prompt
"""

from __future__ import annotations

import _root  # noqa: F401  (first: takes bench/ off the import path, see bench/_root.py)

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent

from llmpipe.config.tokens import TokenizerParams  # noqa: E402
from llmpipe.model.gpt import GPT, GPTConfig  # noqa: E402
from llmpipe.model.weights import load_model  # noqa: E402
from llmpipe.ops.gguf import export_gguf  # noqa: E402
from llmpipe.tokens.bpe import train_tokenizer  # noqa: E402
from llmpipe.training.generate import generate_batch  # noqa: E402

PROMPTS = ["The pipeline ", "Each stage", "llmpipe export "]
NEW_TOKENS = 32


def self_trained(tmp: Path, steps: int) -> tuple[GPT, Path]:
    # the README and the docs pages: enough text (~135 KB) for peaked greedy choices
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    text = "\n\n".join(p.read_text(encoding="utf-8") for p in pages)
    tok_path = tmp / "tokenizer.json"
    tok = train_tokenizer(iter(text.split("\n\n")), TokenizerParams(vocab_size=512, min_frequency=2))
    tok.save(str(tok_path))
    ids = torch.tensor(tok.encode(text).ids)
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=tok.get_vocab_size(), n_layer=2, n_head=4, n_kv_head=2, d_model=128, block_size=128)
    model = GPT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    t0 = time.perf_counter()
    for step in range(steps):
        starts = torch.randint(0, len(ids) - cfg.block_size - 1, (16,))
        x = torch.stack([ids[s : s + cfg.block_size] for s in starts])
        y = torch.stack([ids[s + 1 : s + cfg.block_size + 1] for s in starts])
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    print(f"trained {steps} steps in {time.perf_counter() - t0:.0f} s, last loss {loss.item():.2f}")
    return model.eval(), tok_path


def parity(model: GPT, tok_path: Path, threads: int = 2, keep: Path | None = None) -> dict:
    """Export `model` to GGUF and compare llama.cpp with llmpipe: token ids, 32 greedy tokens on each
    prompt, and the largest logit difference (f32 weights and KV cache)."""
    import llama_cpp
    from tokenizers import Tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tok = Tokenizer.from_file(str(tok_path))
        path = export_gguf(model, tok_path, keep or Path(tmp) / "model.gguf")
        print(f"GGUF {path.stat().st_size / 1e6:.1f} MB for {model.cfg.model_dump()}")
        prompts = [tok.encode(p).ids for p in PROMPTS]
        ours = generate_batch(model, prompts, NEW_TOKENS, temperature=0.0)
        n_ctx = min(model.cfg.block_size, max(map(len, prompts)) + NEW_TOKENS + 1)
        # an f32 KV cache (llama.cpp's default is f16, which alone moves logits by ~1e-2): f32 throughout
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads, logits_all=True,
                              verbose=False, type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
        try:  # closed explicitly: an unclosed Llama's finalizer raises at interpreter exit
            tokens_match = all(llm.tokenize(p.encode(), add_bos=False, special=False) == ids
                               for p, ids in zip(PROMPTS, prompts))
            matches, diff = [], 0.0
            for text, prompt, mine in zip(PROMPTS, prompts, ours):
                theirs = []
                for token in llm.generate(prompt, temp=0.0, repeat_penalty=1.0, reset=True):
                    theirs.append(token)
                    if len(theirs) == NEW_TOKENS:
                        break
                matches.append(theirs == mine)
                print(f"{text!r}: llmpipe {tok.decode(mine)!r}\n{'':>{len(repr(text))}}  llama.cpp "
                      f"{tok.decode(theirs)!r} ({'equal' if theirs == mine else 'DIFFERENT'})")
                seq = prompt + mine
                llm.reset()
                llm.eval(seq)
                cpp = np.asarray(llm.scores[: len(seq)])
                with torch.no_grad():
                    ref = model(torch.tensor([seq]))[0][0].float().numpy()
                diff = max(diff, float(np.abs(cpp - ref).max()))
        finally:
            llm.close()
    return {"gguf_greedy_match": int(all(matches)), "tokens_match": int(tokens_match), "max_logit_diff": diff}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keep", type=Path, default=None, help="also write the GGUF file here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        demo_model, demo_tok = ROOT / "data" / "model", ROOT / "data" / "tokenizer" / "tokenizer.json"
        if (demo_model / "config.json").exists() and demo_tok.exists():
            model, tok_path, source = load_model(demo_model), demo_tok, "demo"
        else:
            print("no data/model + data/tokenizer/tokenizer.json: training a small model here")
            model, tok_path, source = (*self_trained(Path(tmp), args.steps), "self-trained")
        r = parity(model, tok_path, args.threads, args.keep)
    print(f"RESULT gguf_greedy_match={r['gguf_greedy_match']} tokens_match={r['tokens_match']} "
          f"max_logit_diff={r['max_logit_diff']:.2e} model={source}")


if __name__ == "__main__":
    main()
