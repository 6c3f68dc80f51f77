"""SIGKILL during `llmpipe pretrain`, then the same command again: it resumes from the checkpoint and
ends with weights bitwise equal to an uninterrupted run's."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.toy_tokens import write_pretrain_extras, write_toy_tokens

pytestmark = pytest.mark.integration

PARAMS = {
    "pretrain": {"model": {"n_layer": 2, "n_head": 2, "d_model": 64, "block_size": 32, "dropout": 0.1},
                 "micro_batch_size": 8, "max_steps": 60, "warmup_steps": 5, "lr": 0.01, "eval_interval": 20,
                 "eval_batches": 2, "log_interval": 5, "checkpoint_interval": 10, "threads": 1},
    "tracking": {"experiment": "kill-test", "registered_model": None},
}


def make_root(root):
    write_toy_tokens(root / "data" / "tokens", vocab=320, docs=(200, 20), doc_len=50, shard_tokens=5000,
                     learnable=False)
    write_pretrain_extras(root)
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    return root


def pretrain_cmd(root):
    return [sys.executable, "-m", "llmpipe.cli", "--root", str(root), "pretrain"]


def test_sigkill_then_resume_is_bitwise_equal(tmp_path):
    full = make_root(tmp_path / "full")
    assert subprocess.run(pretrain_cmd(full), capture_output=True).returncode == 0

    killed = make_root(tmp_path / "killed")
    state = killed / "data" / "checkpoints" / "state.json"
    proc = subprocess.Popen(pretrain_cmd(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if state.exists() and json.loads(state.read_text())["step"] >= 20:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    step_at_kill = json.loads(state.read_text())["step"]
    assert 20 <= step_at_kill < 60
    assert not (killed / "data" / "model").exists()  # nothing final was written by the killed run

    assert subprocess.run(pretrain_cmd(killed), capture_output=True).returncode == 0
    a = load_file(str(full / "data" / "model" / "model.safetensors"))
    b = load_file(str(killed / "data" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    tsv = (killed / "data" / "plots" / "train.tsv").read_text().splitlines()
    assert [int(r.split("\t")[0]) for r in tsv[1:]] == list(range(5, 61, 5))  # the whole curve survives


def test_checkpoint_of_another_precision_is_not_resumed(tmp_path):
    """`precision: auto` is bf16 on a CPU with bf16 units and fp32 on an AVX2-only one: a run on the other
    kind (LLMPIPE_CPU_BF16 plays it here) trains afresh instead of resuming, and is labelled truly."""
    root = make_root(tmp_path / "run")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["pretrain"].update(max_steps=10, checkpoint_interval=5, eval_interval=5)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    runs = {}
    for bf16 in ("1", "0"):
        proc = subprocess.run(pretrain_cmd(root), capture_output=True, text=True,
                              env={**os.environ, "LLMPIPE_CPU_BF16": bf16})
        assert proc.returncode == 0, proc.stderr
        runs[bf16] = (proc.stderr, json.loads((root / "data" / "metrics" / "pretrain.json").read_text()))
    assert runs["1"][1]["precision"] == "bfloat16" and runs["0"][1]["precision"] == "float32"
    assert "resuming" not in runs["0"][0]
    state = json.loads((root / "data" / "checkpoints" / "state.json").read_text())
    assert state["identity"]["precision"] == "float32" and state["step"] == 10
