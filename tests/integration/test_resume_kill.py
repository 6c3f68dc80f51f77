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
