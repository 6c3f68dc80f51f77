"""Byte-level BPE trained with Hugging Face tokenizers.

Pre-tokenization is GPT-2's regex (contractions, letters, numbers, other symbols, whitespace runs) over
the 256-symbol byte alphabet, so any UTF-8 text round-trips: decode(encode(x)) == x.
`<|endoftext|>` is special token 0 and separates documents. The chat format's turn markers are
reserved right after it (ids 1-4, llmpipe.tokens.chat) when the tokenizer is trained, so a base model
and its finetune share ids; they never occur in pretraining text (a literal `<|user|>` in a document is
encoded as text, like a literal `<|endoftext|>`).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from llmpipe.config.tokens import TokenizerParams

EOT = "<|endoftext|>"
# The chat format's markers (llmpipe.tokens.chat): system, user and assistant turns, end of turn.
CHAT_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
SPECIAL_TOKENS = [EOT, *CHAT_TOKENS]  # fixed ids: <|endoftext|> = 0, then the chat markers 1-4


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


def _byte_of_char() -> dict[str, int]:
    """The inverse of byte-level BPE's alphabet: printable Latin-1 bytes stand for themselves, the
    other 68 bytes (controls, space, NBSP, soft hyphen) for the characters 256, 257, ... in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    shifted = [b for b in range(256) if b not in set(printable)]
    return {**{chr(b): b for b in printable}, **{chr(256 + i): b for i, b in enumerate(shifted)}}


def token_bytes(tok: Tokenizer) -> list[bytes]:
    """The raw bytes each token id stands for (b"" for special tokens), so a token stream turns back
    into its exact bytes even where it cuts a UTF-8 character; len() agrees with token_byte_lengths."""
    pieces = [b""] * tok.get_vocab_size()
    special, byte_of = set(SPECIAL_TOKENS), _byte_of_char()
    for piece, idx in tok.get_vocab().items():
        if piece not in special:
            pieces[idx] = bytes(byte_of[c] for c in piece)
    return pieces
