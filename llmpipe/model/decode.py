"""The KV cache of generation: a growing cache for eager decoding and a fixed-shape slot cache for the
compiled one-token step (GPT.decode_step), and the written-out attention of one new query."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # a cache needs the architecture only (GPTConfig is one), not gpt.py, which imports this module
    from llmpipe.config.pretrain import ModelParams


class KVCache:
    """Keys and values of past positions for each layer, preallocated to the context length."""

    def __init__(self, cfg: ModelParams, batch: int, device, dtype):
        shape = (batch, cfg.kv_heads, cfg.block_size, cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.pos = 0  # number of positions filled

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = k.size(2)
        self.k[layer][:, :, self.pos : self.pos + t] = k
        self.v[layer][:, :, self.pos : self.pos + t] = v
        end = self.pos + t
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class SlotCache:
    """The KV cache as one decode step (GPT.decode_step) sees it: the new token's keys and values go in
    at a tensor index and attention reads the whole buffer under a mask, so the step's shapes never
    change and torch.compile builds it once for a whole generation."""

    def __init__(self, k: list[torch.Tensor], v: list[torch.Tensor], slot: torch.Tensor):
        self.k, self.v, self.slot = k, v, slot

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k[layer].index_copy_(2, self.slot, k)
        self.v[layer].index_copy_(2, self.slot, v)
        return self.k[layer], self.v[layer]


def one_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention of one new query per row (q (B, H, 1, hd)) over a cache (k, v (B, KVH, S, hd)) under a
    boolean mask (B, 1, 1, S). Written out rather than through SDPA: its CPU flash kernel spends ~130 us
    on a single query, while these few ops fuse into one or two kernels under torch.compile. The heads
    sharing a key/value head (GQA) are stacked as that head's queries."""
    B, H, _, hd = q.shape
    kvh = k.size(1)
    scores = (q.reshape(B, kvh, H // kvh, hd) @ k.transpose(-1, -2)) * hd**-0.5  # (B, KVH, H/KVH, S)
    scores = scores.float().masked_fill(~mask, float("-inf"))
    return (torch.softmax(scores, dim=-1).to(v.dtype) @ v).reshape(B, H, 1, hd)
