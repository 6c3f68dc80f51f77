"""The Prefect flow: one task per DVC stage, in dependency order.

Each task runs `dvc repro --single-item <stage>`, so DVC decides what is stale and the cache is shared
with a plain `dvc repro`. The flow opens a parent MLflow run and passes its id to the stage processes,
which open nested runs under it. It ends with a per-stage summary (ran or cached, seconds), printed and
published as a Prefect artifact.

    python -m flows.pipeline            # ephemeral Prefect, no server needed
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from llmpipe.config.base import ParamsError
from llmpipe.ops.tracking import FLOW_RUN_ENV, PARENT_ENV, Tracker, git_commit
from llmpipe.stages.params import load_params, parse_params
from llmpipe.stages.registry import STAGES
from llmpipe.util.io import write_text

REPO_ROOT = Path(__file__).resolve().parent.parent
# DVC's advice after each stage ("git add dvc.lock ...") is noise inside a flow.
DVC_HINTS = ("To track the changes with git", "\tgit add ", "To enable auto staging", "dvc config core.autostage",
             "Use `dvc push`")


class StageFailed(RuntimeError):
    pass


def run_dvc_stage(stage: str, root: Path, env: dict[str, str], force: bool = False) -> dict:
    """Reproduce one DVC stage, streaming its output; returns {stage, status, seconds}."""
    cmd = ["dvc", "repro", "--single-item", stage] + (["--force"] if force else [])
    t0 = time.perf_counter()
    tail: collections.deque[str] = collections.deque(maxlen=40)
    skipped = False
    with subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1) as proc:
        for line in proc.stdout:
            if not line.startswith(DVC_HINTS) and not (line.strip() == "" and tail and tail[-1] == ""):
                sys.stdout.write(line)
            tail.append(line.rstrip())
            if f"Stage '{stage}' didn't change" in line:
                skipped = True
        code = proc.wait()
    seconds = round(time.perf_counter() - t0, 1)
    if code != 0:
        # Prefer the stage's own message ("llmpipe <stage>: error: ...") over DVC's summary line.
        ours = [ln for ln in tail if ln.startswith(f"llmpipe {stage}: ")]
        theirs = [ln for ln in tail if "error" in ln.lower() or "failed" in ln.lower()]
        cause = (ours or theirs or list(tail) or ["no output"])[-1]
        raise StageFailed(f"stage '{stage}' failed (exit {code}): {cause}")
    return {"stage": stage, "status": "cached" if skipped else "ran", "seconds": seconds}


@task(name="dvc-stage", cache_policy=NO_CACHE, task_run_name="{stage}")
def stage_task(stage: str, root: str, env: dict[str, str], force: bool = False) -> dict:
    result = run_dvc_stage(stage, Path(root), env, force)
    get_run_logger().info("%s: %s in %.1f s", stage, result["status"], result["seconds"])
    return result


def prefect_api_url() -> str | None:
    """The API this flow talks to: the configured server, or the temporary one Prefect started for it."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if url:
        return url
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    return server.api_url if server.running else None


def summary_markdown(rows: list[dict], headline: dict) -> str:
    lines = ["| stage | status | seconds |", "|---|---|---|"]
    lines += [f"| {r['stage']} | {r['status']} | {r['seconds']} |" for r in rows]
    if headline:
        lines += ["", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in headline.items()]
    return "\n".join(lines)


def headline_metrics(root: Path) -> dict:
    import json

    out = {}
    for stage, key in (("evaluate", "val_loss"), ("evaluate", "bits_per_byte"), ("evaluate", "ngram_bits_per_byte"),
                       ("evaluate", "compressor_bits_per_byte"), ("evaluate", "perplexity"),
                       ("pretrain", "tokens_per_s"), ("tokenize", "train_tokens"),
                       ("benchmark", "core"), ("benchmark", "hellaswag_acc_norm"), ("benchmark", "indomain_acc_norm"),
                       ("chat-eval", "finetuned_acc"), ("chat-eval", "best_baseline_acc"),
                       ("chat-eval", "gain_over_best_baseline"), ("chat-eval", "gain_p_value"), ("chat-eval", "base_acc"),
                       ("chat-eval", "rl_acc"), ("chat-eval", "rl_gain_over_sft"), ("chat-eval", "rl_gain_over_sft_p_value")):
        path = root / "data" / "metrics" / f"{stage}.json"
        if path.exists():
            value = json.loads(path.read_text()).get(key)
            if value is not None:
                out[f"{stage}.{key}"] = round(value, 4) if isinstance(value, float) else value
    return out


def apply_overrides(params_path: Path, overrides: dict[str, Any]) -> None:
    """Set dotted keys of params.yaml ({"pretrain.max_steps": 400, "scrape.sources": [...]}), as
    `dvc exp run -S` does: validated in full first, then written atomically, so DVC sees the change
    and dvc.lock records it."""
    data = yaml.safe_load(params_path.read_text(encoding="utf-8")) or {}
    for key, value in overrides.items():
        node = data
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ParamsError(f"override {key!r}: {part} is not a section")
        node[last] = value
    parse_params(data, params_path)
    write_text(params_path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


@flow(name="llmpipe", log_prints=True)
def pipeline(root: str = str(REPO_ROOT), force: bool = False, overrides: dict[str, Any] | None = None,
             retries: int | None = None) -> list[dict]:
    """Run the registry's stages through DVC, in order; returns the per-stage summary. `overrides`
    (dotted params keys) are written into params.yaml first: a scheduled run can train on a new source
    list. `retries` replaces every stage's declared retries (None: the registry's; 0: fail fast)."""
    logger = get_run_logger()
    root_path = Path(root).resolve()
    if overrides:
        apply_overrides(root_path / "params.yaml", overrides)
        logger.info("params.yaml overrides: %s", overrides)
    params = load_params(root_path / "params.yaml")  # bad params stop the flow before any work
    parent = Tracker(root_path, params.tracking.experiment, "pipeline",
                     tags={"llmpipe.kind": "pipeline", "git.commit": git_commit(root_path) or "unknown",
                           "prefect.flow_run_id": str(flow_run.get_id() or "")})
    env = dict(os.environ)
    if parent.run_id:
        env[PARENT_ENV] = parent.run_id
    if flow_run.get_id():
        env[FLOW_RUN_ENV] = str(flow_run.get_id())
    if prefect_api_url() and "PREFECT_API_URL" not in env:
        env["PREFECT_API_URL"] = prefect_api_url()  # the data stages' shard flows reuse our server
    rows: list[dict] = []
    status = "FAILED"
    try:
        for spec in STAGES:
            # Stages that talk to the network declare retries for transient failures.
            n = spec.retries if retries is None else retries
            runner = stage_task.with_options(retries=n, retry_delay_seconds=5) if n else stage_task
            rows.append(runner(spec.name, str(root_path), env, force))
        status = "FINISHED"
    finally:
        headline = headline_metrics(root_path)
        parent.log_metrics(headline)
        parent.end(status)
        table = summary_markdown(rows, headline)
        create_markdown_artifact(key="llmpipe-summary", markdown=f"# llmpipe run\n\n{table}",
                                 description="per-stage status and headline metrics")
        logger.info("pipeline summary:\n%s", table)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the llmpipe pipeline as a Prefect flow.")
    parser.add_argument("--root", default=str(REPO_ROOT))
    parser.add_argument("--force", action="store_true", help="re-run every stage even if DVC finds it up to date")
    args = parser.parse_args()
    rows = pipeline(root=args.root, force=args.force)
    print("\n".join(f"{r['stage']:>10}  {r['status']:>6}  {r['seconds']:>7.1f} s" for r in rows))


if __name__ == "__main__":
    main()
