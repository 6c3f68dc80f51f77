"""Serve the pipeline flow as a Prefect deployment with the cron schedule of params.yaml.

    prefect server start                                   # a local server (SQLite), http://127.0.0.1:4200
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    python -m flows.deploy                                 # registers the deployment and runs its schedule
    prefect deployment run llmpipe/llmpipe-scheduled       # a run by hand (from another shell)

`serve()` keeps this process alive: it is the worker that executes scheduled and hand-triggered runs,
in this checkout. The schedule is not paused when the process stops, so a restart picks it up again.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from llmpipe.config.ops import ScheduleParams
from llmpipe.stages.params import load_params

from .pipeline import REPO_ROOT, pipeline


def deployment_spec(root: Path, schedule: ScheduleParams) -> dict:
    """What `serve` registers: name, cron, timezone and the flow parameters of every scheduled run."""
    return {"name": schedule.name, "cron": schedule.cron, "timezone": schedule.timezone,
            "parameters": {"root": str(root), **schedule.parameters}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(REPO_ROOT), help="the checkout the scheduled runs work in")
    args = parser.parse_args()
    root = Path(args.root).resolve()
    spec = deployment_spec(root, load_params(root / "params.yaml").schedule)
    from prefect import serve
    from prefect.schedules import Cron

    deployment = pipeline.to_deployment(spec["name"], schedule=Cron(spec["cron"], timezone=spec["timezone"]),
                                        parameters=spec["parameters"],
                                        description="the llmpipe pipeline, stage by stage through DVC")
    serve(deployment, pause_on_shutdown=False)


if __name__ == "__main__":
    main()
