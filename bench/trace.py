"""Tracing text into the training data (issue 28): the suffix-array index and the tracer on the demo
corpus, measured side by side with a numpy prefix-doubling sort as the reference builder.

    python bench/trace.py [--root .] [--replies 20] [--scale 10]

Needs the pipeline's outputs up to tokenize (`dvc repro tokenize`). Measured, in one run:
- index build: pydivsufsort (what the trace-index stage uses) against numpy prefix doubling, on the
  train split's tokens; both arrays must be equal;
- trace time of 256-token replies (median over --replies texts: training passages, val passages, and
  passages that splice training text into val text);
- planted recall: spans of 16-64 tokens cut from training documents and planted in val text; each
  must lie inside one traced span, edges aside (re-encoding may change the token at each edge);
- false spans: val text with its words shuffled must give no span at all;
- the index's size and build time per GB of tokens on a corpus --scale times the demo's (the train
  tokens repeated with seeded edits: 2% of tokens replaced, documents shuffled);
- the model card (llmpipe card) build time and whether two builds are byte-identical, when a model exists.
Last line: RESULT trace_ms_per_reply=... planted_recall=... false_spans=... index_build_s=... index_mb=...
card_s=... card_identical=...
"""

from __future__ import annotations

import _root  # noqa: F401  (first: takes bench/ off the import path, see bench/_root.py)

import argparse  # noqa: E402
import random  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from llmpipe.stages.trace_index import build_trace_index  # noqa: E402
from llmpipe.tokens.loader import TokenData  # noqa: E402
from llmpipe.tokens.suffix import build_suffix_array, write_index  # noqa: E402
from llmpipe.tokens.trace import Tracer  # noqa: E402


def prefix_doubling(tokens: np.ndarray) -> np.ndarray:
    """The reference: a suffix array by sorting on (rank[i], rank[i+k]) pairs, k doubling until all
    ranks differ (Manber-Myers with numpy sorts)."""
    n = len(tokens)
    rank = tokens.astype(np.int64)
    k = 1
    while True:
        second = np.full(n, -1, dtype=np.int64)
        second[: n - k] = rank[k:]
        order = np.lexsort((second, rank))
        key_r, key_s = rank[order], second[order]
        new = np.empty(n, dtype=np.int64)
        new[order] = np.concatenate([[0], np.cumsum((key_r[1:] != key_r[:-1]) | (key_s[1:] != key_s[:-1]))])
        rank = new
        if rank.max() == n - 1:
            return order
        k *= 2


def scaled_tokens(tokens: np.ndarray, starts: np.ndarray, scale: int, vocab: int) -> np.ndarray:
    """`scale` copies of the train tokens, each with its documents shuffled and 2% of tokens replaced."""
    rng = np.random.default_rng(0)
    docs = np.split(tokens, starts[1:])
    out = []
    for _ in range(scale):
        for i in rng.permutation(len(docs)):
            d = docs[i].copy()
            hit = rng.random(len(d)) < 0.02
            d[hit] = rng.integers(1, vocab, int(hit.sum()))
            out.append(d)
    return np.concatenate(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("."), help="a workspace with data/tokens and data/tokenizer")
    ap.add_argument("--replies", type=int, default=20, help="256-token texts to trace for the timing")
    ap.add_argument("--planted", type=int, default=50, help="spans planted for the recall")
    ap.add_argument("--scale", type=int, default=10, help="the larger corpus, in demo corpora (0: skip)")
    ap.add_argument("--min-tokens", type=int, default=8)
    args = ap.parse_args()
    root = args.root.resolve()
    token_dir, tok_path = root / "data/tokens", root / "data/tokenizer/tokenizer.json"
    train = TokenData(token_dir, "train", tokenizer_path=tok_path)
    tokens = np.concatenate([np.asarray(a) for a in train.arrays])

    t0 = time.perf_counter()
    sa = build_suffix_array(tokens)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = prefix_doubling(tokens)
    ref_s = time.perf_counter() - t0
    assert np.array_equal(sa, ref), "the two suffix arrays differ"
    print(f"suffix array of {len(tokens):,} tokens: pydivsufsort {build_s:.2f} s, numpy prefix doubling "
          f"{ref_s:.2f} s (x{ref_s / build_s:.1f}); equal")

    with tempfile.TemporaryDirectory() as tmp:
        index_dir = Path(tmp) / "index"
        index_dir.mkdir()
        t0 = time.perf_counter()
        build_trace_index(token_dir, tok_path, index_dir)
        index_s = time.perf_counter() - t0
        index_mb = sum(p.stat().st_size for p in index_dir.iterdir()) / 1e6
        tracer = Tracer(index_dir, tok_path, min_tokens=args.min_tokens)
        tok = tracer.tokenizer
        val = np.concatenate([np.asarray(a) for a in TokenData(token_dir, "val", tokenizer_path=tok_path).arrays])
        rng = np.random.default_rng(1)

        eot = tok.token_to_id("<|endoftext|>")

        def piece(arr, n, one_document=False):
            """n tokens of arr as text; with one_document, from inside one document (a stretch across an
            end-of-text decodes to two documents' texts run together, which no document holds)."""
            while True:
                window = np.asarray(arr[(start := int(rng.integers(0, len(arr) - n))) : start + n], dtype=np.int64)
                if not one_document or eot not in window:
                    return tok.decode(window.tolist())

        texts = []
        for i in range(args.replies):
            kind = i % 3
            texts.append(piece(tokens, 256) if kind == 0 else piece(val, 256) if kind == 1 else
                         piece(val, 100) + piece(tokens, 56) + piece(val, 100))
        times, cpu = [], []  # wall and CPU time: on a loaded machine the two part ways
        for text in texts:
            t0, c0 = time.perf_counter(), time.process_time()
            tracer.trace(text)
            times.append((time.perf_counter() - t0) * 1000)
            cpu.append((time.process_time() - c0) * 1000)
        trace_ms, trace_cpu_ms = float(np.median(times)), float(np.median(cpu))

        found = 0
        for _ in range(args.planted):
            n = int(rng.integers(16, 65))
            planted = piece(tokens, n, one_document=True).strip()
            text = piece(val, 60) + " " + planted + " " + piece(val, 60)
            at = text.index(planted)
            edge = 12  # characters: about one token at each end may re-encode differently
            spans = tracer.trace(text)["spans"]
            found += any(s["start"] <= at + edge and s["end"] >= at + len(planted) - edge for s in spans)
        recall = found / args.planted

        false_spans = 0
        shuffler = random.Random(2)
        for _ in range(args.replies):
            words = piece(val, 256).split()
            shuffler.shuffle(words)
            false_spans += len(tracer.trace(" ".join(words))["spans"])

    big_note, per_gb = "", ""
    if args.scale:
        starts = np.concatenate([s + off for s, off in zip(train.doc_starts(),
                                                           np.concatenate([[0], np.cumsum(train.lengths)[:-1]]))])
        big = scaled_tokens(tokens, starts, args.scale, train.manifest.vocab_size)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            write_index(Path(tmp), big)
            big_s = time.perf_counter() - t0
            big_mb = sum(p.stat().st_size for p in Path(tmp).iterdir()) / 1e6
        gb = len(big) * big.dtype.itemsize / 1e9
        per_gb = f" big_tokens={len(big)} big_build_s={big_s:.1f} s_per_gb_tokens={big_s / gb:.0f} " \
                 f"mb_per_gb_tokens={big_mb / gb:.0f}"
        big_note = (f"{args.scale}x corpus: {len(big):,} tokens ({gb * 1000:.0f} MB of tokens): index built in "
                    f"{big_s:.1f} s, {big_mb:.0f} MB -> {big_s / gb:.0f} s and {big_mb / gb / 1000:.1f} GB per GB of tokens")
        print(big_note)

    card_s, identical = "na", "na"
    if (root / "data/model/model.safetensors").exists():
        try:
            from llmpipe.ops.card import build_card
        except ImportError:
            build_card = None
        if build_card is not None:
            t0 = time.perf_counter()
            first = build_card(root, root / "params.yaml")
            card_s = f"{time.perf_counter() - t0:.2f}"
            identical = int(first == build_card(root, root / "params.yaml"))
    print(f"trace: median {trace_ms:.1f} ms ({trace_cpu_ms:.1f} ms of CPU) per 256-token text ({len(texts)} texts); planted recall "
          f"{recall:.3f} ({found}/{args.planted}); false spans on shuffled val text: {false_spans}; "
          f"index {index_s:.2f} s, {index_mb:.1f} MB")
    print(f"RESULT trace_ms_per_reply={trace_ms:.1f} planted_recall={recall:.3f} false_spans={false_spans} "
          f"index_build_s={index_s:.2f} index_mb={index_mb:.1f} card_s={card_s} card_identical={identical}"
          f" trace_cpu_ms_per_reply={trace_cpu_ms:.1f} reference_build_s={ref_s:.2f}{per_gb}")


if __name__ == "__main__":
    main()
