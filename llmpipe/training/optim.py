"""The optimizer, the learning-rate schedule and the accumulation steps of a global batch."""

from __future__ import annotations

import math

import torch

from llmpipe.config.pretrain import PretrainParams
from llmpipe.util.io import InputError


def make_optimizer(model: torch.nn.Module, cfg: PretrainParams, device: torch.device) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]  # matrices and embeddings; not norms or biases
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                             fused=device.type == "cuda")


def accumulation_steps(cfg: PretrainParams, world: int) -> int:
    """Micro-batches per optimizer step: grad_accum_steps, or what batch_tokens asks for on `world` ranks."""
    if cfg.batch_tokens is None:
        return cfg.grad_accum_steps
    per_micro = cfg.micro_batch_size * cfg.model.block_size * world
    if cfg.batch_tokens % per_micro:
        raise InputError(f"pretrain.batch_tokens: {cfg.batch_tokens} is not a multiple of micro_batch_size x "
                         f"block_size x ranks = {cfg.micro_batch_size} x {cfg.model.block_size} x {world}")
    return cfg.batch_tokens // per_micro


def lr_at(step: int, cfg: PretrainParams) -> float:
    min_lr = cfg.lr * cfg.min_lr_ratio
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(cfg.max_steps - cfg.warmup_steps, 1)
    progress = min((step - cfg.warmup_steps) / span, 1.0)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - min_lr)
