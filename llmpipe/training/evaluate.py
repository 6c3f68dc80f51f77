"""Held-out loss, perplexity and bits per byte.

Bits per byte = (summed token loss in nats / ln 2) / (UTF-8 bytes of the text the scored tokens
stand for), so models with different tokenizers compare. The val split is scored in fixed,
non-overlapping windows of block_size tokens, in order (deterministic), up to max_tokens targets.
`<|endoftext|>` targets are scored but stand for no bytes.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from llmpipe.model.gpt import GPT
from llmpipe.tokens.loader import TokenData


@torch.no_grad()
def evaluate_model(model: GPT, data: TokenData, token_bytes: np.ndarray, batch_size: int = 8,
                   max_tokens: int | None = None) -> dict:
    model.eval()
    device = next(model.parameters()).device
    block = model.cfg.block_size
    nats, n_tokens, n_bytes = 0.0, 0, 0
    batch: list[np.ndarray] = []

    def flush():
        nonlocal nats, n_tokens, n_bytes
        # windows can differ in length only at the end of a shard: score each length group together
        for length in sorted({len(w) for w in batch}):
            group = np.stack([w for w in batch if len(w) == length])
            x = torch.from_numpy(group[:, :-1]).to(device)
            y = torch.from_numpy(group[:, 1:]).to(device)
            logits, _ = model(x)
            nats += F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum").item()
            n_tokens += y.numel()
            n_bytes += int(token_bytes[group[:, 1:]].sum())
        batch.clear()

    for window in data.windows(block, max_tokens):
        batch.append(window)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    loss = nats / max(n_tokens, 1)
    return {"val_loss": loss, "perplexity": math.exp(min(loss, 700.0)),
            "bits_per_byte": nats / math.log(2) / max(n_bytes, 1),
            "tokens": n_tokens, "bytes": n_bytes, "bytes_per_token": n_bytes / max(n_tokens, 1)}

