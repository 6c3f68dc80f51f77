"""Muon for the hidden matrices, AdamW for everything else, in one optimizer.

Muon (Keller Jordan's, as used by modded-nanogpt) keeps an SGD momentum per matrix and steps along
the momentum's nearest semi-orthogonal matrix, found by a few Newton-Schulz iterations: every
direction of the update moves by about the same amount, which trains a Transformer's hidden matrices
in fewer tokens than Adam does. Embeddings, the output layer and vectors (norm gains, gates) keep
AdamW. One optimizer holds both kinds of parameter groups, so the training loop, gradient clipping
and checkpoints (the state is per parameter: `momentum_buffer`, or AdamW's `step`, `exp_avg`,
`exp_avg_sq`) stay as they are for DDP and for FSDP, whose sharded matrices are gathered whole for the
orthogonalization and each rank keeps its own rows of the result.
"""

from __future__ import annotations

import torch
from torch.distributed.tensor import DTensor, distribute_tensor

# Coefficients of the quintic iteration X <- aX + b(XX^T)X + c(XX^T)^2 X, chosen (by Keller Jordan) to
# push all singular values into about [0.7, 1.2] in five steps rather than converge exactly.
NS_COEFFS = (3.4445, -4.7750, 2.0315)


def orthogonalize(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """An approximately semi-orthogonal matrix with g's singular vectors (U V^T of g's SVD), in fp32."""
    a, b, c = NS_COEFFS
    x = g.float()
    wide = x.size(0) <= x.size(1)
    if not wide:  # iterate on the smaller Gram matrix
        x = x.t()
    x = x / (x.norm() + 1e-7)  # singular values <= 1: inside the iteration's basin
    for _ in range(steps):
        gram = x @ x.t()
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x if wide else x.t()


def _whole(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if isinstance(t, DTensor) else t


def _like(full: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """`full` laid out as parameter p is: this rank's shard under FSDP (no communication), else itself."""
    if isinstance(p, DTensor):
        return distribute_tensor(full, p.device_mesh, p.placements, src_data_rank=None)
    return full


class MuonAdamW(torch.optim.Optimizer):
    """Groups with `muon: True` take Muon steps (lr, momentum, Nesterov; `split` lists row blocks, such
    as a fused QKV matrix's q, k and v, orthogonalized separately); the others AdamW (lr, betas, eps,
    weight_decay). `lr_scale` multiplies the schedule's learning rate per group (see training.loop)."""

    def __init__(self, groups: list[dict], lr: float, betas: tuple[float, float], eps: float = 1e-8,
                 momentum: float = 0.95, ns_steps: int = 5):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=0.0, momentum=momentum, muon=False,
                        split=None, lr_scale=1.0, ns_steps=ns_steps)
        super().__init__(groups, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    (self._muon if group["muon"] else self._adamw)(p, group)

    def _muon(self, p: torch.Tensor, group: dict) -> None:
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p)
        buf, mu = state["momentum_buffer"], group["momentum"]
        buf.lerp_(p.grad, 1 - mu)
        g = _whole(p.grad.lerp(buf, mu))  # Nesterov: the gradient pulled towards the new momentum
        parts = g.split(group["split"]) if group["split"] else [g]
        update = torch.cat([orthogonalize(m, group["ns_steps"]) * max(1.0, m.size(0) / m.size(1)) ** 0.5
                            for m in parts]).to(p.dtype)
        if group["weight_decay"]:
            p.mul_(1 - group["lr"] * group["weight_decay"])
        p.add_(_like(update, p), alpha=-group["lr"])

    def _adamw(self, p: torch.Tensor, group: dict) -> None:
        state = self.state[p]
        if "step" not in state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
        (b1, b2), lr = group["betas"], group["lr"]
        state["step"] += 1
        t = state["step"].item()
        state["exp_avg"].lerp_(p.grad, 1 - b1)
        state["exp_avg_sq"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
        if group["weight_decay"]:
            p.mul_(1 - lr * group["weight_decay"])
        denom = (state["exp_avg_sq"] / (1 - b2**t)).sqrt_().add_(group["eps"])
        p.addcdiv_(state["exp_avg"], denom, value=-lr / (1 - b1**t))
