"""Which typed model validates which section of params.yaml, loaded lazily.

A stage process validates only the sections it reads (and that every top-level key is a known
section), importing only those sections' modules: editing the pretrain params model then re-runs
pretrain, not scrape. `llmpipe validate`, `llmpipe params` and the Prefect flow validate the whole file
(llmpipe.stages.params).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import SimpleNamespace

from pydantic import ValidationError

from llmpipe.config.base import ParamsError, Section, format_errors, read_yaml

# section -> "module:Class", in params.yaml's order. The scrape section lives with the source
# plug-ins (one module per kind), so that a new kind of source is one new file.
SECTIONS: dict[str, str] = {
    "scrape": "llmpipe.data.sources:ScrapeParams",
    "filter": "llmpipe.config.filter:FilterParams",
    "dedup": "llmpipe.config.dedup:DedupParams",
    "split": "llmpipe.config.tokens:SplitParams",
    "tokenizer": "llmpipe.config.tokens:TokenizerParams",
    "tokenize": "llmpipe.config.tokens:TokenizeParams",
    "pretrain": "llmpipe.config.pretrain:PretrainParams",
    "evaluate": "llmpipe.config.evaluate:EvaluateParams",
    "sample": "llmpipe.config.sample:SampleParams",
    "tasks": "llmpipe.config.evals:TasksParams",  # issue 16: benchmark evaluation
    "benchmark": "llmpipe.config.evals:BenchmarkParams",
    "sft_data": "llmpipe.config.sft:SftDataParams",
    "finetune": "llmpipe.config.sft:FinetuneParams",
    "rl": "llmpipe.config.rl:RlParams",  # issue 26: the reward stage
    "chat_eval": "llmpipe.config.sft:ChatEvalParams",
    "trace": "llmpipe.config.trace:TraceParams",  # issue 28: tracing text into the training data
    "tracking": "llmpipe.config.ops:TrackingParams",
    "schedule": "llmpipe.config.ops:ScheduleParams",
    "scale": "llmpipe.config.ops:ScaleParams",
}


def section_module(name: str) -> str:
    return SECTIONS[name].split(":")[0]


def section_model(name: str) -> type[Section]:
    module, cls = SECTIONS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def check_top_level(data: dict, path: Path | str) -> None:
    unknown = [k for k in data if k not in SECTIONS]
    if unknown:
        raise ParamsError(f"{path}: invalid parameters\n" + "\n".join(f"  {k}: unknown section" for k in unknown))


def validate_section(name: str, data: dict, path: Path | str) -> Section:
    raw = data.get(name)
    try:
        return section_model(name).model_validate(raw if raw is not None else {})
    except ValidationError as err:
        raise ParamsError(format_errors(path, err, data, prefix=(name,))) from None


def load_sections(path: Path | str, names: list[str] | tuple[str, ...]) -> SimpleNamespace:
    """The named sections of a params file, validated; the rest of the file only by its section names."""
    data = read_yaml(path)
    check_top_level(data, path)
    errors, out = [], {}
    for name in names:
        try:
            out[name] = validate_section(name, data, path)
        except ParamsError as err:
            errors.append(str(err).split("\n", 1)[1])
    if errors:
        raise ParamsError(f"{path}: invalid parameters\n" + "\n".join(errors))
    return SimpleNamespace(**out)
