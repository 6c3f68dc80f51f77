"""`llmpipe lineage`: the data versions behind a commit, an MLflow run or a registered model version."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from llmpipe.ops.lineage import lineage
from llmpipe.util.io import InputError

REPO = Path(__file__).resolve().parents[2]


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


def test_model_whose_weights_differ_from_the_lock_is_not_presented_as_its_model(repo):
    from mlflow.tracking import MlflowClient

    root, (first, second) = repo
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    client.create_registered_model("m")
    trained = {"train.precision": "bfloat16", "train.device": "cpu", "train.cpu": "Xeon",
               "train.cpu_bf16_units": "avx512_bf16,amx_bf16"}
    same = {"git.commit": second, "dvc.dep.data/tokens": "tok-b.dir", "dvc.out.data/model": "model-b.dir", **trained}
    client.create_model_version("m", source=str(root), tags=same)
    text = lineage(root, "models:/m/1")
    assert "warning" not in text and "not this model's" not in text and f"git checkout {second} && dvc pull" in text
    # same data, weights trained elsewhere (the demo on a CPU with bf16 units against a committed fp32 lock)
    client.create_model_version("m", source=str(root), tags={**same, "dvc.out.data/model": "b0168.dir"})
    text = lineage(root, "models:/m/2")
    assert f"git commit {second}" in text
    assert "warning: this model's data/model is b0168.dir, but this dvc.lock records model-b.dir" in text
    assert "model-b.dir   <- dvc.lock's, not this model's" in text
    assert "precision bfloat16" in text and "cpu_bf16_units avx512_bf16,amx_bf16" in text
    assert "&& dvc pull" not in text and f"git checkout {second} && dvc repro pretrain" in text
    # its own weights match the older commit's lock: lineage picks that commit
    client.create_model_version("m", source=str(root), tags={**same, "dvc.out.data/model": "model-a.dir",
                                                             "dvc.dep.data/tokens": "tok-a.dir", "git.commit": first})
    text = lineage(root, "models:/m/3")
    assert f"git commit {first}" in text and "warning" not in text


MAKE_OUTS = r'''
import sys
from pathlib import Path
from tests.toy_tokens import write_pretrain_extras, write_toy_tokens  # the repository is on PYTHONPATH

if sys.argv[1:] == ["extras"]:  # pretrain also reads the tokenizer and the in-loop benchmark items
    write_pretrain_extras(Path("."))
else:
    write_toy_tokens(Path("data/tokens"), vocab=512, docs=(200, 20))
    # DVC 3 hashes text as is (2.x turned CRLF into LF first); nested folders are relpaths with '/'
    notes = Path("data/notes/sub/deeper")
    notes.mkdir(parents=True)
    (notes / "crlf.txt").write_bytes(b"one\r\ntwo\r\n")
    (Path("data/notes") / "b.bin").write_bytes(bytes(range(256)))
    (Path("data/notes/sub") / "a.txt").write_text("x\n")
'''

DVC_YAML = {"stages": {
    "tokenizer": {"cmd": "python make_outs.py extras", "deps": ["make_outs.py"],
                  "outs": ["data/tokenizer/tokenizer.json", "data/evals/inloop.jsonl"]},
    "tokenize": {"cmd": "python make_outs.py", "deps": ["make_outs.py"], "outs": ["data/tokens", "data/notes"]},
    "pretrain": {"cmd": "llmpipe pretrain", "deps": ["data/tokens", "data/tokenizer/tokenizer.json",
                                                     "data/evals/inloop.jsonl"], "params": ["pretrain"],
                 "outs": ["data/model", {"data/checkpoints": {"persist": True, "cache": False}}],
                 "metrics": [{"data/metrics/pretrain.json": {"cache": False}}]},
}}


@pytest.mark.integration
def test_registered_model_carries_its_dvc_hash_and_how_it_was_trained(tmp_path, monkeypatch):
    """A real `dvc repro` trains and registers a model: its tags hold the hash dvc.lock records for
    data/model, and the precision, device and CPU kind it was trained with."""
    from mlflow.tracking import MlflowClient

    from llmpipe.util.io import dvc_md5
    from llmpipe.training.device import cpu_kind

    root = tmp_path
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    git(root, "init", "-q")
    git(root, "config", "user.email", "t@example.com")
    git(root, "config", "user.name", "t")
    (root / "make_outs.py").write_text(MAKE_OUTS)
    (root / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML))
    pretrain = {"model": {"n_layer": 1, "n_head": 2, "d_model": 32, "block_size": 32}, "micro_batch_size": 4,
                "max_steps": 4, "warmup_steps": 1, "eval_interval": 2, "eval_batches": 1, "log_interval": 2,
                "checkpoint_interval": 2, "threads": 1}
    (root / "params.yaml").write_text(yaml.safe_dump({"pretrain": pretrain, "tracking": {"experiment": "t"}}))
    (root / ".gitignore").write_text("/mlflow.db\n/mlartifacts/\n/data/checkpoints/\n")
    subprocess.run(["dvc", "init", "-q"], cwd=root, check=True, capture_output=True)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "pipeline")
    made_at = git(root, "rev-parse", "HEAD")
    proc = subprocess.run(["dvc", "repro"], cwd=root, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    locked = {o["path"]: o["md5"] for s in yaml.safe_load((root / "dvc.lock").read_text())["stages"].values()
              for o in s.get("outs", []) if "md5" in o}
    for path in ("data/notes", "data/tokens", "data/model"):  # our hash is DVC's, folder by folder
        assert dvc_md5(root / path) == locked[path], path

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    tags = client.get_model_version("llmpipe-gpt", "1").tags
    metrics = yaml.safe_load((root / "data/metrics/pretrain.json").read_text())
    kind = cpu_kind()
    assert tags["dvc.out.data/model"] == locked["data/model"] == metrics["model_dvc_md5"]
    assert tags["dvc.dep.data/tokens"] == locked["data/tokens"] and tags["git.commit"] == made_at
    assert tags["train.precision"] == metrics["precision"] in ("bfloat16", "float32")
    assert tags["train.device"] == "cpu" and tags["train.cpu"] == kind["cpu"] == metrics["cpu"]
    assert tags["train.cpu_bf16_units"] == kind["cpu_bf16_units"] == metrics["cpu_bf16_units"]
    run_tags = client.get_run(client.get_model_version("llmpipe-gpt", "1").run_id).data.tags
    assert run_tags["dvc.out.data/model"] == locked["data/model"] and run_tags["train.cpu"] == kind["cpu"]

    git(root, "add", "dvc.lock")
    git(root, "commit", "-q", "-m", "lock")
    text = lineage(root, "models:/llmpipe-gpt/1")
    assert f"git commit {git(root, 'rev-parse', 'HEAD')}" in text and "warning" not in text


def test_model_version_says_when_the_environment_differs(repo, monkeypatch):
    from mlflow.tracking import MlflowClient

    from llmpipe.util import envlock

    root, (first, second) = repo
    now = envlock.installed()
    # the lock the model was made with: this environment's versions, but another torch
    then = "".join(f"{name}=={version}\n" for name, version in now.items() if name != "torch") + "torch==2.12.0\n"
    (root / "requirements").mkdir()
    (root / "requirements" / "dev.lock").write_text(then)
    git(root, "add", "requirements")
    git(root, "commit", "-q", "-m", "lock")
    made = git(root, "rev-parse", "HEAD")
    here = root / "installed.lock"  # what setup.sh copies into the venv: the current environment's lock
    here.write_text("".join(f"{name}=={version}\n" for name, version in now.items()))
    monkeypatch.setattr(envlock, "installed_lock", lambda: here)
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    client.create_registered_model("m")
    base = {"git.commit": made, "dvc.dep.data/tokens": "tok-b.dir", "env.lock": "requirements/dev.lock",
            "env.python": "3.11.7"}
    client.create_model_version("m", source=str(root), tags={**base, "env.lock_sha256": envlock.sha256(root / "requirements" / "dev.lock"),
                                                             "env.torch": "2.12.0"})
    text = lineage(root, "models:/m/1")
    assert "warning: the current environment differs" in text and "torch 2.12.0" in text
    assert f"packages that differ (requirements/dev.lock at {made[:12]} vs this environment): 1" in text
    assert f"    torch: locked 2.12.0, installed {now['torch']}" in text
    assert f"git checkout {made} && bash scripts/setup.sh" in text
    # made in this very environment
    client.create_model_version("m", source=str(root), tags={**base, "env.lock_sha256": envlock.sha256(here)})
    text = lineage(root, "models:/m/2")
    assert "environment: the same as now" in text and "differs" not in text
    # made before environments were locked
    client.create_model_version("m", source=str(root), tags={"git.commit": made, "dvc.dep.data/tokens": "tok-b.dir"})
    assert "environment: not recorded" in lineage(root, "models:/m/3")


@pytest.mark.integration
def test_step_lineage_of_the_tiny_pipeline(tiny_pipeline, capsys):
    """`llmpipe lineage --step 3 --json` on a real run: every row's tokens are its shard's, and every
    document it names is in train_docs.parquet and holds those very tokens."""
    from llmpipe.cli import main
    from llmpipe.tokens.shards import read_shard
    from tests.conftest import TINY_PARAMS, run

    root = tiny_pipeline
    proc = run(["llmpipe", "lineage", "--step", "3", "--json"], root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    tokens = root / "data" / "tokens"
    files = [s["file"] for s in json.loads((tokens / "manifest.json").read_text())["shards"] if s["split"] == "train"]
    shards = {f: np.asarray(read_shard(tokens / f), dtype=np.int64) for f in files}
    split = np.concatenate([shards[f] for f in files])
    docs = pd.read_parquet(tokens / "train_docs.parquet").set_index("id")
    block = TINY_PARAMS["pretrain"]["model"]["block_size"]
    assert (result["step"], result["world_size"], result["grad_accum_steps"]) == (3, 1, 1)
    assert len(result["rows"]) == TINY_PARAMS["pretrain"]["micro_batch_size"]
    for row in result["rows"]:
        assert row["ids"] == shards[row["shard"]][row["shard_offset"] : row["shard_offset"] + block + 1].tolist()
        assert sum(d["doc_end"] - d["doc_start"] for d in row["docs"]) == block + 1
        for d in row["docs"]:
            doc = docs.loc[d["id"]]
            assert d["source"] == doc["source"] and d["doc_end"] <= doc["tokens"]
            held = split[doc["start"] + d["doc_start"] : doc["start"] + d["doc_end"]].tolist()
            assert held == row["ids"][d["row_start"] : d["row_start"] + d["doc_end"] - d["doc_start"]]
    # the table, and a step the run never took (in this process: a CLI start costs seconds)
    assert main(["--root", str(root), "lineage", "--step", "3"]) == 0
    table = capsys.readouterr().out
    assert result["rows"][0]["shard"] in table and result["rows"][0]["docs"][0]["id"][:19] in table
    assert main(["--root", str(root), "lineage", "--step", "31"]) == 2
    assert "the run trained 30 steps" in capsys.readouterr().err
