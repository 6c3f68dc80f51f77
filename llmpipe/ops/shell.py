"""The uniform stage shell: what `llmpipe <stage>` does around every stage core.

It validates the stage's own params sections, checks that every declared input exists, runs the stage
with only those sections, times it, writes data/metrics/<stage>.json and tracks the run in MLflow
(fail-soft: llmpipe.ops.tracking). Under torchrun, rank 0 alone writes metrics and tracks.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import time
from pathlib import Path

from llmpipe.config.sections import load_sections
from llmpipe.stages.registry import Stage, StageFailed, StageParams, StageResult, producer_of, stage
from llmpipe.util.io import InputError, write_json

log = logging.getLogger("llmpipe")

# Set to a file path, each stage process appends the project modules it imported (checked by a test
# against the code deps in dvc.yaml).
TRACE_IMPORTS_ENV = "LLMPIPE_TRACE_IMPORTS"


def check_inputs(spec: Stage, root: Path) -> None:
    """Every declared input exists, or one error in one wording names it and the stage that makes it."""
    for name in spec.inputs:
        path = spec.inp(name)
        if not (root / path).exists():
            maker = producer_of(str(path))
            raise InputError(f"missing input {path} (made by the {maker} stage: run `dvc repro {maker}`)")


def trace_imports(name: str) -> None:
    dest = os.environ.get(TRACE_IMPORTS_ENV)
    if dest:
        modules = sorted(m for m in sys.modules if m == "llmpipe" or m.startswith("llmpipe."))
        with open(dest, "a", encoding="utf-8") as f:
            f.write(json.dumps({"stage": name, "modules": modules}) + "\n")


def run_stage(name: str, params_path: Path, root: Path) -> dict:
    spec = stage(name)
    sections = load_sections(params_path, (*spec.params, *spec.settings, "tracking"))
    # the stage gets its own sections only
    params = StageParams(**{s: getattr(sections, s) for s in (*spec.params, *spec.settings)})
    check_inputs(spec, root)
    module = importlib.import_module(spec.module)
    if int(os.environ.get("RANK", "0")) != 0:
        return module.run(params, root, sink=None).metrics
    from llmpipe.ops.tracking import start_stage_run

    experiment = sections.tracking
    section_params = {s: getattr(params, s).model_dump(mode="json") for s in spec.params}
    tracker = start_stage_run(root, experiment.experiment, name, section_params)
    t0 = time.perf_counter()
    try:
        result: StageResult = module.run(params, root, sink=tracker.log_metrics)
    except BaseException:
        tracker.end("FAILED")
        raise
    result.metrics.setdefault("seconds", round(time.perf_counter() - t0, 3))
    write_json(root / spec.metrics, result.metrics)
    tracker.log_metrics(result.metrics, step=0)
    tracker.set_tags({f"metric.{k}": v for k, v in result.metrics.items() if isinstance(v, str)})
    for artifact in result.artifacts:
        tracker.log_artifact(artifact)
    if result.failure:  # outputs written (the last good model), but no finished run nor a registered version
        tracker.end("FAILED")
        raise StageFailed(result.failure)
    if result.model_dir is not None:
        from llmpipe.ops.tracking import dvc_lineage_tags, environment_tags, git_commit

        # The model version links back to the data and code that made it, and names its own weights
        # (DVC's hash of the model folder) and what they depend on beyond params and data.
        model_path = result.model_dir.relative_to(root).as_posix()
        own = {f"dvc.out.{model_path}": result.metrics.get("model_dvc_md5"),
               **{f"train.{k}": result.metrics.get(k) for k in ("precision", "device", "cpu", "cpu_bf16_units", "gpu")}}
        own = {k: str(v) for k, v in own.items() if v is not None}
        tracker.set_tags(own)
        lineage = {**dvc_lineage_tags(root, name), "git.commit": git_commit(root) or "unknown", **own,
                   **environment_tags(root), **result.model_tags}
        registered = experiment.registered_model and experiment.registered_model + result.registered_suffix
        for key, md5 in result.model_tags.items():  # a derived model names its base's registered version
            if key.startswith("base.dvc.out.") and experiment.registered_model:
                base_name = experiment.registered_model + result.base_registered_suffix
                base = tracker.find_model_version(base_name, key.removeprefix("base."), md5)
                lineage["base.model_version"] = f"models:/{base_name}/{base}" if base else "unregistered"
        tracker.set_tags({k: v for k, v in lineage.items() if k.startswith("base.")})
        version = tracker.log_model(result.model_dir, registered, lineage)
        if version:
            log.info("registered model %s version %s", registered, version)
    tracker.end("FINISHED")
    trace_imports(name)
    return result.metrics
