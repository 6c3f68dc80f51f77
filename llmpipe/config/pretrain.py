"""The pretrain section, with the one model config (llmpipe.model.gpt.GPTConfig adds the vocabulary)."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import Field, model_validator

from llmpipe.config.base import Seed, Section


class ModelParams(Section):
    """The architecture (the vocabulary size comes from the tokenizer: llmpipe.model.gpt.GPTConfig)."""

    n_layer: Annotated[int, Field(ge=1, le=256)] = 4
    n_head: Annotated[int, Field(ge=1, le=256)] = 4
    n_kv_head: Annotated[int, Field(ge=1, le=256)] | None = None
    d_model: Annotated[int, Field(ge=8, le=65536)] = 256
    block_size: Annotated[int, Field(ge=8, le=131072)] = 256
    norm: Literal["rmsnorm", "layernorm"] = "rmsnorm"
    mlp: Literal["swiglu", "gelu"] = "swiglu"
    pos: Literal["rope", "learned"] = "rope"
    rope_base: Annotated[float, Field(gt=1.0)] = 10000.0
    tie_embeddings: bool = True
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    # dense: every layer attends to the whole context; alternating: odd layers are local
    # (sliding window of attention_window positions), as in GPT-3's banded sparse layers and GPT-Neo.
    attention_pattern: Literal["dense", "alternating"] = "dense"
    attention_window: Annotated[int, Field(ge=1)] = 128

    @model_validator(mode="after")
    def _heads_divide(self) -> "ModelParams":
        if self.d_model % self.n_head:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        if (self.d_model // self.n_head) % 2 and self.pos == "rope":
            raise ValueError("head size (d_model / n_head) must be even for RoPE")
        kv = self.n_kv_head or self.n_head
        if self.n_head % kv:
            raise ValueError(f"n_head ({self.n_head}) must be a multiple of n_kv_head ({kv})")
        return self

    def is_local(self, layer: int) -> bool:
        return self.attention_pattern == "alternating" and layer % 2 == 1

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def ffn_dim(self) -> int:
        # SwiGLU uses 2/3 of 4*d so its three matrices cost what GELU's two do; rounded up to 64.
        hidden = 4 * self.d_model if self.mlp == "gelu" else int(8 * self.d_model / 3)
        return 64 * math.ceil(hidden / 64)


class PretrainParams(Section):
    model: ModelParams = ModelParams()
    micro_batch_size: Annotated[int, Field(ge=1)] = 16
    grad_accum_steps: Annotated[int, Field(ge=1)] = 1
    # The global batch in tokens; when set, grad_accum_steps follows from it and the number of ranks.
    batch_tokens: Annotated[int, Field(ge=1)] | None = None
    max_steps: Annotated[int, Field(ge=1)] = 200
    lr: Annotated[float, Field(gt=0.0, le=1.0)] = 2e-3
    min_lr_ratio: Annotated[float, Field(ge=0.0, le=1.0)] = 0.1
    warmup_steps: Annotated[int, Field(ge=0)] = 20
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.1
    beta1: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9
    beta2: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.95
    grad_clip: Annotated[float, Field(ge=0.0)] = 1.0
    seed: Seed = 1337
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # auto: bf16 autocast on CUDA and on CPUs with native bf16 matrix units, fp32 elsewhere.
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    eval_interval: Annotated[int, Field(ge=1)] = 50
    eval_batches: Annotated[int, Field(ge=1)] = 4
    log_interval: Annotated[int, Field(ge=1)] = 10
    checkpoint_interval: Annotated[int, Field(ge=1)] = 50
    threads: Annotated[int, Field(ge=0)] = 0  # 0: torch's default
    # torch.compile the model: worth it on GPUs; on CPU it adds ~2% after a 30-50 s compile.
    compile: bool = False
    # Under torchrun: ddp replicates the model on every rank; fsdp shards parameters, gradients and
    # optimizer state across ranks (FSDP2), for models that do not fit one device.
    parallel: Literal["ddp", "fsdp"] = "ddp"

    @model_validator(mode="after")
    def _warmup_fits(self) -> "PretrainParams":
        if self.warmup_steps > self.max_steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) exceeds max_steps ({self.max_steps})")
        if self.batch_tokens is not None and self.grad_accum_steps != 1:
            raise ValueError("set either batch_tokens or grad_accum_steps, not both")
        return self
