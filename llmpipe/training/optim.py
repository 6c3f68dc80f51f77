"""The optimizer, the learning-rate schedule and the accumulation steps of a global batch."""

from __future__ import annotations

import math

import torch

from llmpipe.config.pretrain import PretrainParams, divisor_at_most
from llmpipe.config.training import TrainingRun
from llmpipe.training.muon import MuonAdamW
from llmpipe.util.io import InputError


def make_optimizer(model: torch.nn.Module, cfg: PretrainParams, device: torch.device) -> torch.optim.Optimizer:
    if cfg.optimizer == "muon":
        return make_muon(model, cfg)
    return make_adamw(model, cfg, device)


def own_rate(name: str, cfg: TrainingRun) -> tuple[str, float] | None:
    """The input embedding's or the output layer's own rate (pretrain.embed_lr, head_lr), if set; the value
    embeddings and a learned position table stay at lr. Finetuning's loops take no lr_scale: its
    sections have neither key."""
    for prefix, key in (("tok_emb.", "embed_lr"), ("lm_head.", "head_lr")):
        rate = getattr(cfg, key, None)
        if name.startswith(prefix) and rate is not None:
            return key, rate
    return None


def adamw_group(groups: dict[str, dict], name: str, p: torch.nn.Parameter, cfg: TrainingRun) -> str:
    """The key of p's AdamW group, made on first use: decay on matrices and embeddings only,
    embed_lr/head_lr as scales of the schedule's rate."""
    own = own_rate(name, cfg)
    if own is not None:  # lr_scale: the schedule's rate times rate / lr (training.loop)
        key, rate = own
        groups.setdefault(key, {"params": [], "weight_decay": cfg.weight_decay, "lr_scale": rate / cfg.lr,
                                "lr": rate})
        return key
    key = "adamw_decay" if p.dim() >= 2 else "adamw"  # matrices and embeddings; not norms or biases
    groups.setdefault(key, {"params": [], "weight_decay": cfg.weight_decay if p.dim() >= 2 else 0.0})
    return key


def make_adamw(model: torch.nn.Module, cfg: TrainingRun, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and embeddings only (pretraining's default, finetuning's)."""
    groups: dict[str, dict] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups[adamw_group(groups, name, p, cfg)]["params"].append(p)
    return torch.optim.AdamW(list(groups.values()), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                             fused=device.type == "cuda")


def muon_split(name: str, model: torch.nn.Module) -> list[int] | None:
    """Row blocks of a fused matrix that are separate matrices of the math (q, k, v; gate, value)."""
    c = getattr(model, "cfg", None)
    if c is None:
        return None
    if name.endswith("qkv_proj.weight"):
        return [c.n_head * c.head_dim, c.kv_heads * c.head_dim, c.kv_heads * c.head_dim]
    if name.endswith("mlp.up.weight") and c.mlp == "swiglu":
        return [c.ffn_dim, c.ffn_dim]
    return None


def make_muon(model: torch.nn.Module, cfg: PretrainParams) -> MuonAdamW:
    """Muon for the matrices inside the blocks, AdamW (at lr) for embeddings, output layer and vectors."""
    groups: dict[str, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("blocks.") and p.dim() == 2:
            split = muon_split(name, model)
            key = f"muon{split}"
            groups.setdefault(key, {"params": [], "muon": True, "split": split, "lr_scale": cfg.muon_lr / cfg.lr,
                                    "lr": cfg.muon_lr, "weight_decay": cfg.muon_weight_decay})
        else:
            key = adamw_group(groups, name, p, cfg)
        groups[key]["params"].append(p)
    return MuonAdamW(list(groups.values()), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), momentum=cfg.muon_momentum)


def accumulation_steps(cfg: PretrainParams, world: int) -> int:
    """Micro-batches per optimizer step: grad_accum_steps, or what batch_tokens asks for on `world` ranks."""
    if cfg.batch_tokens is None:
        return cfg.grad_accum_steps
    per_micro = cfg.micro_batch_size * cfg.model.block_size * world
    if cfg.batch_tokens % per_micro:
        raise InputError(f"pretrain.batch_tokens: {cfg.batch_tokens} is not a multiple of micro_batch_size x "
                         f"block_size x ranks = {cfg.micro_batch_size} x {cfg.model.block_size} x {world}")
    return cfg.batch_tokens // per_micro


def decay_start(cfg: TrainingRun) -> int:
    """The first step after which lr_at depends on max_steps (the end of the warmup for cosine and
    linear, of the flat part for wsd; never for constant)."""
    if cfg.schedule == "constant":
        return cfg.max_steps
    if cfg.schedule == "wsd":
        return cfg.max_steps - max(int(round(cfg.decay_frac * cfg.max_steps)), 1)
    return cfg.warmup_steps


def lr_at(step: int, cfg: TrainingRun) -> float:
    """The learning rate at `step`: linear warmup, then cfg.schedule (pretraining: cosine or wsd;
    finetuning: cosine, linear or constant) down to lr * min_lr_ratio."""
    min_lr = cfg.lr * cfg.min_lr_ratio
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "wsd":  # flat, then a straight line to min_lr over the last decay_frac of the run
        decay = cfg.max_steps - decay_start(cfg)
        left = min(max(cfg.max_steps - step, 0), decay)
        return min_lr + (cfg.lr - min_lr) * left / decay
    span = max(cfg.max_steps - cfg.warmup_steps, 1)
    progress = min((step - cfg.warmup_steps) / span, 1.0)
    if cfg.schedule == "linear":
        return cfg.lr - progress * (cfg.lr - min_lr)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - min_lr)


def seq_warmup_end(cfg: TrainingRun) -> int:
    """The step the sequence-length warm-up ends at: seq_warmup_steps, but at most half the run (the
    share the fourth round measured; a short run keeps half its steps at full length). 0: none, also
    for a block no longer than the warm-up's first rows (a small test model's, say)."""
    if not getattr(cfg, "seq_warmup_steps", 0) or cfg.model.block_size <= cfg.seq_warmup_min:
        return 0
    return min(cfg.seq_warmup_steps, cfg.max_steps // 2)


def row_length_at(step: int, cfg: PretrainParams) -> int:
    """The row length at `step` under the sequence-length warm-up: the largest divisor of block_size
    not above a straight line from seq_warmup_min (step 0) to block_size (the warm-up's end)."""
    block, first, end = cfg.model.block_size, cfg.seq_warmup_min, seq_warmup_end(cfg)
    if step >= end:
        return block
    target = first + (block - first) * step / end
    return divisor_at_most(block, target)


def cut_rows(x: torch.Tensor, y: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each (rows, block) row cut into block // length rows of `length` tokens: the same tokens and
    targets, attention reaching back at most `length` tokens (positions restart in every piece)."""
    if length == x.shape[1]:
        return x, y
    return x.reshape(-1, length), y.reshape(-1, length)
