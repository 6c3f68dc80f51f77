"""Shared fixtures: a tiny params set, a per-session cache for the demo corpus, temp repo copies."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = str(Path(sys.executable).parent)

# Small enough to run the whole pipeline in about a minute on 2 cores, big enough to be real.
TINY_PARAMS = {
    "scrape": {"sources": [{"kind": "demo", "max_docs": 8}]},
    "filter": {"min_chars": 200},
    "dedup": {},
    "split": {"val_fraction": 0.2, "seed": 0},
    "tokenizer": {"vocab_size": 512, "min_frequency": 2},
    "tokenize": {"shard_tokens": 200_000},
    "pretrain": {
        "model": {"n_layer": 2, "n_head": 2, "n_kv_head": 1, "d_model": 64, "block_size": 64},
        "micro_batch_size": 8, "max_steps": 30, "warmup_steps": 5, "lr": 0.005,
        "eval_interval": 10, "eval_batches": 2, "log_interval": 5, "checkpoint_interval": 10,
    },
    "evaluate": {"max_tokens": 4096, "batch_size": 8},
    "sample": {"prompts": ["ROMEO.\n", "Enter"], "max_new_tokens": 24},
    "tracking": {"experiment": "llmpipe-test"},
}


@pytest.fixture(scope="session", autouse=True)
def _hermetic_env(tmp_path_factory):
    """Offline-friendly, quiet tools; the demo corpus is downloaded once per test session."""
    cache = tmp_path_factory.mktemp("llmpipe-cache")
    prefect_home = tmp_path_factory.mktemp("prefect-home")
    env = {
        "LLMPIPE_CACHE_DIR": str(cache),
        "DO_NOT_TRACK": "true",
        "DVC_NO_ANALYTICS": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "PATH": VENV_BIN + os.pathsep + os.environ.get("PATH", ""),
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def write_params(path: Path, params: dict) -> Path:
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def copy_repo(dest: Path, params: dict | None = None) -> Path:
    """A fresh git repository holding the project's files (tracked and new, not ignored), committed."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.split()
    dest.mkdir(parents=True, exist_ok=True)
    for rel in files:
        src = REPO / rel
        if src.is_file() and not rel.startswith(("data/", "dvc.lock")):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    (dest / "data").mkdir(exist_ok=True)
    if params is not None:
        write_params(dest / "params.yaml", params)
    git = ["git", "-c", "user.email=test@llmpipe.local", "-c", "user.name=llmpipe test"]
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(git + ["add", "-A"], cwd=dest, check=True)
    subprocess.run(git + ["commit", "-qm", "test copy"], cwd=dest, check=True)
    return dest


def run(cmd: list[str], cwd: Path, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)
