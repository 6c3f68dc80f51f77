"""Token shards of a toy language, for training tests that need no tokenizer or corpus (a plain
module: a DVC stage command in a test can import it too, with the repository on PYTHONPATH)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llmpipe.stages.tokenize import write_doc_table
from llmpipe.tokens.shards import ShardWriter, write_manifest


def write_toy_tokens(out: Path, vocab: int = 64, docs: tuple[int, int] = (300, 30), doc_len: int = 40,
                     shard_tokens: int = 4000, learnable: bool = True) -> Path:
    """Train and val shards of `docs` documents each ending in <|endoftext|> (id 0). Learnable:
    arithmetic sequences (a model's loss falls fast); else uniform random ids."""
    rng = np.random.default_rng(0)
    out.mkdir(parents=True, exist_ok=True)
    shards = []
    for split, n_docs in zip(("train", "val"), docs):
        w = ShardWriter(out, split, shard_tokens, np.dtype(np.uint16))
        for _ in range(n_docs):
            if learnable:
                start, step = rng.integers(1, vocab), rng.integers(1, 4)
                w.add([int((start + step * i) % (vocab - 1)) + 1 for i in range(doc_len)] + [0])
            else:
                w.add(rng.integers(1, vocab, doc_len).tolist() + [0])
        shards += [{**s, "split": split} for s in w.close()]
        # the provenance table the tokenize stage keeps beside the shards
        write_doc_table(out, split, [{"id": f"{split}-{i}", "source": "toy", "location": f"toy/{split}/{i}",
                                      "title": f"toy {i}", "start": i * (doc_len + 1), "tokens": doc_len + 1}
                                     for i in range(n_docs)])
    write_manifest(out, {"tokenizer_sha256": "t", "eot_id": 0, "vocab_size": vocab, "dtype": "uint16",
                         "shards": shards})
    return out


def write_pretrain_extras(root: Path) -> None:
    """What the pretrain stage reads besides its token shards: a tokenizer and the in-loop benchmark
    items (made by the tokenizer and tasks stages in a real pipeline). Token shards of a vocabulary of
    at least 300 can be scored with them."""
    from llmpipe.config.tokens import TokenizerParams
    from llmpipe.evals.tasks import Item, write_items
    from llmpipe.tokens.bpe import train_tokenizer

    (root / "data" / "tokenizer").mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(["to be or not to be"] * 20, TokenizerParams(vocab_size=300))
    tok.save(str(root / "data" / "tokenizer" / "tokenizer.json"))
    (root / "data" / "evals").mkdir(parents=True, exist_ok=True)
    write_items(root / "data" / "evals" / "inloop.jsonl",
                [Item("toy", "1", "multiple_choice", ["to be or"], ["not", "be"])])
