"""The rl section: a reward stage after finetuning (group-baseline policy gradient on checkable answers)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from llmpipe.config.base import Seed, Section


class RlParams(Section):
    """Sample `samples_per_question` answers to each of `questions_per_step` train questions, reward an
    exact match with the item's answer (chat-eval's check), and step along the policy gradient with each question's mean reward
    as the baseline (REINFORCE with a group baseline, as GRPO and nanochat's chat RL; one update per
    sample, so no importance ratio or clipping). The defaults keep the demo's extra time short: few
    steps of many questions, each step's gradient averaged over many groups (on the demo's finetuned
    model many small steps lost held-out exact match where few large ones gained: docs/assistant.md
    gives the measured runs)."""

    # false: rl passes the finetuned model through unchanged and registers nothing (a pipeline of
    # instruction files only: free text has no exact-match reward); chat-eval then scores no rl model
    enabled: bool = True
    steps: Annotated[int, Field(ge=1)] = 4
    questions_per_step: Annotated[int, Field(ge=1)] = 32  # train questions drawn per step (seeded by step)
    samples_per_question: Annotated[int, Field(ge=2)] = 8  # a group: its mean reward is the baseline
    temperature: Annotated[float, Field(gt=0.0, le=4.0)] = 1.0  # sampling temperature of the answers
    top_k: Annotated[int, Field(ge=0)] = 0  # 0: the whole vocabulary
    # a longer reply is cut (and scores 0); less than the longest taught reply: the stage refuses to start
    max_new_tokens: Annotated[int, Field(ge=1, le=4096)] = 48
    # divide each group's advantages by its standard deviation (GRPO); off: reward - group mean only
    # (nanochat, Dr. GRPO: the division weights questions the model nearly always or never gets right up)
    normalize_advantage: bool = False
    lr: Annotated[float, Field(gt=0.0, le=1.0)] = 1e-4  # decays linearly to 0 over the steps
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.0  # AdamW's, on matrices and embeddings
    beta1: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9  # AdamW's first-moment decay
    beta2: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.95  # AdamW's second-moment decay
    grad_clip: Annotated[float, Field(ge=0.0)] = 1.0  # the gradient's global norm is clipped to this (0: off)
    micro_batch_size: Annotated[int, Field(ge=1)] = 32  # sampled answers per forward/backward pass
    seed: Seed = 0  # questions and samples of step k depend only on (seed, k): exact resume
    checkpoint_every: Annotated[int, Field(ge=1)] = 2  # steps between checkpoints (only after a varied step)
    # stop when every sampled answer of the batch is the same (after exact match's normalisation) this
    # many steps in a row: the policy has collapsed to one answer
    collapse_steps: Annotated[int, Field(ge=1)] = 3
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when there is a GPU
    # auto: bf16 autocast for the update on CUDA and CPUs with bf16 units, fp32 elsewhere (sampling is fp32)
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    threads: Annotated[int, Field(ge=0)] = 0  # 0: torch's default

