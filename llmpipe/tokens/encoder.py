"""Encoding text with the trained tokenizer, at tiktoken's speed when that gives the same ids.

tokenizer.json (Hugging Face `tokenizers`) is the definition of the tokenizer. For a byte-level BPE
with GPT-2's pre-tokenization, which is what the tokenizer stage trains, tiktoken's BPE computes the
same encoding about 3x faster (its pre-tokenizer and merge loop beat the Oniguruma regex in
`tokenizers` on these CPUs): Hugging Face merges the adjacent pair with the highest-priority merge
rule, tiktoken the pair whose product has the lowest rank, and these agree because the trainer gives
each merge's product the next id, so we hand tiktoken the ids as ranks. `load_encoder` checks that
structure and then encodes a sample with both engines; on any difference, or for any other kind of
tokenizer, it falls back to `tokenizers` itself. Text is always encoded as text: a literal
`<|endoftext|>` inside a document stays text (it must not forge a document boundary).
"""

from __future__ import annotations

import json
import logging
import os
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from tokenizers import Tokenizer

from llmpipe.util.io import InputError

log = logging.getLogger(__name__)

# GPT-2's pre-tokenization as tiktoken writes it (the same splits as the ByteLevel pre-tokenizer's regex).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


def _byte_level_decoder() -> dict[str, int]:
    """GPT-2's map from the printable stand-in characters of byte-level BPE back to bytes."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = dict(zip(printable, printable)), 0
    for b in range(256):
        if b not in chars:
            chars[b], extra = 256 + extra, extra + 1
    return {chr(c): b for b, c in chars.items()}


class Encoder:
    """Encodes batches of documents to ids (lists, or uint32 arrays), on `threads` threads, special-token
    text encoded as text."""

    def __init__(self, tokenizer: Tokenizer, threads: int = 0):
        self.hf = tokenizer
        self.hf.encode_special_tokens = True  # special tokens in the text are encoded as text
        self.threads = threads or os.cpu_count() or 1
        self.fast = None
        self.nfc = False
        self.engine = "tokenizers"

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """The ids as lists (one path with encode_arrays, so the two cannot disagree)."""
        return [ids.tolist() for ids in self.encode_arrays(texts)]

    def encode_arrays(self, texts: list[str]) -> list[np.ndarray]:
        """The ids as one uint32 array per text. tiktoken writes them straight into the array: a list of
        Python ints costs ~36 bytes per token (~20 per byte of text), and freeing millions of them
        fragments the heap, so a long stage's peak crept up with every document it had encoded."""
        if self.fast is None:
            return [np.asarray(e.ids, dtype=np.uint32)
                    for e in self.hf.encode_batch_fast(texts, add_special_tokens=False)]
        if self.nfc:
            texts = [unicodedata.normalize("NFC", t) for t in texts]
        # disallowed_special=() with no special token allowed: special-token text is encoded as text (tiktoken
        # 0.9-0.10 allowed every special token here whatever it was given: hence tiktoken>=0.11, and
        # load_encoder checks this path on a literal special token). No surrogate retry as in
        # encode_ordinary: the documents come from Parquet, valid UTF-8.
        encode = lambda t: self.fast.encode_to_numpy(t, disallowed_special=())  # noqa: E731
        if self.threads == 1 or len(texts) < 2:
            return [encode(t) for t in texts]
        with ThreadPoolExecutor(self.threads) as pool:
            return list(pool.map(encode, texts))


def _tiktoken_for(spec: dict, special: set[str]):
    """A tiktoken Encoding equal to this tokenizer.json, or None when its structure is not the one
    the equivalence holds for."""
    try:
        import tiktoken
    except ImportError:
        return None, "tiktoken is not installed"
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    norm = spec.get("normalizer")
    if model.get("type") != "BPE" or model.get("dropout") or model.get("continuing_subword_prefix") \
            or model.get("end_of_word_suffix") or model.get("ignore_merges"):
        return None, "the model is not a plain BPE"
    if pre.get("type") != "ByteLevel" or not pre.get("use_regex", True) or pre.get("add_prefix_space"):
        return None, "the pre-tokenizer is not GPT-2's byte-level regex"
    if norm is not None and norm.get("type") != "NFC":
        return None, f"normalizer {norm.get('type')} has no tiktoken counterpart"
    vocab: dict[str, int] = model["vocab"]
    to_byte = _byte_level_decoder()
    merges = [m if isinstance(m, list) else m.split(" ") for m in model["merges"]]
    products = [vocab.get(a + b) for a, b in merges]
    if None in products or any(x >= y for x, y in zip(products, products[1:])):
        return None, "merge products do not take ids in merge order"
    try:
        ranks = {bytes(to_byte[ch] for ch in piece): i for piece, i in vocab.items() if piece not in special}
    except KeyError:
        return None, "the vocabulary has pieces outside the byte-level alphabet"
    if sum(len(piece) == 1 for piece in ranks) != 256:
        return None, "the vocabulary lacks some of the 256 single bytes"
    specials = {t["content"]: t["id"] for t in spec.get("added_tokens", [])}
    enc = tiktoken.Encoding("llmpipe", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens=specials)
    return enc, "ok"


def load_encoder(tokenizer_path: Path | str, threads: int = 0, check_texts: list[str] | None = None) -> Encoder:
    """The fastest engine that encodes exactly like `tokenizer_path`; `check_texts` is the sample
    both engines must agree on (the caller passes the first documents it will encode)."""
    try:
        tok = Tokenizer.from_file(str(tokenizer_path))
        spec = json.loads(Path(tokenizer_path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{tokenizer_path}: file not found") from None
    except Exception as err:  # tokenizers raises plain Exceptions for malformed files
        raise InputError(f"{tokenizer_path}: not a tokenizer.json ({err})") from None
    encoder = Encoder(tok, threads)
    special = {t["content"] for t in spec.get("added_tokens", []) if t.get("special")}
    fast, why = _tiktoken_for(spec, special)
    if fast is None:
        log.info("encoding with tokenizers (%s)", why)
        return encoder
    # the sample, plus each special token written literally inside text (it must stay text)
    check = [*(check_texts or []), *(f"a {s} b" for s in sorted(special))]
    slow = encoder.encode_batch(check)
    encoder.fast, encoder.nfc = fast, (spec.get("normalizer") or {}).get("type") == "NFC"
    if encoder.encode_batch(check) != slow:
        encoder.fast = None
        log.warning("tiktoken's encoding differs from %s on the sample; encoding with tokenizers", tokenizer_path)
        return encoder
    encoder.engine = "tiktoken"
    log.info("encoding with tiktoken (checked against tokenizers on %d documents)", len(check_texts or []))
    return encoder
