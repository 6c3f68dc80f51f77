"""The tail average of the weights (`pretrain.tail_average`): the mean of the weights after each of the
run's last steps, the model that is saved instead of the last step's (LAWA, SWA without a cyclic rate).

The mean is kept in float32 beside the model and goes into every checkpoint (`average.safetensors`),
so a resumed run averages exactly the steps an unbroken run would."""

from __future__ import annotations

import torch


class TailAverage:
    def __init__(self, model: torch.nn.Module, fraction: float):
        self.model, self.fraction = model, fraction
        self.mean: dict[str, torch.Tensor] = {}
        self.count = 0

    def first_step(self, max_steps: int) -> int:
        """The first step (1-based, counted after its update) whose weights enter the mean."""
        return max_steps - max(int(round(self.fraction * max_steps)), 1) + 1

    @torch.no_grad()
    def update(self, done: int, max_steps: int) -> None:
        """Add the weights after step `done` when it lies in the tail (a running mean: no sum to overflow)."""
        if self.fraction <= 0 or done < self.first_step(max_steps):
            return
        self.count += 1
        for name, p in self.model.named_parameters():  # tied weights once; buffers never train
            if name not in self.mean:
                self.mean[name] = p.detach().float().clone()
            else:
                self.mean[name].lerp_(p.detach().float(), 1.0 / self.count)

    @torch.no_grad()
    def apply(self) -> None:
        """Put the mean into the model (the run's end)."""
        if not self.count:
            return
        params = dict(self.model.named_parameters())
        for name, mean in self.mean.items():
            params[name].copy_(mean.to(params[name].dtype))

    def state(self) -> tuple[dict[str, torch.Tensor], int]:
        return {k: v.contiguous() for k, v in self.mean.items()}, self.count

    def restore(self, tensors: dict[str, torch.Tensor], count: int) -> None:
        self.mean = {k: v.float().clone() for k, v in tensors.items()}
        self.count = count
