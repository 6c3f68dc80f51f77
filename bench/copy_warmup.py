"""A copy warm-start before pretraining (issues 26 and 27): can a short phase of synthetic copy rows give
the small model the induction heads that its corpus steps do not (docs/assistant.md)?

Phase 1 (`--copy-steps`): rows that show a span of uniform random token ids exactly twice, the loss on
the repeat only, AdamW at a constant rate; the spans' ids come from the first `--copy-vocab` ids after
the special tokens for the first `--copy-vocab-steps` steps (a small alphabet), then from all ids.
Phase 2: params.yaml's pretraining recipe (no budget) on the demo's token shards for `--steps` steps,
starting from phase 1's weights. `--baseline-steps N` first trains the recipe alone for N steps from the
same seed's initial weights, the reference (`--copy-steps 0` alone gives it too). `--repeat-share S`
runs phase 2 with `pretrain.repeat_share` S (rows that show their first half twice; the reference
without), `--tie` ties the embeddings in both arms (docs/assistant.md). `--periodic-share S` swaps that share
of phase 2's rows for periodic rows: a sequence of P tokens (P drawn from `--periodic-min` to `--periodic-max`
per row, so the repeats sit at varied distances and only copying by content predicts them) repeated to fill
the row, its tokens drawn uniformly from the `--periodic-alphabet` most frequent train tokens (the loop's
sequence-length warm-up cuts rows into pieces of 64 and 128 tokens at first, so there longer periods repeat
inside no piece). The copy probe (llmpipe.evals.copying, as `evaluate` runs it) is taken after each phase, at
half the context; the varied-distance probe after phase 2 and the reference; bits per byte on the val
split's first `--eval-bytes` bytes at the end.

    python bench/copy_warmup.py --copy-steps 500 --copy-vocab 256 --copy-vocab-steps 250 --steps 945
                                --baseline-steps 1113 --precision bf16 --seed 1

Needs data/tokens and data/tokenizer (`dvc repro tokenize`).
Last line: RESULT bpb=<x> baseline_bpb=<x> delta_bpb=<x> baseline_copy_gain_nats=<x> copy_gain_nats=<after phase 2> copy_repeat_top1=<x> copy_first_top1=<x>
    copy_gain_nats_warm=<after phase 1> copy_seconds=<phase 1> train_seconds=<phase 2> baseline_seconds=<x> steps=<phase 2>
    copy_steps=<phase 1> baseline_steps=<n> repeat_share=<x> copy_varied_repeat_top1=<x> copy_varied_first_top1=<x>
    baseline_copy_varied_repeat_top1=<x> baseline_copy_varied_first_top1=<x> periodic_share=<x> periodic_rows=<a micro-batch's swapped rows>
"""

from __future__ import annotations

import _root  # first: takes bench/ off the import path, see bench/_root.py

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent

from llmpipe.config.pretrain import PretrainParams  # noqa: E402
from llmpipe.config.sections import load_sections  # noqa: E402
from llmpipe.evals.copying import copy_probe, varied_copy_probe  # noqa: E402
from llmpipe.model.gpt import GPT, GPTConfig  # noqa: E402
from llmpipe.model.weights import save_model  # noqa: E402
from llmpipe.stages.registry import output  # noqa: E402
from llmpipe.tokens.loader import TokenData  # noqa: E402
from llmpipe.tokens.shards import load_manifest  # noqa: E402
from llmpipe.training import loop  # noqa: E402
from llmpipe.training.budget import scaled_warmup  # noqa: E402
from llmpipe.training.evaluate import evaluate_model  # noqa: E402

FIRST_ID = 10  # past the special tokens (ids 0-4) and a margin


def copy_phase(model: GPT, args, vocab: int, dtype: torch.dtype) -> float:
    """Phase 1 in place on `model`; its seconds."""
    rng = np.random.default_rng(1000 + args.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.copy_lr, betas=(0.9, 0.95), weight_decay=0.0)
    span_len, t0 = args.copy_len, time.perf_counter()
    model.train()
    for step in range(1, args.copy_steps + 1):
        small = args.copy_vocab and step <= args.copy_vocab_steps
        span = rng.integers(FIRST_ID, FIRST_ID + args.copy_vocab if small else vocab, size=(args.copy_rows, span_len))
        row = torch.from_numpy(np.concatenate([span, span], axis=1))
        x, y = row[:, :-1], row[:, 1:].clone()
        # target j is row[j + 1]; the repeat's first token (j = span_len - 1) follows nothing that predicts it
        # but its place in the row, so, as in the copy probe, the loss takes the span_len - 1 after it
        y[:, :span_len] = -100
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            logits, _ = model(x)
        loss = F.cross_entropy(logits.float().reshape(-1, vocab), y.reshape(-1), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == args.copy_steps:
            print(f"copy step {step}: loss on the repeat {loss.item():.3f} nats "
                  f"({'small alphabet' if small else 'all ids'}, {time.perf_counter() - t0:.0f} s)", flush=True)
    return time.perf_counter() - t0


def recipe(run: PretrainParams, token_dir: Path, vocab: int, state: dict | None, periodic=None) -> tuple[GPT, float]:
    """The params' recipe for run.max_steps from `state` (None: the loop's own initial weights); the
    model and its seconds. `periodic`: a patch of the run's batches (_root.swapped_rows)."""
    return _root.train_from_state(run, token_dir, vocab, state, "copy_warmup", periodic)


def checked_args(ap: argparse.ArgumentParser) -> argparse.Namespace:
    args = ap.parse_args()
    for name in ("steps", "copy_len", "copy_rows", "block", "threads", "eval_bytes", "probe_spans", "d_model"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} {getattr(args, name)}: takes at least 1")
    for name in ("copy_steps", "copy_vocab_steps", "baseline_steps"):
        if getattr(args, name) < 0:
            ap.error(f"--{name.replace('_', '-')} {getattr(args, name)}: takes at least 0")
    if not 0.0 <= args.periodic_share <= 1.0:
        ap.error(f"--periodic-share {args.periodic_share}: takes a share of the rows, 0 to 1")
    if args.periodic_share and (not 2 <= args.periodic_min <= args.periodic_max or 2 * args.periodic_max > args.block + 1):
        ap.error(f"--periodic-min {args.periodic_min} / --periodic-max {args.periodic_max}: take 2 <= min <= max, "
                 f"and a row of --block {args.block} must hold two periods of the longest")
    if args.periodic_share and args.periodic_alphabet < 2:
        ap.error(f"--periodic-alphabet {args.periodic_alphabet}: takes at least 2 ids")
    if not 0.0 <= args.repeat_share <= 1.0:
        ap.error(f"--repeat-share {args.repeat_share}: takes a share of the rows, 0 to 1")
    if args.copy_lr <= 0:
        ap.error(f"--copy-lr {args.copy_lr}: takes a positive rate")
    if args.copy_vocab == 1 or args.copy_vocab < 0:
        ap.error(f"--copy-vocab {args.copy_vocab}: takes 0 (all ids) or at least 2 ids")
    if args.copy_steps and args.copy_vocab and args.copy_vocab_steps > args.copy_steps:
        ap.error(f"--copy-vocab-steps {args.copy_vocab_steps}: more than --copy-steps {args.copy_steps}")
    if 2 * args.copy_len - 1 > args.block:
        ap.error(f"--copy-len {args.copy_len}: a span shown twice needs {2 * args.copy_len - 1} positions, "
                 f"--block is {args.block}")
    if args.d_model % 32:
        ap.error(f"--d-model {args.d_model}: takes a multiple of 32 (heads of 32 channels)")
    return args


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copy-steps", type=int, default=500, help="phase 1's steps (0: the recipe alone)")
    ap.add_argument("--copy-len", type=int, default=32, help="a span's tokens (rows of twice that)")
    ap.add_argument("--copy-rows", type=int, default=8)
    ap.add_argument("--copy-lr", type=float, default=1e-3)
    ap.add_argument("--copy-vocab", type=int, default=256, help="the small alphabet's ids (0: all ids throughout)")
    ap.add_argument("--copy-vocab-steps", type=int, default=250, help="phase 1's first steps, on the small alphabet")
    ap.add_argument("--steps", type=int, default=945, help="phase 2's steps of the recipe")
    ap.add_argument("--repeat-share", type=float, default=0.0,
                    help="phase 2's pretrain.repeat_share: rows showing their first half twice (the recipe alone: 0)")
    ap.add_argument("--periodic-share", type=float, default=0.0,
                    help="phase 2's share of each micro-batch's rows swapped for periodic rows (repeats at varied "
                         "distances; 0: none), rounded to whole rows: with 8 rows, below 1/16 swaps none")
    ap.add_argument("--periodic-alphabet", type=int, default=512, help="a periodic row's ids: the most frequent train tokens")
    ap.add_argument("--periodic-min", type=int, default=8, help="the shortest period, tokens")
    ap.add_argument("--periodic-max", type=int, default=96, help="the longest period, tokens")
    ap.add_argument("--baseline-steps", type=int, default=0,
                    help="first train the recipe alone this many steps, the reference (0: none)")
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=128, help="heads of 32 channels")
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--tie", action="store_true",
                    help="tie the input embedding to the output layer in both arms (params.yaml: untied)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--eval-bytes", type=int, default=524288)
    ap.add_argument("--probe-spans", type=int, default=32)
    ap.add_argument("--save", type=Path, default=None,
                    help="save the warm-started model here (safetensors and config.json), e.g. to finetune it")
    args = checked_args(ap)
    logging.basicConfig(level=logging.WARNING)
    token_dir = ROOT / output("tokenize.tokens")
    if not (token_dir / "manifest.json").exists():
        sys.exit(f"{token_dir}: no token shards; run `dvc repro tokenize` first")
    vocab = load_manifest(token_dir).vocab_size
    if args.copy_steps and args.copy_vocab and FIRST_ID + args.copy_vocab > vocab:
        ap.error(f"--copy-vocab {args.copy_vocab}: the vocabulary has {vocab} ids, at most {vocab - FIRST_ID} fit")
    torch.set_num_threads(args.threads)
    cfg = load_sections(ROOT / "params.yaml", ["pretrain"]).pretrain.model_dump(mode="json")
    cfg.update(budget=None, grad_accum_steps=1, batch_tokens=None, device="cpu", precision=args.precision,
               threads=args.threads, log_interval=10**6, eval_interval=10**9, checkpoint_interval=10**9,
               eval_batches=1, seed=args.seed)
    cfg["model"].update(n_layer=args.n_layer, d_model=args.d_model, n_head=args.d_model // 32,
                        n_kv_head=None, block_size=args.block)
    if args.tie:  # a copy head's output map is then the identity on the shared embedding (docs/assistant.md)
        cfg["model"].update(tie_embeddings=True, zero_init_head=False)

    def recipe_for(steps: int) -> PretrainParams:
        return PretrainParams.model_validate({**cfg, "max_steps": steps,
                                              "warmup_steps": scaled_warmup(cfg["warmup_steps"], steps)})

    run = recipe_for(args.steps)
    dtype = loop.resolve_dtype(run, torch.device("cpu"))
    val = TokenData(token_dir, "val")
    stream, mask = val.scored()
    from tokenizers import Tokenizer

    from llmpipe.tokens.bpe import token_byte_lengths
    table = token_byte_lengths(Tokenizer.from_file(str(ROOT / output("tokenizer.tokenizer"))))
    reached = np.flatnonzero(np.cumsum(table[stream[mask]]) >= args.eval_bytes)
    max_tokens = int(reached[0]) + 1 if len(reached) else int(mask.sum())
    nan = float("nan")

    def scored(model: GPT) -> tuple[float, dict]:
        return (evaluate_model(model, val, table, batch_size=8, max_tokens=max_tokens)["bits_per_byte"],
                {**copy_probe(model, stream, args.probe_spans), **varied_copy_probe(model, stream, args.probe_spans)})

    base_bpb, base_probe, base_s = nan, {}, 0.0
    if args.baseline_steps:
        model, base_s = recipe(recipe_for(args.baseline_steps), token_dir, vocab, None)
        base_bpb, base_probe = scored(model)
        print(f"the recipe alone, {args.baseline_steps} steps: {base_bpb:.4f} bpb, copy probe gap "
              f"{base_probe.get('copy_gain_nats', nan):.3f} nats ({base_s:.0f} s)", flush=True)
    torch.manual_seed(args.seed)  # the loop's own seeding: --copy-steps 0 starts where the recipe does
    warm = GPT(GPTConfig(vocab_size=vocab, **run.model.model_dump()))
    copy_s = copy_phase(warm, args, vocab, dtype) if args.copy_steps else 0.0
    probe_warm = copy_probe(warm, stream, args.probe_spans) if args.copy_steps else {}
    if probe_warm:
        print(f"after phase 1: copy probe gap {probe_warm['copy_gain_nats']:.3f} nats, top-1 "
              f"{probe_warm['copy_repeat_top1']:.3f} on the repeat against {probe_warm['copy_first_top1']:.3f}",
              flush=True)
    repeating = PretrainParams.model_validate({**run.model_dump(mode="json"), "repeat_share": args.repeat_share})
    periodic = None
    if args.periodic_share:
        try:  # never the special tokens (ids below FIRST_ID)
            alphabet = _root.commonest_ids(token_dir, vocab, args.periodic_alphabet, range(FIRST_ID))
        except ValueError as e:
            ap.error(f"--periodic-alphabet {args.periodic_alphabet}: {e}")
        periodic = _root.swapped_rows({"periodic": args.periodic_share}, alphabet, args.periodic_min, args.periodic_max)
    model, train_s = recipe(repeating, token_dir, vocab,
                            {k: v.detach().clone() for k, v in warm.state_dict().items()}, periodic)
    bpb, probe = scored(model)
    if args.save:
        save_model(model, args.save)
    print(f"RESULT bpb={bpb:.4f} baseline_bpb={base_bpb:.4f} delta_bpb={bpb - base_bpb:+.4f} "
          f"baseline_copy_gain_nats={base_probe.get('copy_gain_nats', nan):.3f} "
          f"copy_gain_nats={probe.get('copy_gain_nats', nan):.3f} "
          f"copy_repeat_top1={probe.get('copy_repeat_top1', nan):.3f} "
          f"copy_first_top1={probe.get('copy_first_top1', nan):.3f} "
          f"copy_gain_nats_warm={probe_warm.get('copy_gain_nats', nan):.3f} copy_seconds={copy_s:.1f} "
          f"train_seconds={train_s:.1f} baseline_seconds={base_s:.1f} steps={args.steps} "
          f"copy_steps={args.copy_steps} baseline_steps={args.baseline_steps} repeat_share={args.repeat_share} "
          f"copy_varied_repeat_top1={probe.get('copy_varied_repeat_top1', nan):.3f} "
          f"copy_varied_first_top1={probe.get('copy_varied_first_top1', nan):.3f} "
          f"baseline_copy_varied_repeat_top1={base_probe.get('copy_varied_repeat_top1', nan):.3f} "
          f"baseline_copy_varied_first_top1={base_probe.get('copy_varied_first_top1', nan):.3f} "
          f"periodic_share={args.periodic_share} "
          f"periodic_rows={int(args.periodic_share * run.micro_batch_size + 0.5) if args.periodic_share else 0}", flush=True)


if __name__ == "__main__":
    main()
