"""Shared fixtures: a tiny params set, a per-session cache for the demo corpus, temp repo copies."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from llmpipe.ops.shell import TRACE_IMPORTS_ENV

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
        # untied, as params.yaml's default (issue 27): the exports, llama.cpp and the chat run on that kind
        "model": {"n_layer": 2, "n_head": 2, "n_kv_head": 1, "d_model": 64, "block_size": 64, "tie_embeddings": False},
        "micro_batch_size": 8, "max_steps": 30, "warmup_steps": 5, "lr": 0.02, "optimizer": "muon",
        "eval_interval": 10, "eval_batches": 2, "log_interval": 5, "checkpoint_interval": 10,
    },  # Muon and lr 0.02: in 30 steps the model beats a unigram model (AdamW at lr 0.005 did not)
    "evaluate": {"max_tokens": 4096, "batch_size": 8},
    # issue 16: a few items of four built-in tasks, a small in-domain task, 2 in-loop items per task
    "tasks": {"builtin": {"hellaswag": 4, "arc_easy": 4, "winogrande": 4, "lambada": 4},
              "indomain": {"items": 8, "context_chars": 120, "continuation_chars": 40}, "inloop": {"items": 2}},
    "benchmark": {"batch_rows": 32},
    "sample": {"prompts": ["ROMEO.\n", "Enter"], "max_new_tokens": 24},
    # the chat stages: short passages for the 64-token context, a few finetuning steps
    "sft_data": {"demo": {"train_items": 300, "val_items": 40, "max_speeches": 2, "max_lines": 1,
                          "max_chars": 70}, "block_size": 64},
    "finetune": {"max_steps": 10, "micro_batch_size": 8, "warmup_steps": 2, "eval_interval": 5,
                 "eval_batches": 2, "log_interval": 5, "checkpoint_interval": 5,
                 "mix": {"rows": 2}},  # pretraining rows in each batch: the stage reads data/tokens (issue 26)
    # two reward steps: the stage, its checkpoint, its MLflow version with lineage (tests/unit/training/test_grpo.py
    # tests what it learns); 64 new tokens: a quoted reply fits (a whole conversation is at most 65 tokens)
    "rl": {"steps": 2, "questions_per_step": 4, "samples_per_question": 4, "max_new_tokens": 64, "checkpoint_every": 1},
    "chat_eval": {"max_new_tokens": 64, "batch_size": 16, "samples": 4},
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
    # Stop the temporary Prefect server a shard flow may have started, while output is still open
    # (its own atexit hook would log into closed streams).
    if "prefect.server.api.server" in sys.modules:
        from prefect.server.api.server import SubprocessASGIServer

        server = SubprocessASGIServer()
        if server.running:
            # first hand it the flow runs' queued logs: at exit Prefect's log worker would retry sending
            # them to the stopped server for over a minute ("Error logging to API")
            from prefect.logging.handlers import APILogWorker

            APILogWorker.drain_all(timeout=30)
            server.stop()
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


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def local_server(cmd: list[str], health_url: str, log_path: Path, env: dict | None = None):
    """Start a real server process (mlflow, prefect) on 127.0.0.1, wait for its health URL, stop it after."""
    import httpx

    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 180
            while True:
                try:
                    if httpx.get(health_url, timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert proc.poll() is None, log_path.read_text()[-3000:]
                assert time.time() < deadline, f"{cmd[0]} server did not start: {log_path.read_text()[-3000:]}"
                time.sleep(1)
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:  # not stopping: kill it rather than leave it behind
                proc.kill()
                proc.wait()


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory) -> Path:
    """One uninterrupted `dvc repro` of the tiny pipeline in a repo copy, run once per session; tests
    that only read or extend such a run take a copy of it (`clone_repo`)."""
    repo = copy_repo(tmp_path_factory.mktemp("tiny-pipeline") / "repo", TINY_PARAMS)
    # each stage process appends the project modules it imported (tests/integration/test_code_deps.py)
    proc = run(["dvc", "repro"], repo, env={TRACE_IMPORTS_ENV: str(repo.parent / "imports.jsonl")})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return repo


def clone_repo(src: Path, dest: Path) -> Path:
    """A copy of a repo copy with its git history, DVC cache, outputs and MLflow database."""
    shutil.copytree(src, dest, symlinks=True)
    return dest
