"""The Prefect flow under prefect_test_harness: one task per DVC stage, MLflow runs nested under one parent."""

import pytest
from mlflow.tracking import MlflowClient

from llmpipe.stages.registry import STAGE_NAMES as STAGES

from tests.conftest import TINY_PARAMS, copy_repo

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_flow_runs_every_stage_then_finds_all_cached(harness, tmp_path):
    from flows.pipeline import pipeline

    repo = copy_repo(tmp_path / "repo", TINY_PARAMS)
    rows = pipeline(root=str(repo))
    assert [r["stage"] for r in rows] == STAGES
    assert all(r["status"] == "ran" for r in rows)

    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name("llmpipe-test")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("llmpipe.kind") == "pipeline"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(r.data.tags["llmpipe.stage"] for r in children) == sorted(STAGES)
    flow_run_id = parents[0].data.tags["prefect.flow_run_id"]
    assert flow_run_id and all(r.data.tags.get("prefect.flow_run_id") == flow_run_id for r in children)
    assert "evaluate.bits_per_byte" in parents[0].data.metrics

    again = pipeline(root=str(repo))
    assert all(r["status"] == "cached" for r in again)


def test_a_failing_stage_stops_the_flow_naming_stage_and_cause(harness, tmp_path):
    from flows.pipeline import StageFailed, pipeline

    params = {**TINY_PARAMS, "scrape": {"sources": [{"kind": "local", "paths": ["no-such-dir/*.txt"]}]}}
    repo = copy_repo(tmp_path / "repo", params)
    with pytest.raises(StageFailed, match=r"stage 'scrape' failed.*no documents"):
        pipeline(root=str(repo), retries=0)
    assert not (repo / "data" / "filter").exists()  # nothing after the failed stage ran
