"""Generation speed: ours with the KV cache, ours without it, and transformers' generate() on the
exported copy of the same weights, for 256 new tokens at batch 1 and batch 8, on CPU, in one run.

    python bench/generate.py [--new-tokens 256] [--threads 2] [--repeats 2]

The model is the default architecture of params.yaml (pretrain.model) with a context long enough for
prompt + 256 new tokens; weights are random (speed does not depend on them), seeded, and every
generation is greedy with no early stop, so all of them produce exactly the same number of tokens.
Ours runs twice, eager and compiled (generate_batch(compile=True): torch.compile of the decode step
and of the full forward); with and without the cache are always compared at the same setting. Each
time is the best of --repeats runs (this machine's speed drifts by 30% between seconds); compile time
is spent in a warm-up and not counted (2-5 minutes from a cold inductor cache; the whole run takes about
8 minutes on 2 cores with 2 repeats, 9 with 3).

Last line: RESULT kv_speedup=<x> ratio_vs_transformers=<x> ..., where
  kv_speedup                   compiled ours with the cache / compiled ours without it
  kv_speedup_eager             the same pair in eager mode
  ratio_vs_transformers        eager ours with the cache / transformers' generate() (eager, its default)
  ratio_vs_transformers_compiled  compiled ours with the cache / the same transformers run
each the smaller of batch 1 and batch 8.
"""

from __future__ import annotations

import _root  # noqa: F401  (first: takes bench/ off the import path, see bench/_root.py)

import argparse
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent

from llmpipe.stages.params import load_params  # noqa: E402
from llmpipe.ops.export import export_hf  # noqa: E402
from llmpipe.training.generate import generate_batch  # noqa: E402
from llmpipe.model.gpt import GPT, GPTConfig  # noqa: E402
from llmpipe.tokens.bpe import train_tokenizer  # noqa: E402


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
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

        def ours(use_cache: bool, compile: bool):
            return lambda: generate_batch(model, plist, n, temperature=0.0, use_cache=use_cache, compile=compile)

        def hf_generate():
            with torch.no_grad():
                return hf.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=n,
                                   min_new_tokens=n, do_sample=False, pad_token_id=0, eos_token_id=None)

        t0 = time.perf_counter()
        for compile in (False, True):  # warm-ups; the compiled ones compile here
            generate_batch(model, plist, 8, temperature=0.0, compile=compile)
            generate_batch(model, plist, 8, temperature=0.0, compile=compile, use_cache=False)
        hf_generate()
        print(f"batch {batch}: warm-up and compile {time.perf_counter() - t0:.0f} s")
        runs = {"kv": ours(True, False), "nokv": ours(False, False), "kv_compiled": ours(True, True),
                "nokv_compiled": ours(False, True), "hf": hf_generate}
        best = {k: float("inf") for k in runs}
        for _ in range(args.repeats):  # interleaved, so a slow spell of the machine hits every variant
            for k, fn in runs.items():
                best[k] = min(best[k], timed(fn))
        r = {k: batch * n / t for k, t in best.items()}
        # the same greedy tokens from every implementation (a check, not a timing)
        ours_tokens = generate_batch(model, plist, 32, temperature=0.0)
        same = ours_tokens == generate_batch(model, plist, 32, temperature=0.0, compile=True)
        with torch.no_grad():
            ref = hf.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=32,
                              do_sample=False, pad_token_id=0, eos_token_id=None)[:, 8:].tolist()
        same = same and ours_tokens == ref
        results[batch] = r
        print(f"batch {batch} tokens/s: eager ours+kv {r['kv']:.1f}, no cache {r['nokv']:.1f} "
              f"(kv speedup {r['kv'] / r['nokv']:.2f}) | compiled ours+kv {r['kv_compiled']:.1f}, "
              f"no cache {r['nokv_compiled']:.1f} (kv speedup {r['kv_compiled'] / r['nokv_compiled']:.2f}) | "
              f"transformers {r['hf']:.1f} | same greedy tokens: {same}")
    keys = {"kv_speedup": ("kv_compiled", "nokv_compiled"), "kv_speedup_eager": ("kv", "nokv"),
            "ratio_vs_transformers": ("kv", "hf"), "ratio_vs_transformers_compiled": ("kv_compiled", "hf")}
    out = {name: min(r[a] / r[b] for r in results.values()) for name, (a, b) in keys.items()}
    print("RESULT " + " ".join(f"{k}={v:.2f}" for k, v in out.items()))

if __name__ == "__main__":
    main()
