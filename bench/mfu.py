"""Model FLOPs utilization of the real training loop on a GPU: a GPT-2-small-size (124M) config in bf16.

    python bench/mfu.py [--steps 60] [--micro-batch 32] [--no-compile]

It runs llmpipe.training.loop.train() itself (the loop the pretrain stage runs: AdamW fused, clipping, bf16
autocast, torch.compile, SDPA flash attention) on synthetic token shards written in the stage's format
(random ids: MFU does not depend on the text). The model is our default architecture (RMSNorm, RoPE,
SwiGLU, tied embeddings) at GPT-2 small's size: 12 layers, 12 heads, d_model 768, context 1024,
vocabulary 50,304.

How MFU is measured: FLOPs per token = 6N + 12 * L * d * T (N the parameters, counting the tied
embedding once, since it is the LM head's matmul; L layers, d width, T context), times the tokens
per second of the timed log intervals after the first (which holds the compile), over the device's
dense bf16 peak from llmpipe.training.device.PEAK_TFLOPS (the datasheet figure: 989 TFLOP/s for H100/H200).
Last line: RESULT mfu=<x> tokens_per_s=<x> params=<n> peak_tflops=<x>
"""

from __future__ import annotations

import _root  # noqa: F401  (first: takes bench/ off the import path, see bench/_root.py)

import argparse
import contextlib
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent

from llmpipe.config.pretrain import ModelParams, PretrainParams  # noqa: E402
from llmpipe.tokens.shards import ShardWriter, write_manifest  # noqa: E402
from llmpipe.training.device import peak_flops  # noqa: E402
from llmpipe.training.loop import train  # noqa: E402

VOCAB = 50304  # GPT-2's 50,257 padded to a multiple of 128


def synthetic_shards(out: Path, tokens: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    shards = []
    for split, n in (("train", tokens), ("val", tokens // 20)):
        w = ShardWriter(out, split, n, np.dtype(np.uint16))
        w.add(rng.integers(0, 50257, size=n, dtype=np.uint16))
        shards += [{**s, "split": split} for s in w.close()]
    write_manifest(out, {"format": "llm.c", "tokenizer_sha256": "synthetic", "eot_id": 50256,
                         "vocab_size": VOCAB, "dtype": "uint16", "shards": shards})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--micro-batch", type=int, default=32)
    ap.add_argument("--log-interval", type=int, default=10)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--sdpa", choices=["auto", "cudnn", "flash"], default="auto",
                    help="attention kernel: torch's choice, cuDNN's or FlashAttention-2's")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not torch.cuda.is_available():
        sys.exit("bench/mfu.py needs a CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    cfg = PretrainParams(
        model=ModelParams(n_layer=12, n_head=12, d_model=768, block_size=1024),
        micro_batch_size=args.micro_batch, max_steps=args.steps, warmup_steps=min(10, args.steps),
        lr=6e-4, device="cuda", precision="bf16", compile=not args.no_compile,
        log_interval=args.log_interval, eval_interval=10**9, checkpoint_interval=10**9)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        synthetic_shards(tmp / "tokens", tokens=max(args.steps * args.micro_batch * 1025, 10**6) * 2)
        from torch.nn.attention import SDPBackend, sdpa_kernel
        backends = {"cudnn": [SDPBackend.CUDNN_ATTENTION], "flash": [SDPBackend.FLASH_ATTENTION]}
        with sdpa_kernel(backends[args.sdpa]) if args.sdpa != "auto" else contextlib.nullcontext():
            result = train(cfg, tmp / "tokens", tmp / "ckpt", VOCAB, identity={"bench": "mfu"})
    rows = result.history["train"][1:] or result.history["train"]  # the first interval holds the compile
    tps = len(rows) / sum(1.0 / r["tokens_per_s"] for r in rows)  # intervals are equal in tokens
    peak = peak_flops(torch.device("cuda"))
    mfu = result.model.flops_per_token() * tps / peak if peak else float("nan")
    print(f"device {torch.cuda.get_device_name()}, {result.model.num_params() / 1e6:.1f}M parameters, "
          f"{result.model.flops_per_token() / 1e9:.3f} GFLOP/token, batch {args.micro_batch}x1024, sdpa {args.sdpa}, "
          f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    for r in result.history["train"]:
        print(f"  step {r['step']:>4}  loss {r['loss']:.4f}  {r['tokens_per_s']:>10,.0f} tok/s  mfu {r.get('mfu')}")
    print(f"RESULT mfu={mfu:.4f} tokens_per_s={tps:.0f} params={result.model.num_params()} "
          f"peak_tflops={peak / 1e12 if peak else float('nan'):.0f}")


if __name__ == "__main__":
    main()
