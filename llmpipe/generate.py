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


@torch.inference_mode()
def generate_batch(model: GPT, prompts: list[list[int]], max_new_tokens: int, eot_id: int | None = None,
                   temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
                   use_cache: bool = True, on_token=None, stop_fn=None) -> list[list[int]]:
    """Generate for several prompts at once (left-padded); each row stops at eot_id (not included).

    on_token(row, token) is called for every token as it is produced (for streaming);
    stop_fn(row, generated_ids) -> True ends that row (stop strings are checked this way).
    The weights are read in the decode layout meanwhile (GPT.decode_layout)."""
    with model.decode_layout():
        return _generate(model, prompts, max_new_tokens, eot_id, temperature, top_k, top_p, seed, use_cache,
                         on_token, stop_fn)


def _generate(model, prompts, max_new_tokens, eot_id, temperature, top_k, top_p, seed, use_cache, on_token,
              stop_fn) -> list[list[int]]:
    model.eval()
    first = next(model.parameters())
    device, block = first.device, model.cfg.block_size
    filler = eot_id if eot_id is not None else 0
    ctxs = [list(p[-(block - 1):]) or [filler] for p in prompts]
    outs: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    gen = torch.Generator(device=device)
    if seed is not None:
        gen.manual_seed(seed)
    cache, pad = None, None
    for _ in range(max_new_tokens):
        if not use_cache or cache is None or cache.pos + 1 > block:
            if use_cache and cache is not None:  # context full: restart from the latest half
                ctxs = [c[-(block // 2):] for c in ctxs]
            window = [c[-block:] for c in ctxs]
            width = max(len(w) for w in window)
            pad_list = [width - len(w) for w in window]
            pad = torch.tensor(pad_list, device=device) if any(pad_list) else None
            idx = torch.tensor([[filler] * p + w for p, w in zip(pad_list, window)], device=device)
            cache = KVCache(model.cfg, len(prompts), device, first.dtype) if use_cache else None
        else:
            idx = torch.tensor([[c[-1]] for c in ctxs], device=device)
        logits, _ = model(idx, cache=cache, last_only=True, pad=pad)
        nxt = sample_next(logits[:, -1, :], temperature, top_k, top_p, gen).tolist()
        for row, token in enumerate(nxt):
            ctxs[row].append(token)
            if done[row]:
                continue
            if token == eot_id:
                done[row] = True
                continue
            outs[row].append(token)
            if on_token is not None:
                on_token(row, token)
            if stop_fn is not None and stop_fn(row, outs[row]):
                done[row] = True
        if all(done):
            break
    return outs


def generate(model: GPT, prompt: list[int], max_new_tokens: int, eot_id: int | None = None,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
             use_cache: bool = True, on_token=None) -> list[int]:
    """One prompt; on_token(token) streams."""
    stream = (lambda _row, tok: on_token(tok)) if on_token is not None else None
    return generate_batch(model, [prompt], max_new_tokens, eot_id, temperature, top_k, top_p, seed,
                          use_cache, stream)[0]
