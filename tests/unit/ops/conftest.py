"""A small trained tokenizer for the export tests (HF and GGUF)."""

import pytest

from llmpipe.config.tokens import TokenizerParams
from llmpipe.tokens.bpe import train_tokenizer

TEXTS = ["To be, or not to be, that is the question.", "Whether 'tis nobler in the mind to suffer."] * 10


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    train_tokenizer(iter(TEXTS), TokenizerParams(vocab_size=320)).save(str(path))
    return path
