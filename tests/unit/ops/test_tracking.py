import logging
import time

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
