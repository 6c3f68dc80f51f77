"""The pipeline as a scheduled Prefect deployment, against a real `prefect server start` on 127.0.0.1:
the deployment carries params.yaml's cron, a run triggered through the API completes, and its stage
tasks and summary artifact are visible through the API."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest

from llmpipe.stages.registry import STAGE_NAMES as STAGES

from tests.conftest import TINY_PARAMS, copy_repo, free_port, local_server

pytestmark = pytest.mark.integration

SCHEDULE = {"name": "nightly-test", "cron": "17 4 * * 1", "timezone": "UTC",
            "parameters": {"overrides": {"sample.max_new_tokens": 12}}}


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
           "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false"}
    cmd = ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with local_server(cmd, f"http://127.0.0.1:{port}/api/health", home / "server.log", env):
        yield env


async def _wait_for_run(name: str, env: dict):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.deployments import run_deployment

    async with get_client() as client:
        deadline = time.time() + 120
        while True:  # the serving process registers the deployment shortly after it starts
            try:
                deployment = await client.read_deployment_by_name(f"llmpipe/{name}")
                break
            except Exception:  # noqa: BLE001 - not there yet
                assert time.time() < deadline, "the deployment was never registered"
                await asyncio.sleep(1)
        run = await run_deployment(f"llmpipe/{name}", timeout=0)  # triggered by hand, through the API
        deadline = time.time() + 900
        while True:
            run = await client.read_flow_run(run.id)
            if run.state is not None and run.state.is_final():
                break
            assert time.time() < deadline, f"run still {run.state}"
            await asyncio.sleep(2)
        runs_filter = FlowRunFilter(id=FlowRunFilterId(any_=[run.id]))
        tasks = await client.read_task_runs(flow_run_filter=runs_filter)
        artifacts = await client.read_artifacts(flow_run_filter=runs_filter)
        return deployment, run, tasks, artifacts


def test_scheduled_deployment_runs_through_the_api(prefect_server, tmp_path):
    import yaml

    repo = copy_repo(tmp_path / "repo", {**TINY_PARAMS, "schedule": SCHEDULE})
    env = {**prefect_server, "PYTHONUNBUFFERED": "1"}
    serve_log = open(tmp_path / "serve.log", "w")
    serving = subprocess.Popen([sys.executable, "-m", "flows.deploy", "--root", str(repo)], cwd=repo, env=env,
                               stdout=serve_log, stderr=subprocess.STDOUT)
    try:
        # Only this block talks to the test's server; os.environ is left alone, so the process's own
        # Prefect settings stay as they were (other tests start their own temporary server).
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
            deployment, run, tasks, artifacts = asyncio.run(_wait_for_run(SCHEDULE["name"], env))
    finally:
        serving.terminate()
        serving.wait(60)
        serve_log.close()
    log = (tmp_path / "serve.log").read_text()
    assert [s.schedule.cron for s in deployment.schedules] == [SCHEDULE["cron"]], log[-2000:]
    assert deployment.schedules[0].schedule.timezone == "UTC"
    assert deployment.parameters["overrides"] == SCHEDULE["parameters"]["overrides"]
    assert run.state.is_completed(), (run.state, log[-4000:])
    assert sorted(t.name for t in tasks) == sorted(STAGES)  # one task run per stage
    assert all(t.state.is_completed() for t in tasks)
    summary = [a for a in artifacts if a.key == "llmpipe-summary"]
    assert summary and "| evaluate | ran |" in summary[0].data
    # the run's parameter override reached params.yaml (and so dvc.lock) in the deployment's checkout
    assert yaml.safe_load((repo / "params.yaml").read_text())["sample"]["max_new_tokens"] == 12
    assert (repo / "data" / "samples" / "samples.jsonl").exists()
