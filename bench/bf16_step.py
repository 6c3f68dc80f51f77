"""Where bf16 autocast's gain goes in one CPU training step: ours against the nanoGPT-style reference
of bench/train.py, fp32 and bf16, and ours with the plain (unfused) loss under bf16 and in fp32, in one run.

    python bench/bf16_step.py [--threads 1] [--rounds 4] [--batch 16] [--vocab 4096] [--fp32-only]

Random tokens at the default shape (4 x 256, context 256, batch 16, vocabulary 4,096 or --vocab); each variant's
forward+backward and clip+AdamW are timed separately, rounds interleaved over the variants (load drift
spreads evenly), medians reported. Needs no pipeline outputs.
Last line: RESULT ours_bf16_gain=<x> reference_bf16_gain=<x> ratio_vs_reference_fp32=<x> plain_loss_ratio=<x>
fused_loss_gain_fp32=<x> (ours fp32 tokens/s with the fused, chunked loss / with the plain loss; the plain
one is forced here by patching GPT.fused_loss for that variant's steps alone)
"""

from __future__ import annotations

import _root  # noqa: F401  (first: takes bench/ off the import path, see bench/_root.py)

import argparse
import statistics
import time

import torch

from bench.train import RefConfig, RefGPT
from llmpipe.config.pretrain import PretrainParams
from llmpipe.model.gpt import GPT, GPTConfig
from llmpipe.training.optim import make_optimizer

V, L, H, D, T, B = 4096, 4, 4, 256, 256, 16
FUSED_LOSS = GPT.__dict__["fused_loss"]  # the classmethod itself, put back after a plain-loss step


def variant(kind: str, bf16: bool, fused_bf16: bool, x, y, plain_fp32: bool = False, vocab: int = V):
    torch.manual_seed(0)
    model = RefGPT(RefConfig(vocab, L, H, D, T)) if kind == "ref" else \
        GPT(GPTConfig(vocab_size=vocab, n_layer=L, n_head=H, d_model=D, block_size=T))
    opt = make_optimizer(model, PretrainParams(), torch.device("cpu"))

    def step() -> tuple[float, float]:
        GPT.FUSED_BF16 = fused_bf16
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if plain_fp32:  # the (tokens x vocabulary) logits in full, as on a GPU
                GPT.fused_loss = classmethod(lambda cls, _x: False)
            try:
                _, loss = model(x, y)
            finally:
                GPT.fused_loss = FUSED_LOSS
        loss.backward()
        t1 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return t1 - t0, time.perf_counter() - t1
    step()  # warm-up
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--fp32-only", action="store_true",
                    help="only the fp32 variants (a CPU without bf16 units emulates bf16 ~17x slower: nothing to learn)")
    ap.add_argument("--vocab", type=int, default=V, help=f"vocabulary size (default {V}; the demo tokenizer's: 8192)")
    ap.add_argument("--batch", type=int, default=B, help=f"rows of {T} tokens a step (default {B}; 1: a smoke run)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x, y = torch.randint(0, args.vocab, (args.batch, T)), torch.randint(0, args.vocab, (args.batch, T))
    specs = {"reference fp32": ("ref", False, True), "reference bf16": ("ref", True, True),
             "ours fp32": ("ours", False, True), "ours fp32 plain loss": ("ours", False, True, True),
             "ours bf16 plain loss": ("ours", True, False), "ours bf16": ("ours", True, True)}
    vs = {k: variant(*spec[:3], x, y, *spec[3:], vocab=args.vocab) for k, spec in specs.items()
          if not (args.fp32_only and "bf16" in k)}
    times: dict[str, list] = {k: [] for k in vs}
    for _ in range(args.rounds):
        for k, f in vs.items():
            times[k].append(f())
    tps = {}
    for k, t in times.items():
        fb, o = statistics.median(a for a, _ in t), statistics.median(b for _, b in t)
        tps[k] = args.batch * T / (fb + o)
        print(f"{k:22} forward+backward {fb * 1000:6.0f} ms  clip+AdamW {o * 1000:5.0f} ms  {tps[k]:6.0f} tokens/s")
    GPT.FUSED_BF16 = True
    if args.fp32_only:
        print(f"RESULT ours_fp32_ratio_vs_reference_fp32={tps['ours fp32'] / tps['reference fp32']:.3f} "
              f"fused_loss_gain_fp32={tps['ours fp32'] / tps['ours fp32 plain loss']:.3f}")
        return
    print(f"RESULT ours_bf16_gain={tps['ours bf16'] / tps['ours fp32']:.3f} "
          f"reference_bf16_gain={tps['reference bf16'] / tps['reference fp32']:.3f} "
          f"ratio_vs_reference_fp32={tps['ours bf16'] / tps['reference fp32']:.3f} "
          f"plain_loss_ratio={tps['ours bf16 plain loss'] / tps['reference fp32']:.3f} "
          f"fused_loss_gain_fp32={tps['ours fp32'] / tps['ours fp32 plain loss']:.3f}")


if __name__ == "__main__":
    main()
