"""The sft_data, finetune and chat_eval sections: from a base model to an assistant."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from llmpipe.config.base import Seed, Section
from llmpipe.config.training import TrainingRun, check_repeat_share


class DemoInstructions(Section):
    """The checkable instruction set made from the corpus's plays (llmpipe.data.playqa); items of val
    documents (the split section's, as in pretraining) are held out."""

    enabled: bool = True
    train_items: Annotated[int, Field(ge=0)] = 4000
    val_items: Annotated[int, Field(ge=0)] = 300
    max_speeches: Annotated[int, Field(ge=2, le=20)] = 3  # speeches in a passage
    max_lines: Annotated[int, Field(ge=1, le=20)] = 2  # lines kept of each speech
    max_chars: Annotated[int, Field(ge=40)] = 320  # characters of a passage ("Speaker: line" layout)
    # The reply to "which line follows" repeats the quoted line first, then the answer as the passage
    # writes it: a small model finds a line by content only by continuing a copy (docs/assistant.md).
    # chat-eval and rl score what follows the repeat.
    quote_first: bool = True
    # A who-says question writes its passage with each line's speaker after it, "line (Speaker)", and,
    # with quote_first, its reply repeats the quoted line with its tag: the name is then where a copy of
    # the line runs on to, as the next line is (docs/assistant.md). The other questions keep the layout.
    speaker_tags: bool = True


class SftDataParams(Section):
    # Instruction files (globs, relative to the repository): Alpaca JSON/JSONL, ShareGPT, OpenAI messages
    # JSONL, optionally gzipped. They are not DVC deps: after editing them, `dvc repro -f sft-data`.
    files: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    val_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.05  # of the files' records, by a hash
    seed: Seed = 0
    demo: DemoInstructions = DemoInstructions()
    # Tokens an example may have (the finetuned model's context: at most pretrain.model.block_size);
    # longer conversations are counted as too_long.
    block_size: Annotated[int, Field(ge=8, le=131072)] = 256
    # packed: examples back to back in rows of block_size + 1 tokens; padded: one example a row.
    layout: Literal["packed", "padded"] = "packed"


class PretrainingMix(Section):
    """Rows of the train split's pretraining text replayed in every finetuning micro-batch (as
    InstructGPT's PPO-ptx mixes pretraining gradients in): finetuning alone wears down the base
    model's copying (at half the context back, docs/assistant.md), which the passage questions need (issue 26)."""

    rows: Annotated[int, Field(ge=0, le=4096)] = 0  # per micro-batch; 0: none
    # of them showing their first half twice (pretrain.repeat_share's rows), which only copying predicts
    repeat_share: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    # loss weight of each of their tokens (an answer token weighs 1); the loss is the weighted mean
    weight: Annotated[float, Field(gt=0.0, le=1.0)] = 0.1
    # of their targets, the share that goes through the output layer, each at weight / target_share (the
    # same loss in expectation): on a small model the 8,192-word output layer is most of a text row's cost
    target_share: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0

    @model_validator(mode="after")
    def _repeats_a_row(self) -> "PretrainingMix":
        if self.rows:
            check_repeat_share("repeat_share", self.repeat_share, self.rows, "mix.rows")
        return self


class FinetuneParams(TrainingRun):
    """Full finetuning of the pretrained model on the sft-data examples, loss on the assistant's tokens
    (the shared training settings, with finetuning's defaults: fewer steps, a lower lr, no decay)."""

    max_steps: Annotated[int, Field(ge=1)] = 150
    lr: Annotated[float, Field(gt=0.0, le=1.0)] = 1e-3
    schedule: Literal["cosine", "linear", "constant"] = "cosine"  # after the warmup
    warmup_steps: Annotated[int, Field(ge=0)] = 10
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.0
    # token: every answer token weighs 1, so a long reply outweighs a one-token answer; reply: every reply
    # weighs the same in total (its tokens 1/its length, scaled to the same sum).
    reply_weight: Literal["token", "reply"] = "reply"
    mix: PretrainingMix = PretrainingMix()


class ChatEvalParams(Section):
    """Exact match on the held-out items, base and finetuned model alike (same prompt, greedy)."""

    max_items: Annotated[int, Field(ge=1)] | None = None  # null: every held-out item
    # a quoted line and its answer take up to ~44 tokens; less than the longest reply: the stage refuses
    max_new_tokens: Annotated[int, Field(ge=1, le=4096)] = 48
    batch_size: Annotated[int, Field(ge=1, le=1024)] = 32
    samples: Annotated[int, Field(ge=0)] = 12  # conversations written to the samples file
    # evaluate's copy probes (llmpipe/evals/copying.py, at half the context and at varied distances) on
    # every model here, over this many spans of the whole val split (evaluate's spans when
    # evaluate.max_tokens is null and both copy_spans agree): does finetuning keep the copying the
    # questions need? 0: not measured.
    copy_spans: Annotated[int, Field(ge=0)] = 32
