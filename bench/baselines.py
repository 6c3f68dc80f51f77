"""The evaluate stage's baselines on a repository's token shards, per n-gram order, with no model:
bits per byte of the Kneser-Ney n-gram (each order), the add-one unigram and xz -9, on the val
split's targets (the evaluate stage's: every token but each shard's first), and seconds.

    python bench/baselines.py [--root .] [--orders 1 2 3 4 5] [--max-tokens N]

Needs data/tokens and data/tokenizer (`dvc repro tokenize`).
Last line: RESULT best_order=<k> ngram_bpb=<x> unigram_bpb=<x> xz_bpb=<x> xz_alone_bpb=<x>
"""

from __future__ import annotations

import _root  # noqa: F401  (first: takes bench/ off the import path, see bench/_root.py)

import argparse
import time
from pathlib import Path

from tokenizers import Tokenizer

from llmpipe.config.evaluate import BaselineParams
from llmpipe.evals.baselines import baseline_metrics
from llmpipe.tokens.bpe import token_byte_lengths, token_bytes
from llmpipe.tokens.loader import TokenData


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, default=Path("."))
    ap.add_argument("--orders", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    ap.add_argument("--max-tokens", type=int, default=None, help="score the first N val targets")
    args = ap.parse_args()
    tok_path = args.root / "data" / "tokenizer" / "tokenizer.json"
    tok = Tokenizer.from_file(str(tok_path))
    val = TokenData(args.root / "data" / "tokens", "val", tokenizer_path=tok_path)
    train = TokenData(args.root / "data" / "tokens", "train")
    stream, scored = val.scored(args.max_tokens)
    lengths, pieces = token_byte_lengths(tok), token_bytes(tok)
    print(f"train {train.n_tokens} tokens, val {int(scored.sum())} targets, {int(lengths[stream[scored]].sum())} bytes")
    best = None
    for order in args.orders:
        cfg = BaselineParams(ngram_order=order, compressor="none")
        t0 = time.perf_counter()
        m = baseline_metrics(train.arrays, stream, scored, lengths, pieces, val.manifest.vocab_size,
                             val.manifest.eot_id, cfg)
        print(f"order {order}: {m['ngram_bits_per_byte']:.4f} bpb  ({m['ngram_seconds']:.2f} s fit + score,"
              f" {time.perf_counter() - t0:.2f} s in all)", flush=True)
        if best is None or m["ngram_bits_per_byte"] < best[1]:
            best = (order, m["ngram_bits_per_byte"])
    m = baseline_metrics(train.arrays, stream, scored, lengths, pieces, val.manifest.vocab_size,
                         val.manifest.eot_id, BaselineParams(ngram_order=1))
    print(f"unigram (add-one): {m['unigram_bits_per_byte']:.4f} bpb ({m['unigram_seconds']:.2f} s)")
    print(f"xz -9: {m['compressor_bits_per_byte']:.4f} bpb after {m['compressor_context_bytes']} bytes of train text,"
          f" {m['compressor_alone_bits_per_byte']:.4f} alone ({m['compressor_seconds']:.2f} s)")
    print(f"RESULT best_order={best[0]} ngram_bpb={best[1]:.4f} unigram_bpb={m['unigram_bits_per_byte']:.4f} "
          f"xz_bpb={m['compressor_bits_per_byte']:.4f} xz_alone_bpb={m['compressor_alone_bits_per_byte']:.4f}")


if __name__ == "__main__":
    main()
