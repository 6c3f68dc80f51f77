import hashlib
import logging
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from llmpipe.ops.tracking import Tracker, start_stage_run, tracking_uri
from llmpipe.util.io import dvc_md5


def test_stage_run_records_params_metrics_and_artifacts(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("LLMPIPE_PARENT_RUN_ID", "")
    art = tmp_path / "a.txt"
    art.write_text("artifact")
    scraped = tmp_path / "data" / "scrape" / "docs"  # filter's input, with no dvc.lock: hashed as DVC would
    scraped.mkdir(parents=True)
    (scraped / "part-0.parquet").write_bytes(b"not really parquet")
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
    assert inputs_of(client, t.run_id) == {("data/scrape/docs", dvc_md5(scraped), "docs")}

    # tokenize reads two inputs: one dvc.lock versioned (its hash is the lock's), one not yet (hashed)
    tok = tmp_path / "data" / "tokenizer" / "tokenizer.json"
    tok.parent.mkdir(parents=True)
    tok.write_text("{}")
    lock = {"stages": {"dedup": {"outs": [{"path": "data/dedup/docs.parquet", "hash": "md5",
                                           "md5": "0123456789abcdef0123456789abcdef"}]}}}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    t = start_stage_run(tmp_path, "exp", "tokenize", {"tokenize": {}})
    t.end()
    assert inputs_of(client, t.run_id) == {("data/dedup/docs.parquet", "0123456789abcdef0123456789abcdef", "docs"),
                                           ("data/tokenizer/tokenizer.json", dvc_md5(tok), "tokenizer")}


def inputs_of(client, run_id) -> set[tuple[str, str, str]]:
    """(name, digest, context) of each dataset a run logged as its input (the run page's datasets)."""
    return {(d.dataset.name, d.dataset.digest, {tag.key: tag.value for tag in d.tags}["mlflow.data.context"])
            for d in client.get_run(run_id).inputs.dataset_inputs}


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


def test_dvc_files_load_as_safe_yaml_does():
    """load_yaml (libyaml's parser where PyYAML has it) reads the repository's dvc.yaml, dvc.lock and
    params.yaml as yaml.safe_load does, and refuses what safe_load refuses (a Python object tag)."""
    from llmpipe.util.io import load_yaml

    root = Path(__file__).resolve().parents[3]
    for name in ("dvc.yaml", "dvc.lock", "params.yaml"):
        text = (root / name).read_text()
        assert load_yaml(text) == yaml.safe_load(text)
    with pytest.raises(yaml.YAMLError):
        load_yaml("!!python/object/apply:os.system ['true']")
