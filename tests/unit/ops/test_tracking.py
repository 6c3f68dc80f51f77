import hashlib
import logging
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from llmpipe.ops.tracking import Tracker, start_stage_run, tracking_uri


def test_stage_run_records_params_metrics_and_artifacts(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("LLMPIPE_PARENT_RUN_ID", "")
    art = tmp_path / "a.txt"
    art.write_text("artifact")
    t = start_stage_run(tmp_path, "exp", "filter", {"filter": {"languages": ["en"], "min_chars": 200}})
    for step in range(1, 1201):
        t.log_metrics({"loss": 1.0 / step}, step)  # buffered, sent in batches
    t.log_metrics({"docs_out": 5})
    t.log_artifact(art)
    t.end()
    client = MlflowClient(tracking_uri(tmp_path))
    run = client.get_run(t.run_id)
    assert run.data.params["filter.min_chars"] == "200"
    assert run.data.tags["llmpipe.stage"] == "filter"
    assert run.info.status == "FINISHED"
    assert len(client.get_metric_history(t.run_id, "loss")) == 1200
    assert run.data.metrics["docs_out"] == 5
    assert [a.path for a in client.list_artifacts(t.run_id)] == ["a.txt"]


def test_unreachable_server_warns_once_and_costs_no_time(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # the discard port: nothing listens
    t0 = time.perf_counter()
    with caplog.at_level(logging.WARNING):
        t = Tracker(tmp_path, "exp", "x")
        t.log_params({"a": 1})
        t.log_metrics({"loss": 1.0}, 1)
        t.end()
    assert time.perf_counter() - t0 < 10
    assert t.run_id is None
    assert sum("tracking disabled" in r.message for r in caplog.records) == 1


def test_stage_run_records_its_environment(tmp_path, monkeypatch):
    import platform
    import shutil

    import torch

    from llmpipe.util import envlock

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("LLMPIPE_PARENT_RUN_ID", "")
    repo_lock = Path(__file__).resolve().parents[3] / "requirements" / "dev.lock"
    (tmp_path / "requirements").mkdir()
    shutil.copy(repo_lock, tmp_path / "requirements" / "dev.lock")
    # the copy scripts/setup.sh leaves in the venv: this environment was installed from dev.lock
    monkeypatch.setattr(envlock, "installed_lock", lambda: repo_lock)
    tags = MlflowClient(tracking_uri(tmp_path)).get_run(start_stage_run(tmp_path, "exp", "filter", {}).run_id).data.tags
    assert tags["env.lock_sha256"] == hashlib.sha256(repo_lock.read_bytes()).hexdigest()
    assert tags["env.lock"] == "requirements/dev.lock" and tags["env.matches_lock"] == "true"
    assert tags["env.python"] == platform.python_version() and tags["env.torch"] == torch.__version__
    # an environment not made by setup.sh says so, instead of claiming a lock
    monkeypatch.setattr(envlock, "installed_lock", lambda: tmp_path / "absent.lock")
    tags = MlflowClient(tracking_uri(tmp_path)).get_run(start_stage_run(tmp_path, "exp", "filter", {}).run_id).data.tags
    assert tags["env.lock_sha256"] == "unlocked" and tags["env.lock"] == "none"
