"""Tokenizer speed and compression: our trained tokenizer against tiktoken's GPT-2 encoding, on the
demo corpus, with the same number of threads, in one run.

    python bench/tokenize.py [--threads 2] [--repeats 3]

Needs the pipeline's outputs up to the tokenizer stage (data/dedup, data/tokenizer; `dvc repro
tokenizer`). Nothing can be fetched from OpenAI's blob store here, so tiktoken's `gpt2` encoding is
built from the same ranks shipped as `whisper/assets/gpt2.tiktoken` in the source distribution of
openai-whisper on the package index (fetched once with pip, sha256-pinned), with tiktoken's GPT-2
pattern and `<|endoftext|>` = 50256; it is checked against GPT-2's known ids before use.

Measured, best of --repeats:
- encode throughput (MB of UTF-8 per second) of ours, through llmpipe.tokens.encoder (tiktoken's engine when
  it gives exactly tokenizer.json's ids, which it checks) and, for reference, through `tokenizers`;
  and of GPT-2 through tiktoken; all on all documents, batched, on --threads threads;
- the whole tokenize stage core, Parquet text in to token shards and manifest on disk (tokens/s);
- bytes per token of both on the held-out (val) split.
Last line: RESULT throughput_ratio_vs_tiktoken=<x> shard_tokens_per_s=<x> bytes_per_token=<x> gpt2_bytes_per_token=<x>
"""

from __future__ import annotations

import _root  # noqa: F401  (first: takes bench/ off the import path, see bench/_root.py)

import argparse  # noqa: E402
import sys  # noqa: E402
import logging  # noqa: E402
import tarfile  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

import pyarrow.parquet as pq  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

from llmpipe.stages.registry import output  # noqa: E402
from llmpipe.stages.params import load_params  # noqa: E402
from llmpipe.tokens.encoder import GPT2_PATTERN, load_encoder  # noqa: E402
from llmpipe.data.sources import cache_dir  # noqa: E402
from llmpipe.data.sources.demo import fetch_sdist  # noqa: E402
from llmpipe.stages.tokenize import tokenize_corpus  # noqa: E402
from llmpipe.tokens.split import iter_split_texts  # noqa: E402

WHISPER = "openai_whisper==20250625"
WHISPER_SHA256 = "37a91a3921809d9f44748ffc73c0a55c9f366c85a3ef5c2ae0cc09540432eb96"
GPT2_RANKS = "whisper/assets/gpt2.tiktoken"


def gpt2_encoding():
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    ranks_file = cache_dir() / "gpt2.tiktoken"
    if not ranks_file.exists():
        sdist = fetch_sdist(WHISPER, cache_dir(), WHISPER_SHA256)
        with tarfile.open(sdist) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith(GPT2_RANKS))
            ranks_file.write_bytes(tar.extractfile(member).read())
    enc = tiktoken.Encoding("gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=load_tiktoken_bpe(str(ranks_file)),
                            special_tokens={"<|endoftext|>": 50256})
    assert enc.encode_ordinary("Hello world") == [15496, 995] and enc.n_vocab == 50257, "not GPT-2's ranks"
    return enc


def best_time(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    docs, tok_path = ROOT / output("dedup.docs"), ROOT / output("tokenizer.tokenizer")
    assignments = ROOT / output("split.assignments")
    if not (docs.exists() and tok_path.exists() and assignments.exists()):
        sys.exit(f"needs {docs}, {assignments} and {tok_path}; run `dvc repro tokenizer` first")
    params = load_params(ROOT / "params.yaml")
    texts = pq.read_table(docs, columns=["text"]).column("text").to_pylist()
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    gpt2 = gpt2_encoding()
    ours = load_encoder(tok_path, args.threads, check_texts=texts[:8])
    hf = Tokenizer.from_file(str(tok_path))
    hf.encode_special_tokens = True

    t_ours, ours_ids = best_time(lambda: ours.encode_arrays(texts), args.repeats)  # the stage's path
    t_gpt2, _ = best_time(lambda: gpt2.encode_ordinary_batch(texts, num_threads=args.threads), args.repeats)
    # the tokenizers engine runs on RAYON_NUM_THREADS threads (all cores unless set)
    t_hf, hf_enc = best_time(lambda: hf.encode_batch_fast(texts, add_special_tokens=False), 1)
    identical = sum(a.tolist() == b.ids for a, b in zip(ours_ids, hf_enc))

    cfg = params.tokenize.model_copy(update={"workers": args.threads})
    def stage() -> int:
        with tempfile.TemporaryDirectory() as tmp:
            stats = tokenize_corpus(docs, tok_path, Path(tmp), assignments, cfg)
        return stats["train_tokens"] + stats["val_tokens"]
    t_stage, n_tokens = best_time(stage, args.repeats)

    val = list(iter_split_texts(docs, assignments, want_val=True))
    val_bytes = sum(len(t.encode("utf-8")) for t in val)
    bpt = val_bytes / sum(len(ids) for ids in ours.encode_arrays(val))
    gpt2_bpt = val_bytes / sum(len(ids) for ids in gpt2.encode_ordinary_batch(val, num_threads=args.threads))

    print(f"corpus: {len(texts)} documents, {mb:.2f} MB; val split {len(val)} documents, {val_bytes / 1e6:.2f} MB; "
          f"{args.threads} threads; our engine: {ours.engine} (identical to tokenizers on {identical}/{len(texts)} docs)")
    print(f"  ours (vocab {hf.get_vocab_size()}, {ours.engine}): {mb / t_ours:7.2f} MB/s")
    print(f"  ours through tokenizers:          {mb / t_hf:7.2f} MB/s")
    print(f"  gpt2 through tiktoken:            {mb / t_gpt2:7.2f} MB/s")
    print(f"  tokenize stage core: {n_tokens} tokens in {t_stage:.2f} s = {n_tokens / t_stage / 1e6:.2f} M tokens/s")
    print(f"  val bytes per token: ours {bpt:.3f}, gpt2 {gpt2_bpt:.3f}")
    print(f"RESULT throughput_ratio_vs_tiktoken={t_gpt2 / t_ours:.3f} shard_tokens_per_s={n_tokens / t_stage:.0f} "
          f"bytes_per_token={bpt:.4f} gpt2_bytes_per_token={gpt2_bpt:.4f}")


if __name__ == "__main__":
    main()
