"""The stage registry: every stage declared once.

A declaration names the stage's params sections, its inputs (outputs of earlier stages), its outputs,
plots and retry policy. Everything else follows from this list: the CLI subcommands, the Prefect flow's
order and retries, lineage's chain, the output paths the stages write, and dvc.yaml
(`llmpipe dvc-yaml` writes it; a test fails when the committed file differs).

Adding a stage: write `llmpipe/stages/<name>.py` with `run(params, root, sink=None) -> StageResult`
(`params` holds only the sections the declaration names),
add one `Stage(...)` below, and run `llmpipe dvc-yaml`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

# A stage's own params sections, validated (attribute per section: params.pretrain, params.tasks).
StageParams = SimpleNamespace
# (metrics, step) -> None. The shell passes one that buffers into MLflow; tests pass None.
MetricsSink = Callable[[dict[str, float], int], None]


@dataclass
class StageResult:
    """What a stage returns to the shell: metrics for DVC and MLflow, files worth tracking."""

    metrics: dict[str, float | int | str]
    artifacts: list[Path] = field(default_factory=list)
    # A model folder to log as the run's "model" artifact and register in the MLflow Model Registry.
    model_dir: Path | None = None
    # Registered as tracking.registered_model + this suffix (a finetune: "-chat"), with these extra tags;
    # a tag "base.dvc.out.<path>" names the base model's weights, whose registered version the shell finds.
    registered_suffix: str = ""
    model_tags: dict[str, str] = field(default_factory=dict)
    # the registered name of the base model is tracking.registered_model + this suffix (rl's base: "-chat")
    base_registered_suffix: str = ""
    # set when the stage stopped early but wrote its outputs (rl's last good checkpoint): the shell writes
    # the metrics and artifacts, registers no model, and fails the run with this message
    failure: str | None = None


class StageFailed(RuntimeError):
    """A stage stopped early after writing what it could (StageResult.failure)."""


@dataclass(frozen=True)
class Out:
    path: str
    # "data" is lineage (what a model is made of); "state" survives re-runs (persist, never cached),
    # e.g. training checkpoints; "report" is an audit of the stage, cached but not lineage.
    kind: str = "data"


@dataclass(frozen=True)
class Plot:
    path: str
    x: str
    y: str


@dataclass(frozen=True)
class Stage:
    name: str
    help: str
    params: tuple[str, ...]  # the params.yaml sections the stage reads (its DVC params)
    inputs: dict[str, str] = field(default_factory=dict)  # name -> "<stage>.<output>"
    outputs: dict[str, Out] = field(default_factory=dict)
    plots: dict[str, Plot] = field(default_factory=dict)
    retries: int = 0  # the Prefect flow retries a failed run this many times (network stages)
    # Sections the stage reads that cannot change its outputs (where shards run): not DVC params.
    settings: tuple[str, ...] = ()

    @property
    def module(self) -> str:
        return f"llmpipe.stages.{self.name.replace('-', '_')}"  # sft-data -> llmpipe.stages.sft_data

    @property
    def metrics(self) -> str:
        return f"data/metrics/{self.name}.json"

    def out(self, name: str) -> Path:
        """The path (relative to the repository root) of one of this stage's outputs or plots."""
        if name in self.outputs:
            return Path(self.outputs[name].path)
        return Path(self.plots[name].path)

    def inp(self, name: str) -> Path:
        producer, output = self.inputs[name].split(".")
        return stage(producer).out(output)

    def upstream(self) -> list[str]:
        return sorted({ref.split(".")[0] for ref in self.inputs.values()})


STAGES: list[Stage] = [
    Stage("scrape", "read the sources into Parquet documents", ("scrape",),
          outputs={"docs": Out("data/scrape/docs"), "report": Out("data/scrape/report.json", "report")},
          retries=2, settings=("scale",)),
    Stage("filter", "language ID and quality rules", ("filter",), {"docs": "scrape.docs"},
          {"docs": Out("data/filter/docs"), "report": Out("data/filter/report.json", "report")},
          settings=("scale",)),
    Stage("dedup", "exact and MinHash near-duplicate removal", ("dedup",), {"docs": "filter.docs"},
          {"docs": Out("data/dedup/docs.parquet"), "removed": Out("data/dedup/removed.parquet", "report"),
           "report": Out("data/dedup/report.json", "report"), "index": Out("data/dedup/index")},
          settings=("scale",)),  # scale.dask_address: the signature pass on a Dask cluster
    # issue 25: the train/val side of every document, decided once, by group, decontaminated
    Stage("split", "group the documents, split train/val, move contaminated val documents to train", ("split",),
          {"docs": "dedup.docs"},
          {"assignments": Out("data/split/assignments.parquet"), "report": Out("data/split/report.json", "report")}),
    Stage("tokenizer", "train the byte-level BPE tokenizer", ("tokenizer",),
          {"docs": "dedup.docs", "split": "split.assignments"}, {"tokenizer": Out("data/tokenizer/tokenizer.json")}),
    Stage("tokenize", "encode the documents into token shards", ("tokenize",),
          {"docs": "dedup.docs", "split": "split.assignments", "tokenizer": "tokenizer.tokenizer"},
          {"tokens": Out("data/tokens")}),
    # issue 28: an exact-match index of the training tokens (a suffix array) for `llmpipe trace`
    Stage("trace-index", "index the training tokens for tracing text into the training data", (),
          {"tokens": "tokenize.tokens", "tokenizer": "tokenizer.tokenizer"},
          {"index": Out("data/trace", "report")}),
    # issue 16: the benchmark items (a fixed subset per task, the in-domain task, the contamination index);
    # "report" outputs: the model's weights do not depend on them, so they are no part of its lineage
    Stage("tasks", "choose the benchmark items, build the in-domain task, check contamination",
          ("tasks",), {"docs": "dedup.docs", "split": "split.assignments"},
          {"tasks": Out("data/evals/tasks", "report"), "inloop": Out("data/evals/inloop.jsonl", "report"),
           "index": Out("data/evals/index", "report"), "report": Out("data/evals/contamination.json", "report")}),
    Stage("pretrain", "train the GPT on the token shards", ("pretrain",),
          {"tokens": "tokenize.tokens", "tokenizer": "tokenizer.tokenizer", "inloop": "tasks.inloop"},
          {"model": Out("data/model"), "loss_png": Out("data/plots/loss.png", "report"),
           "checkpoints": Out("data/checkpoints", "state")},
          {"train": Plot("data/plots/train.tsv", "tokens", "loss"),
           "val": Plot("data/plots/val.tsv", "tokens", "val_loss"),
           "bench": Plot("data/plots/bench.tsv", "tokens", "acc_norm")}),
    Stage("evaluate", "held-out loss and bits per byte", ("evaluate",),
          {"model": "pretrain.model", "tokens": "tokenize.tokens", "tokenizer": "tokenizer.tokenizer"}),
    Stage("benchmark", "score the benchmark suite: accuracy per task, CORE-style mean, contamination",
          ("benchmark",), {"model": "pretrain.model", "tokenizer": "tokenizer.tokenizer", "tasks": "tasks.tasks",
                           "report": "tasks.report", "bench": "pretrain.bench", "inloop": "tasks.inloop"},
          {"table": Out("data/evals/benchmark.md", "report"), "results": Out("data/evals/benchmark.json", "report")}),
    Stage("sample", "generate text from the prompts", ("sample",),
          {"model": "pretrain.model", "tokenizer": "tokenizer.tokenizer"},
          {"samples": Out("data/samples/samples.jsonl", "report")}),
    # From a base model to an assistant: instruction data, finetuning, and exact match on held-out items.
    Stage("sft-data", "instruction data to chat-format examples with a loss mask", ("sft_data",),
          {"docs": "dedup.docs", "split": "split.assignments", "tokenizer": "tokenizer.tokenizer"},
          {"train": Out("data/sft/train"), "val": Out("data/sft/val"),
           "report": Out("data/sft/report.json", "report")}),
    Stage("finetune", "finetune the pretrained model on the instruction examples", ("finetune",),
          {"model": "pretrain.model", "train": "sft-data.train", "val": "sft-data.val", "tokens": "tokenize.tokens"},
          {"model": Out("data/finetune/model"), "checkpoints": Out("data/finetune/checkpoints", "state")},
          {"train": Plot("data/plots/finetune.tsv", "step", "answer_loss")}),  # with finetune.mix, loss is mostly text
    # issue 26: a reward stage: exact-match rewards on the train questions, a group-baseline policy gradient
    Stage("rl", "train the finetuned model on rewarded answers to the train questions (group baseline)", ("rl",),
          {"model": "finetune.model", "train": "sft-data.train", "tokenizer": "tokenizer.tokenizer"},
          {"model": Out("data/rl/model"), "checkpoints": Out("data/rl/checkpoints", "state")},
          {"train": Plot("data/plots/rl.tsv", "step", "mean_reward")}),
    # the train items give the majority-answer baseline (issue 25)
    Stage("chat-eval", "exact match on held-out instructions: base, finetuned and rl side by side, vs trivial baselines",
          ("chat_eval",), {"base": "pretrain.model", "model": "finetune.model", "rl": "rl.model", "val": "sft-data.val",
                           "train": "sft-data.train", "tokenizer": "tokenizer.tokenizer", "tokens": "tokenize.tokens"},
          {"samples": Out("data/chat_eval/samples.jsonl", "report")}),
]

_BY_NAME = {s.name: s for s in STAGES}
STAGE_NAMES = list(_BY_NAME)


def stage(name: str) -> Stage:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"no stage {name!r}; stages: {', '.join(_BY_NAME)}") from None


def output(ref: str) -> Path:
    """The path of "<stage>.<output>", e.g. output("dedup.docs") -> data/dedup/docs.parquet."""
    name, _, out = ref.partition(".")
    return stage(name).out(out)


def producer_of(path: str) -> str | None:
    """The stage that writes `path` (an output or plot), or None."""
    for s in STAGES:
        if any(o.path == path for o in s.outputs.values()) or any(p.path == path for p in s.plots.values()):
            return s.name
    return None


def check() -> None:
    """The registry is consistent: inputs name earlier stages' outputs (or plots, e.g. the in-loop curves the
    benchmark reads), so list order is a valid run order."""
    seen: set[str] = set()
    for s in STAGES:
        for name, ref in s.inputs.items():
            producer, _, output = ref.partition(".")
            if producer not in seen:
                raise ValueError(f"stage {s.name}: input {name} comes from {producer!r}, which is not an earlier stage")
            if output not in stage(producer).outputs and output not in stage(producer).plots:  # DVC plots are outs
                raise ValueError(f"stage {s.name}: input {name}: stage {producer} has no output {output!r}")
        seen.add(s.name)
