"""Autoregressive sampling with a KV cache: temperature, top-k, top-p, stop at <|endoftext|>.

Prompts longer than the context are cut from the left to leave room for generation. When the
context fills during generation, the cache is rebuilt from the most recent half of the context
(a sliding window), so generation can run past block_size.
"""

from __future__ import annotations

import torch

from .model import GPT, KVCache


def sample_next(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
                generator: torch.Generator | None) -> torch.Tensor:
    """logits (B, V) -> next ids (B,). temperature 0 means greedy."""
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # drop a token when the tokens ranked above it already hold top_p of the mass
        drop = (sorted_p.cumsum(dim=-1) - sorted_p) > top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model: GPT, prompt: list[int], max_new_tokens: int, eot_id: int | None = None,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
             use_cache: bool = True, on_token=None) -> list[int]:
    """Generate up to max_new_tokens after `prompt`; stops early at eot_id (not included)."""
    model.eval()
    device = next(model.parameters()).device
    block = model.cfg.block_size
    if not prompt:
        prompt = [eot_id] if eot_id is not None else [0]
    ctx = list(prompt[-(block - 1):])
    gen = torch.Generator(device=device)
    if seed is not None:
        gen.manual_seed(seed)
    out: list[int] = []
    cache = None
    pending = ctx  # tokens not yet fed to the model
    for _ in range(max_new_tokens):
        if use_cache:
            if cache is None or cache.pos + len(pending) > block:
                ctx = ctx[-(block // 2):] if cache is not None else ctx
                cache = KVCache(model.cfg, 1, device, next(model.parameters()).dtype)
                pending = ctx
            logits, _ = model(torch.tensor([pending], device=device), cache=cache, last_only=True)
        else:
            logits, _ = model(torch.tensor([ctx[-block:]], device=device), last_only=True)
        nxt = int(sample_next(logits[:, -1, :], temperature, top_k, top_p, gen)[0])
        if eot_id is not None and nxt == eot_id:
            break
        out.append(nxt)
        ctx.append(nxt)
        pending = [nxt]
        if on_token is not None:
            on_token(nxt)
    return out
