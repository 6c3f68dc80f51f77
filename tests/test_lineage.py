"""`llmpipe lineage`: the data versions behind a commit, an MLflow run or a registered model version."""

import subprocess

import pytest
import yaml

from llmpipe.util.io import InputError
from llmpipe.ops.lineage import lineage


def lock(tokens_md5: str, model_md5: str) -> dict:
    out = lambda path, md5: {"path": path, "hash": "md5", "md5": md5}  # noqa: E731
    return {"schema": "2.0", "stages": {
        "scrape": {"outs": [out("data/scrape/docs", "s1")]},
        "tokenize": {"outs": [out("data/tokens", tokens_md5), out("data/metrics/tokenize.json", "m")]},
        "pretrain": {"outs": [out("data/model", model_md5), out("data/checkpoints", "c")]},
    }}


def git(root, *args):
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture()
def repo(tmp_path):
    git(tmp_path, "init", "-q")
    git(tmp_path, "config", "user.email", "t@example.com")
    git(tmp_path, "config", "user.name", "t")
    commits = []
    for tokens, model in (("tok-a.dir", "model-a.dir"), ("tok-b.dir", "model-b.dir")):
        (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock(tokens, model)))
        git(tmp_path, "add", "dvc.lock")
        git(tmp_path, "commit", "-q", "-m", tokens)
        commits.append(git(tmp_path, "rev-parse", "HEAD"))
    return tmp_path, commits


def test_workspace_and_revisions(repo):
    root, (first, second) = repo
    text = lineage(root, None)
    assert "tok-b.dir" in text and "model-b.dir" in text and "data/checkpoints" not in text
    text = lineage(root, "HEAD~1")
    assert f"git commit {first}" in text and "tok-a.dir" in text and "model-a.dir" in text
    assert f"git checkout {first}" in text


def test_model_version_resolves_to_the_commit_recording_its_data(repo, monkeypatch):
    from mlflow.tracking import MlflowClient

    root, (first, second) = repo
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    client.create_registered_model("m")
    # made at the first commit, but its dvc.lock (tokens tok-b) was committed afterwards, as usual
    client.create_model_version("m", source=str(root), tags={"git.commit": first, "dvc.dep.data/tokens": "tok-b.dir"})
    text = lineage(root, "models:/m/1")
    assert f"git commit {second}" in text and "model-b.dir" in text and "warning" not in text
    client.create_model_version("m", source=str(root), tags={"git.commit": first, "dvc.dep.data/tokens": "tok-x.dir"})
    assert "warning: the run recorded data/tokens tok-x.dir" in lineage(root, "models:/m/2")
    with pytest.raises(InputError, match="not a git revision"):
        lineage(root, "no-such-run")
