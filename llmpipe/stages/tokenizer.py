"""Stage 4, tokenizer: byte-level BPE trained with Hugging Face tokenizers on the training split only.

Pre-tokenization is GPT-2's regex (contractions, letters, numbers, other symbols, whitespace runs) over
the 256-symbol byte alphabet, so any UTF-8 text round-trips: decode(encode(x)) == x.
`<|endoftext|>` is special token 0 and separates documents.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Iterator


from llmpipe.stages.registry import StageParams, StageResult, stage
from llmpipe.tokens.bpe import EOT, train_tokenizer
from llmpipe.tokens.split import iter_split_texts
from llmpipe.util.io import atomic_path

log = logging.getLogger(__name__)
STAGE = stage("tokenizer")


def run(params: StageParams, root: Path, sink=None) -> StageResult:
    t0 = time.perf_counter()
    src = root / STAGE.inp("docs")
    n_train = 0

    def counted() -> Iterator[str]:
        nonlocal n_train
        for text in iter_split_texts(src, root / STAGE.inp("split"), want_val=False):
            n_train += 1
            yield text

    tok = train_tokenizer(counted(), params.tokenizer)
    dest = root / STAGE.out("tokenizer")
    with atomic_path(dest) as tmp:
        tok.save(str(tmp))
    stats = {"vocab_size": tok.get_vocab_size(), "train_docs": n_train, "eot_id": tok.token_to_id(EOT),
             "seconds": round(time.perf_counter() - t0, 3)}
    log.info("tokenizer: vocab %d trained on %d documents", stats["vocab_size"], n_train)
    return StageResult(stats, artifacts=[dest])
