"""Log-probabilities in OpenAI's two shapes: chat's `logprobs.content[]` ({token, logprob, bytes,
top_logprobs}) and the legacy completions' `logprobs` ({tokens, token_logprobs, top_logprobs, text_offset}).

A token's bytes are its own, not its text's: byte-level BPE tokens may split a character, so a token's
`token` string is those bytes decoded with replacement, and `bytes` lets a client join them exactly.
The numbers are the model's raw distribution (before temperature and top-p), as vLLM reports them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from tokenizers import Tokenizer


@lru_cache(maxsize=1)
def _unicode_to_byte() -> dict[str, int]:
    """Byte-level BPE writes each byte as a printable character: the printable Latin-1 bytes as
    themselves, every other byte as chr(256 + its rank among those others). This is the inverse."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{chr(b): b for b in printable}, **{chr(256 + i): b for i, b in enumerate(others)}}


@dataclass
class TokenLogprob:
    id: int
    logprob: float
    top: list[tuple[int, float]]  # the k most likely tokens at that step, most likely first


class TokenBytes:
    """A tokenizer's token ids -> their bytes and display strings (cached)."""

    def __init__(self, tok: Tokenizer):
        self.tok = tok
        self.special = {t.content for t in tok.get_added_tokens_decoder().values()}
        self._cache: dict[int, bytes] = {}

    def bytes(self, token_id: int) -> bytes:
        if (hit := self._cache.get(token_id)) is None:
            piece = self.tok.id_to_token(token_id) or ""
            table = _unicode_to_byte()
            if piece in self.special or not all(c in table for c in piece):
                hit = piece.encode("utf-8")
            else:
                hit = bytes(table[c] for c in piece)
            self._cache[token_id] = hit
        return hit

    def text(self, token_id: int) -> str:
        return self.bytes(token_id).decode("utf-8", errors="replace")


def record(token: int, logprobs, k: int) -> TokenLogprob:
    """The chosen token's log-probability and the top k, from one step's log-probabilities (a tensor).
    torch is imported here, in the generation process: the server's process has no use for its memory."""
    import torch

    top = []
    if k:
        values, ids = torch.topk(logprobs, k)
        top = list(zip(ids.tolist(), values.tolist()))
    return TokenLogprob(token, float(logprobs[token]), top)


def chat_logprobs(records: list[TokenLogprob], tb: TokenBytes) -> dict:
    """choices[].logprobs of a chat completion (or of one stream chunk)."""

    def entry(token_id: int, logprob: float) -> dict:
        return {"token": tb.text(token_id), "logprob": logprob, "bytes": list(tb.bytes(token_id))}

    return {"content": [{**entry(r.id, r.logprob), "top_logprobs": [entry(i, lp) for i, lp in r.top]}
                        for r in records], "refusal": None}


def completion_logprobs(records: list[TokenLogprob], tb: TokenBytes, offset: int = 0) -> dict:
    """choices[].logprobs of a legacy completion; text_offset counts characters from `offset` (the
    length of the text before the first token: the echoed prompt, or what earlier chunks sent)."""
    tokens, offsets = [], []
    for r in records:
        offsets.append(offset)
        tokens.append(tb.text(r.id))
        offset += len(tokens[-1])
    return {"tokens": tokens, "token_logprobs": [r.logprob for r in records],
            "top_logprobs": [{tb.text(i): lp for i, lp in r.top} for r in records], "text_offset": offsets}
