"""A decoder-only Transformer in one file, in the spirit of nanoGPT's model.py.

Pre-normalization (RMSNorm or LayerNorm), causal multi-head attention through
scaled_dot_product_attention (flash kernels on GPU) with grouped-query heads, rotary position
embeddings (or learned absolute positions, for comparison), a SwiGLU or GELU MLP, optional tied
embeddings, GPT-2-style init with residual projections scaled by 1/sqrt(2 * n_layer), and a KV cache
for generation. Options from modded-nanogpt's speedrun recipe: QK-norm, a ReLU² MLP, a zero-initialized
untied output layer, a logit soft-cap and value embeddings (each off by default, see ModelParams).
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from llmpipe.config.pretrain import ModelParams

from llmpipe.model.decode import KVCache, SlotCache, one_query_attention
from llmpipe.model.loss import linear_cross_entropy


class GPTConfig(ModelParams):
    """The model's architecture (pretrain.model) plus the tokenizer's vocabulary size."""

    vocab_size: int = Field(ge=1)

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.size(-1),), self.weight, self.eps)


class Linear(nn.Linear):
    """nn.Linear with an optional inference layout. Decoding multiplies one row per sequence by each
    weight, which is bound by reading the weight from memory; BLAS streams an (in, out) matrix for such
    products about twice as fast as the (out, in) one nn.Linear keeps (14-17 vs 6-7 GB/s measured on
    2 EPYC cores). GPT.decode_layout() fills `weight_t` with that copy for the duration of generation."""

    weight_t: torch.Tensor | None = None
    ROWS = 16  # up to this many rows use weight_t; more rows are compute-bound and use F.linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight_t is None or x.shape[:-1].numel() > self.ROWS:
            return F.linear(x, self.weight, self.bias)
        y = x @ self.weight_t
        return y if self.bias is None else y + self.bias


def make_norm(cfg: GPTConfig) -> nn.Module:
    return RMSNorm(cfg.d_model) if cfg.norm == "rmsnorm" else nn.LayerNorm(cfg.d_model)


def rope_tables(head_dim: int, length: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)  # (T, hd/2)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (first half, second half) of each head's channels; x is (B, H, T, hd), the tables
    (T, hd/2) shared by the batch or (B, T, hd/2) per row."""
    x1, x2 = x.float().chunk(2, dim=-1)
    cos, sin = (cos[None, None], sin[None, None]) if cos.dim() == 2 else (cos[:, None], sin[:, None])
    out = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out if out.dtype == x.dtype else out.to(x.dtype)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int):
        super().__init__()
        self.cfg, self.layer = cfg, layer
        hd = cfg.head_dim
        # q, k and v in one matmul: one weight read per token matters when decoding is memory-bound
        self.qkv_proj = Linear(cfg.d_model, (cfg.n_head + 2 * cfg.kv_heads) * hd, bias=False)
        self.o_proj = Linear(cfg.n_head * hd, cfg.d_model, bias=False)
        self.o_proj.residual_scale = True
        # value embeddings: v + ve_gate * (the token's value embedding), the gate learned per layer
        self.ve_gate = nn.Parameter(torch.full((1,), 0.5)) if cfg.value_embeds else None

    def forward(self, x, rope, cache: KVCache | None = None, mask: torch.Tensor | None = None,
                ve: torch.Tensor | None = None):
        B, T, _ = x.shape
        cfg, hd = self.cfg, self.cfg.head_dim
        qkv = self.qkv_proj(x).view(B, T, cfg.n_head + 2 * cfg.kv_heads, hd).transpose(1, 2)
        qk, v = qkv.split([cfg.n_head + cfg.kv_heads, cfg.kv_heads], dim=1)
        if ve is not None:  # (B, T, kv_heads * hd) -> (B, kv_heads, T, hd)
            v = v + self.ve_gate.to(v.dtype) * ve.view(B, T, cfg.kv_heads, hd).transpose(1, 2).to(v.dtype)
        if cfg.qk_norm:  # bounded attention logits: no loss spikes at high learning rates
            qk = F.rms_norm(qk, (hd,))
        if rope is not None:  # queries and keys rotate alike: one pass over both
            qk = apply_rope(qk, *rope)
        q, k = qk.split([cfg.n_head, cfg.kv_heads], dim=1)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)
        if isinstance(cache, SlotCache):
            y = one_query_attention(q, k, v, mask)
        else:
            # No mask: plain causal over the chunk, or a single new token that sees the whole cache.
            causal = mask is None and (cache is None or cache.pos == 0)
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=causal,
                dropout_p=cfg.dropout if self.training else 0.0,
                enable_gqa=cfg.kv_heads != cfg.n_head,
            )
        return self.o_proj(y.transpose(1, 2).reshape(B, T, cfg.n_head * hd))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.swiglu, self.relu2 = cfg.mlp == "swiglu", cfg.mlp == "relu2"
        self.up = Linear(cfg.d_model, cfg.ffn_dim * (2 if self.swiglu else 1), bias=False)
        self.down = Linear(cfg.ffn_dim, cfg.d_model, bias=False)
        self.down.residual_scale = True

    def forward(self, x):
        h = self.up(x)
        if self.swiglu:
            gate, val = h.chunk(2, dim=-1)
            h = F.silu(gate) * val
        elif self.relu2:
            h = F.relu(h).square()
        else:
            h = F.gelu(h, approximate="tanh")
        return self.down(h)


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int):
        super().__init__()
        self.norm1, self.attn = make_norm(cfg), CausalSelfAttention(cfg, layer)
        self.norm2, self.mlp = make_norm(cfg), MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, rope, cache=None, mask=None, ve=None):
        x = x + self.drop(self.attn(self.norm1(x), rope, cache, mask, ve))
        return x + self.drop(self.mlp(self.norm2(x)))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.d_model) if cfg.pos == "learned" else None
        self.value_emb = nn.Embedding(cfg.vocab_size, cfg.kv_heads * cfg.head_dim) if cfg.value_embeds else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.norm_f = make_norm(cfg)
        self.lm_head = Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        if cfg.pos == "rope":
            cos, sin = rope_tables(cfg.head_dim, cfg.block_size, cfg.rope_base)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        if cfg.zero_init_head:
            nn.init.zeros_(self.lm_head.weight)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            std = 0.02
            if getattr(module, "residual_scale", False):  # GPT-2: keep the residual stream's variance flat
                std /= math.sqrt(2 * self.cfg.n_layer)
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @contextlib.contextmanager
    def decode_layout(self):
        """Within this block, few-row products read transposed copies of the weights (see Linear);
        the copies are made on entry from the current weights and dropped on exit."""
        layers = [m for m in self.modules() if isinstance(m, Linear)]
        for m in layers:
            m.weight_t = m.weight.detach().t().contiguous()
        try:
            yield self
        finally:
            for m in layers:
                del m.weight_t  # back to the class default (None), as it was

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_emb.weight.numel() if not self.cfg.tie_embeddings else 0
            n -= self.pos_emb.weight.numel() if self.pos_emb is not None else 0
            n -= self.value_emb.weight.numel() if self.value_emb is not None else 0
        return n

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token: 6N for the matmuls plus 12 * L * d * T for attention scores."""
        T = seq_len or self.cfg.block_size
        return 6 * self.num_params(non_embedding=True) + 12 * self.cfg.n_layer * self.cfg.d_model * T

    @staticmethod
    def attention_mask(T: int, start: int, pad: torch.Tensor | None, device,
                       window: int | None = None) -> torch.Tensor | None:
        """Boolean mask (True = attend) for a chunk of T queries after `start` cached positions; None
        when SDPA's own causal flag (start 0) or no mask at all (one query) says the same. With a
        window, a query sees only the `window` most recent positions (itself included)."""
        if pad is None and window is None and (start == 0 or T == 1):
            return None
        q_pos = torch.arange(start, start + T, device=device)[:, None]
        k_pos = torch.arange(start + T, device=device)[None, :]
        mask = q_pos >= k_pos
        if window is not None:
            mask = mask & (q_pos - k_pos < window)
        if pad is not None:  # never attend to left padding
            mask = (mask[None] & (k_pos[None] >= pad[:, None, None]))[:, None]  # (B, 1, T, Tk)
        return mask

    def decode_step(self, idx: torch.Tensor, positions: torch.Tensor, slot: torch.Tensor, mask: torch.Tensor,
                    local_mask: torch.Tensor | None, k: list[torch.Tensor], v: list[torch.Tensor]) -> torch.Tensor:
        """One generated token per row after a prefill: idx (B, 1), positions (B,) of the new tokens (their
        RoPE/learned positions, left padding excluded), slot (1,) the cache index they are written to,
        mask (B, 1, 1, block_size) the cache entries each row attends to (local_mask for local layers),
        k and v the cache buffers (KVCache.k/.v). Returns the next-token logits (B, V) in fp32."""
        x = self.tok_emb(idx)
        rope = None
        if self.pos_emb is not None:
            x = x + self.pos_emb(positions)[:, None]
        else:
            rope = (self.rope_cos[positions][:, None], self.rope_sin[positions][:, None])
        cache = SlotCache(k, v, slot)
        ve = self.value_emb(idx) if self.value_emb is not None else None
        for i, block in enumerate(self.blocks):
            x = block(x, rope, cache, local_mask if self.cfg.is_local(i) else mask, ve)
        return self.softcap(self.lm_head(self.norm_f(x))[:, -1].float())

    def softcap(self, logits: torch.Tensor) -> torch.Tensor:
        """Gemma 2's soft-cap (cap * tanh(logits / cap)), in fp32; identity without logit_softcap."""
        cap = self.cfg.logit_softcap
        return logits if cap is None else cap * torch.tanh(logits.float() / cap)

    FUSED_BF16 = True  # the chunked loss under bf16 autocast too (bench/train.py measures both)

    @classmethod
    def fused_loss(cls, x: torch.Tensor) -> bool:
        """Whether the loss goes through linear_cross_entropy: on CPU, where the chunking pays (a
        memory-bound output layer), in fp32 and (FUSED_BF16) under bf16 autocast; on GPUs and under
        torch.compile (which fuses the loss itself) the plain path runs."""
        if x.device.type != "cpu" or torch.compiler.is_compiling():
            return False
        return not torch.is_autocast_enabled("cpu") or (cls.FUSED_BF16 and
                                                        torch.get_autocast_dtype("cpu") == torch.bfloat16)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None,
                last_only: bool = False, pad: torch.Tensor | None = None, select: torch.Tensor | None = None):
        """Logits (B, T, V), or (B, 1, V) with last_only (generation), and the loss when targets are given;
        where the loss is fused with the output layer (fused_loss), the logits are None. `select` (B, T),
        boolean, without targets: the logits (N, V) of the selected positions only (the reward stage scores
        a few answer tokens after a long prompt; the output layer is about half a small model's work).

        `pad` (B,) counts left-padding tokens per row (batched generation of prompts of unequal length):
        padding is never attended to and each row's positions start at its first real token."""
        B, T = idx.shape
        start = cache.pos if cache is not None else 0
        if start + T > self.cfg.block_size:
            raise ValueError(f"sequence of {start + T} positions exceeds block_size {self.cfg.block_size}")
        x = self.tok_emb(idx)
        rope = None
        if pad is None and self.pos_emb is None:  # the common case: a slice of the tables, no gather
            rope = (self.rope_cos[start : start + T], self.rope_sin[start : start + T])
        else:
            pos = torch.arange(start, start + T, device=idx.device)
            if pad is not None:
                pos = (pos[None, :] - pad[:, None]).clamp(min=0)  # (B, T)
            if self.pos_emb is not None:
                x = x + self.pos_emb(pos)
            else:
                rope = (self.rope_cos[pos], self.rope_sin[pos])
        x = self.drop(x)
        mask = self.attention_mask(T, start, pad, idx.device)
        local = None
        if self.cfg.attention_pattern != "dense":
            local = self.attention_mask(T, start, pad, idx.device, window=self.cfg.attention_window)
        ve = self.value_emb(idx) if self.value_emb is not None else None
        for i, block in enumerate(self.blocks):
            x = block(x, rope, cache, local if self.cfg.is_local(i) else mask, ve)
        if cache is not None:
            cache.pos += T
        x = self.norm_f(x)
        if last_only:
            x = x[:, -1:, :]
        elif select is not None:
            x = x[select]
        if targets is not None and self.fused_loss(x):
            mm = torch.bfloat16 if torch.is_autocast_enabled("cpu") else None
            return None, linear_cross_entropy(x.reshape(-1, x.size(-1)), self.lm_head.weight, targets.reshape(-1),
                                              softcap=self.cfg.logit_softcap, mm_dtype=mm)
        logits = self.lm_head(x)
        if self.cfg.logit_softcap is not None:
            logits = self.softcap(logits)
        if targets is None:
            return logits.float(), None
        # The loss upcasts to fp32 inside; the logits go back as computed (bf16 under autocast), so a
        # compiled training step never writes an fp32 copy of its largest activation.
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss
