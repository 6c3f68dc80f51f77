"""Generation speed: ours with the KV cache, ours without it, and transformers' generate() on the
exported copy of the same weights, for 256 new tokens at batch 1 and batch 8, on CPU, in one run.

    python bench/generate.py [--new-tokens 256] [--threads 2]

The model is the default architecture of params.yaml (pretrain.model) with a context long enough for
prompt + 256 new tokens; weights are random (speed does not depend on them), seeded, and every
generation is greedy with no early stop, so all three produce exactly the same number of tokens.
Last line: RESULT kv_speedup=<x> ratio_vs_transformers=<x>
"""

from __future__ import annotations

import _root  # noqa: F401  (first: takes bench/ off the import path, see bench/_root.py)

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent

from llmpipe.config import load_params  # noqa: E402
from llmpipe.export import export_hf  # noqa: E402
from llmpipe.generate import generate_batch  # noqa: E402
from llmpipe.model import GPT, GPTConfig  # noqa: E402
from llmpipe.stages.tokenizer import train_tokenizer  # noqa: E402


def timed(fn, repeats: int = 1) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=None, help="default: tokenizer.vocab_size in params.yaml")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    params = load_params(ROOT / "params.yaml")
    args.vocab = args.vocab or params.tokenizer.vocab_size
    mp = params.pretrain.model.model_dump()
    mp["block_size"] = max(mp["block_size"], 16 + args.new_tokens)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=args.vocab, **mp)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        tok_path = Path(tmp) / "tokenizer.json"
        train_tokenizer(iter(["a b c d e f g h"] * 4), type("C", (), {"vocab_size": 260, "min_frequency": 1,
                                                                        "nfc": False})()).save(str(tok_path))
        hf = transformers.AutoModelForCausalLM.from_pretrained(export_hf(model, tok_path, Path(tmp) / "hf"),
                                                               torch_dtype=torch.float32).eval()
    n = args.new_tokens
    results = {}
    print(f"model: {model.num_params() / 1e6:.2f}M params, {mp}, vocab {args.vocab}, {n} new tokens, "
          f"{args.threads} threads, transformers {transformers.__version__}")
    for batch in (1, 8):
        g = torch.Generator().manual_seed(batch)
        prompts = torch.randint(1, args.vocab, (batch, 8), generator=g)
        plist = prompts.tolist()
        generate_batch(model, plist, 8, temperature=0.0)  # warm-up
        t_kv = timed(lambda: generate_batch(model, plist, n, temperature=0.0, use_cache=True))
        t_nokv = timed(lambda: generate_batch(model, plist, n, temperature=0.0, use_cache=False))

        def hf_generate():
            with torch.no_grad():
                return hf.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=n,
                                   min_new_tokens=n, do_sample=False, pad_token_id=0, eos_token_id=None)

        hf_generate()  # warm-up
        t_hf = timed(hf_generate)
        # the same greedy tokens from both implementations (a check, not a timing)
        ours = generate_batch(model, plist, 32, temperature=0.0)
        with torch.no_grad():
            ref = hf.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=32,
                              do_sample=False, pad_token_id=0, eos_token_id=None)[:, 8:].tolist()
        same = ours == ref
        r = {"kv": batch * n / t_kv, "nokv": batch * n / t_nokv, "hf": batch * n / t_hf}
        results[batch] = r
        print(f"batch {batch}: ours+kv {r['kv']:8.1f} tok/s | ours no cache {r['nokv']:8.1f} tok/s | "
              f"transformers {r['hf']:8.1f} tok/s | kv speedup {r['kv'] / r['nokv']:.2f} | "
              f"vs transformers {r['kv'] / r['hf']:.2f} | same greedy tokens: {same}")
    kv_speedup = min(r["kv"] / r["nokv"] for r in results.values())
    ratio = min(r["kv"] / r["hf"] for r in results.values())
    print(f"RESULT kv_speedup={kv_speedup:.2f} ratio_vs_transformers={ratio:.2f}")


if __name__ == "__main__":
    main()
