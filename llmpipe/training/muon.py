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
    return orthogonalize_all([g], steps)[0]


def orthogonalize_all(mats: list[torch.Tensor], steps: int = 5) -> list[torch.Tensor]:
    """orthogonalize() of each matrix, those of one shape stacked into one batch (a tall one transposed
    first: the iteration runs on the smaller Gram matrix). A small model's step had 24-28 matrices of
    2-3 shapes; one at a time, their ~400 small matmuls and elementwise ops cost 49 ms of a 2-thread
    CPU step of 4 x 128 (~20%), batched 19 ms, with the same fp32 result to ~1e-6 (issue 27; the whole
    step: bench/step_time.py)."""
    a, b, c = NS_COEFFS
    out: list[torch.Tensor | None] = [None] * len(mats)
    batches: dict[tuple[int, int], list[int]] = {}
    for i, g in enumerate(mats):
        rows, cols = g.shape
        batches.setdefault((min(rows, cols), max(rows, cols)), []).append(i)
    for idx in batches.values():
        x = torch.stack([mats[i].float() if mats[i].size(0) <= mats[i].size(1) else mats[i].float().t()
                         for i in idx])
        x = x / (torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True) + 1e-7)  # singular values <= 1
        for _ in range(steps):
            gram = x @ x.mT
            x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
        for j, i in enumerate(idx):
            out[i] = x[j] if mats[i].size(0) <= mats[i].size(1) else x[j].t()
    return out  # type: ignore[return-value]


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
        muon = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if group["muon"]:
                    muon.append((p, group))
                else:
                    self._adamw(p, group)
        # Batched, every whole matrix is held at once; under FSDP that would undo the sharding's memory
        # saving on the GPU configs, so sharded matrices go one at a time, as before the batching.
        sharded = any(isinstance(p, DTensor) for p, _ in muon)
        for batch in ([[m] for m in muon] if sharded else [muon] if muon else []):
            self._muon(batch)

    def nesterov(self, p: torch.Tensor, group: dict) -> torch.Tensor:
        """Update p's momentum with its gradient; the gradient pulled towards the new momentum (Nesterov)."""
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p)
        buf, mu = state["momentum_buffer"], group["momentum"]
        buf.lerp_(p.grad, 1 - mu)
        return p.grad.lerp(buf, mu)

    def _muon(self, params: list[tuple[torch.Tensor, dict]]) -> None:
        """One Muon step of these matrices: momenta first, then the orthogonalizations batched by shape."""
        parts: dict[int, list[torch.Tensor]] = {}  # ns_steps -> the matrices (row blocks) to orthogonalize
        where = []
        for p, group in params:
            g = _whole(self.nesterov(p, group))
            blocks = g.split(group["split"]) if group["split"] else [g]
            todo = parts.setdefault(group["ns_steps"], [])
            where.append((group["ns_steps"], len(todo), len(blocks)))
            todo.extend(blocks)
        done = {steps: orthogonalize_all(mats, steps) for steps, mats in parts.items()}
        for (p, group), (steps, first, n) in zip(params, where):
            update = torch.cat([m * max(1.0, m.size(0) / m.size(1)) ** 0.5
                                for m in done[steps][first:first + n]]).to(p.dtype)
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
