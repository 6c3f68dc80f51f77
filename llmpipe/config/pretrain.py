"""The pretrain section, with the one model config (llmpipe.model.gpt.GPTConfig adds the vocabulary)."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import Field, model_validator

from llmpipe.config.base import Section
from llmpipe.config.training import TrainingRun, check_repeat_share


class ModelParams(Section):
    """The architecture (the vocabulary size comes from the tokenizer: llmpipe.model.gpt.GPTConfig)."""

    n_layer: Annotated[int, Field(ge=1, le=256)] = 4
    n_head: Annotated[int, Field(ge=1, le=256)] = 4
    n_kv_head: Annotated[int, Field(ge=1, le=256)] | None = None
    d_model: Annotated[int, Field(ge=8, le=65536)] = 256
    block_size: Annotated[int, Field(ge=8, le=131072)] = 256
    norm: Literal["rmsnorm", "layernorm"] = "rmsnorm"
    mlp: Literal["swiglu", "gelu", "relu2"] = "swiglu"  # relu2: relu(x)^2, ungated (Primer, nanochat)
    pos: Literal["rope", "learned"] = "rope"
    rope_base: Annotated[float, Field(gt=1.0)] = 10000.0
    tie_embeddings: bool = True
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    # dense: every layer attends to the whole context; alternating: odd layers are local
    # (sliding window of attention_window positions), as in GPT-3's banded sparse layers and GPT-Neo.
    attention_pattern: Literal["dense", "alternating"] = "dense"
    attention_window: Annotated[int, Field(ge=1)] = 128
    # --- speedrun recipe options (issue 18; modded-nanogpt's changes, each switchable) ---
    qk_norm: bool = False  # RMS-normalize each head's queries and keys before RoPE (no gain)
    zero_init_head: bool = False  # start the (untied) output layer at zero: uniform first predictions
    logit_softcap: Annotated[float, Field(gt=0.0)] | None = None  # logits = cap * tanh(logits / cap)
    value_embeds: bool = False  # a second token embedding mixed into every layer's values

    @model_validator(mode="after")
    def _heads_divide(self) -> "ModelParams":
        if self.d_model % self.n_head:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        if (self.d_model // self.n_head) % 2 and self.pos == "rope":
            raise ValueError("head size (d_model / n_head) must be even for RoPE")
        if self.zero_init_head and self.tie_embeddings:
            raise ValueError("zero_init_head needs tie_embeddings: false (a zero head would zero the embeddings)")
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
        hidden = int(8 * self.d_model / 3) if self.mlp == "swiglu" else 4 * self.d_model
        return 64 * math.ceil(hidden / 64)


class BudgetParams(Section):
    """The time-budget dial (llmpipe.training.budget): width, depth and steps follow from `amount` of
    `unit` (minutes of this machine, training tokens, or training FLOPs) and replace model.n_layer,
    model.d_model, model.n_head and max_steps."""

    unit: Literal["minutes", "tokens", "flops"] = "minutes"
    amount: Annotated[float, Field(gt=0.0, le=1e30)] = 5.0
    tokens_per_param: Annotated[float, Field(gt=0.0, le=1e4)] = 20.0  # Chinchilla's by default; params.yaml's from shapes at equal time (docs/recipe.md)
    aspect: Annotated[int, Field(ge=8, le=1024)] = 64  # d_model per layer
    head_dim: Annotated[int, Field(ge=8, le=512)] = 64
    min_layers: Annotated[int, Field(ge=1, le=256)] = 1
    max_layers: Annotated[int, Field(ge=1, le=256)] = 12
    train_fraction: Annotated[float, Field(gt=0.0, le=1.0)] = 0.95  # of the minutes: probes and training; the rest saves
    # rounds of probes over the shapes, each shape's fastest kept: a passing load slows one round only
    probe_rounds: Annotated[int, Field(ge=1, le=10)] = 2

    @model_validator(mode="after")
    def _layers(self) -> "BudgetParams":
        if self.min_layers > self.max_layers:
            raise ValueError(f"min_layers ({self.min_layers}) exceeds max_layers ({self.max_layers})")
        return self


class PretrainParams(TrainingRun):
    model: ModelParams = ModelParams()
    # When set, the dial chooses the model's shape and max_steps (see BudgetParams).
    budget: BudgetParams | None = None
    # The global batch in tokens; when set, grad_accum_steps follows from it and the number of ranks.
    batch_tokens: Annotated[int, Field(ge=1)] | None = None
    # torch.compile the model: worth it on GPUs; on CPU its gain is small beside the compile's time.
    compile: bool = False
    # Under torchrun: ddp replicates the model on every rank; fsdp shards parameters, gradients and
    # optimizer state across ranks (FSDP2), for models that do not fit one device.
    parallel: Literal["ddp", "fsdp"] = "ddp"
    # --- speedrun recipe options (issue 18) ---
    # muon: the blocks' matrices take Newton-Schulz orthogonalized momentum (Muon) at muon_lr; the
    # embeddings, the output layer and the vectors stay on AdamW at lr.
    optimizer: Literal["adamw", "muon"] = "adamw"
    muon_lr: Annotated[float, Field(gt=0.0, le=1.0)] = 0.02
    muon_momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.95
    # decoupled weight decay of Muon's matrices: w *= 1 - lr_t * muon_weight_decay, with lr_t Muon's
    # scheduled rate, so it ramps to min_lr with the decay (AdamW's matrices take weight_decay likewise)
    muon_weight_decay: Annotated[float, Field(ge=0.0, le=10.0)] = 0.0
    # cosine: warmup then cosine to min_lr; wsd: warmup, flat at lr, then linear to min_lr over the
    # last decay_frac of the steps (warmup-stable-decay, trapezoidal)
    schedule: Literal["cosine", "wsd"] = "cosine"
    decay_frac: Annotated[float, Field(gt=0.0, le=1.0)] = 0.3
    # Rows of a batch start at the next document start when one lies within a block of their random
    # offset (so most rows begin at a document's first token, as in modded-nanogpt)
    doc_aligned: bool = False
    # The saved model is the mean of the weights after each of the last tail_average of the steps
    # (a tail average, as in LAWA and SWA) rather than the last step's; 0: the last step's weights.
    tail_average: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    # The input embedding's own AdamW rate (null: lr), as modded-nanogpt runs its embedding far faster
    # than its output layer; needs model.tie_embeddings: false. Scaled by the schedule like lr.
    embed_lr: Annotated[float, Field(gt=0.0, le=10.0)] | None = None
    # The output layer's own AdamW rate (null: lr); needs model.tie_embeddings: false.
    head_lr: Annotated[float, Field(gt=0.0, le=10.0)] | None = None
    # Sequence-length warm-up: over the first seq_warmup_steps steps, or half the run if that is shorter
    # (0: off), each row is cut into shorter rows, growing through block_size's divisors to block_size.
    # The step's tokens, their order and the batch's token count stay the same; only how far back
    # attention reaches grows (with pos: learned, the later positions train only after it).
    seq_warmup_steps: Annotated[int, Field(ge=0)] = 0
    # The warm-up's first row length (rounded down to a divisor of model.block_size; a block no longer
    # than this has no warm-up).
    seq_warmup_min: Annotated[int, Field(ge=1)] = 64
    # This share of each batch's rows shows its first half twice: natural text whose second showing
    # only copying from the context predicts (issue 26). Every repeat is half a row back, so what a
    # small model learns from them is a copy from that one distance, not induction by content
    # (docs/assistant.md). During the sequence-length warm-up a cut row holds no repeat.
    repeat_share: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0

    @model_validator(mode="after")
    def _batch_given_once(self) -> "PretrainParams":
        if self.batch_tokens is not None and self.grad_accum_steps != 1:
            raise ValueError("set either batch_tokens or grad_accum_steps, not both")
        # the budget's pace moves the run's end until the decay begins; the average must start after
        if self.schedule == "wsd" and self.tail_average > self.decay_frac:
            raise ValueError(f"tail_average ({self.tail_average}) exceeds decay_frac ({self.decay_frac}): "
                             "with schedule wsd the averaged steps must lie inside the decay")
        if self.tail_average and self.parallel == "fsdp":
            raise ValueError("tail_average: not supported with parallel: fsdp (each rank holds a shard of the weights)")
        block, first = self.model.block_size, self.seq_warmup_min
        if self.seq_warmup_steps and block > first:  # rows are cut at block_size's divisors
            near = divisor_at_most(block, first)
            if 2 * near < first:
                raise ValueError(f"seq_warmup_min ({first}): model.block_size ({block}) has no divisor between "
                                 f"{(first + 1) // 2} and {first}, so the warm-up's rows would be {near} tokens; "
                                 "use a block_size with one (a power of two), or seq_warmup_steps: 0")
        check_repeat_share("repeat_share", self.repeat_share, self.micro_batch_size, "a rank's micro_batch_size")
        for key in ("embed_lr", "head_lr"):
            if getattr(self, key) is not None and self.model.tie_embeddings:
                raise ValueError(f"{key}: needs model.tie_embeddings: false (a tied input embedding is the output layer)")
        return self


def divisor_at_most(block: int, cap: float) -> int:
    """The largest divisor of block not above cap (at least 1): the sequence-length warm-up's row lengths."""
    return max(n for n in range(1, min(block, int(cap)) + 1) if block % n == 0) if cap >= 1 else 1
