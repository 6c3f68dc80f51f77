"""What every training run shares (pretrain and finetune): batches, the AdamW settings, the learning
rate's warmup, clipping, device, precision and the intervals of evaluation, logging and checkpoints.
Each section subclasses it and changes the defaults that differ (finetuning: fewer steps, lower lr)."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import Field, model_validator

from llmpipe.config.base import Seed, Section


class TrainingRun(Section):
    micro_batch_size: Annotated[int, Field(ge=1)] = 16
    grad_accum_steps: Annotated[int, Field(ge=1)] = 1
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

    @model_validator(mode="after")
    def _warmup_fits(self) -> "TrainingRun":
        if self.warmup_steps > self.max_steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) exceeds max_steps ({self.max_steps})")
        return self


def check_repeat_share(key: str, share: float, rows: int, rows_key: str) -> None:
    """Refuse a share of `rows` rows that repeats none (rounded as llmpipe/tokens/loader.py's
    repeat_count rounds: the config layer sits below it), naming the smallest share that repeats one."""
    if share and int(share * rows + 0.5) == 0:
        smallest = math.ceil(1e4 / (2 * rows)) / 1e4  # rounded up: itself accepted
        raise ValueError(f"{key} ({share}): repeats no row of {rows_key} ({rows}); "
                         f"the smallest share that repeats one is {smallest:g}")
