"""Stage 4, tokenizer: byte-level BPE trained with Hugging Face tokenizers on the training split only.

Pre-tokenization is GPT-2's regex (contractions, letters, numbers, other symbols, whitespace runs) over
the 256-symbol byte alphabet, so any UTF-8 text round-trips: decode(encode(x)) == x.
`<|endoftext|>` is special token 0 and separates documents.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow.parquet as pq
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from .. import layout
from ..config import Params, SplitParams, TokenizerParams
from ..io import InputError, atomic_path, iter_parquet_batches
from ..tokens import EOT, parquet_val_mask
from .base import StageResult

log = logging.getLogger(__name__)
SPECIAL_TOKENS = [EOT]  # fixed ids: <|endoftext|> = 0


def train_tokenizer(texts: Iterable[str], cfg: TokenizerParams, length: int | None = None) -> Tokenizer:
    """Core: train byte-level BPE from a stream of texts."""
    tok = Tokenizer(models.BPE())
    if cfg.nfc:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=length)
    return tok


def token_byte_lengths(tok: Tokenizer) -> np.ndarray:
    """UTF-8 bytes each token id stands for (0 for special tokens): the denominator of bits per byte.
    In byte-level BPE every character of a token's string is exactly one byte."""
    lengths = np.zeros(tok.get_vocab_size(), dtype=np.int64)
    special = set(SPECIAL_TOKENS)
    for piece, idx in tok.get_vocab().items():
        lengths[idx] = 0 if piece in special else len(piece)
    return lengths


def iter_split_texts(path: Path, split: SplitParams, want_val: bool, batch_rows: int = 64,
                     batch_bytes: int = 32_000_000) -> Iterator[str]:
    """Stream the texts of one split from a Parquet file without loading the corpus whole (reads of at
    most batch_rows documents and about batch_bytes, whatever the documents' sizes)."""
    try:
        pf = pq.ParquetFile(path)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found (did the dedup stage run?)") from None
    mask = parquet_val_mask(pf, split.val_fraction, split.seed)
    row = 0
    for batch in iter_parquet_batches(path, batch_rows, ["text"], max_bytes=batch_bytes):
        for text in batch.column("text").to_pylist():
            if bool(mask[row]) == want_val:
                yield text
            row += 1


def run(params: Params, root: Path, sink=None) -> StageResult:
    t0 = time.perf_counter()
    src = root / layout.DEDUP_DOCS
    n_train = 0

    def counted() -> Iterator[str]:
        nonlocal n_train
        for text in iter_split_texts(src, params.split, want_val=False):
            n_train += 1
            yield text

    tok = train_tokenizer(counted(), params.tokenizer)
    dest = root / layout.TOKENIZER
    with atomic_path(dest) as tmp:
        tok.save(str(tmp))
    stats = {"vocab_size": tok.get_vocab_size(), "train_docs": n_train, "eot_id": tok.token_to_id(EOT),
             "seconds": round(time.perf_counter() - t0, 3)}
    log.info("tokenizer: vocab %d trained on %d documents", stats["vocab_size"], n_train)
    return StageResult(stats, artifacts=[dest])
