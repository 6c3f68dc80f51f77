"""Two processes under torchrun (gloo, CPU) follow the single-process loss curve at the same global batch."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .test_train import VOCAB, cfg, token_dir  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration


def run_worker(token_dir, tmp_path, name, nproc, c):
    out = tmp_path / f"{name}.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           str(Path(__file__).with_name("_ddp_worker.py")), str(token_dir), str(tmp_path / f"ckpt-{name}"),
           str(out), c.model_dump_json()]
    if nproc == 1:
        cmd = [sys.executable] + cmd[cmd.index(str(Path(__file__).with_name("_ddp_worker.py"))):]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_two_ranks_match_one_process(token_dir, tmp_path):
    assert VOCAB == 64
    common = dict(max_steps=12, log_interval=1, eval_interval=6, checkpoint_interval=6, threads=1)
    single = run_worker(token_dir, tmp_path, "single", 1, cfg(micro_batch_size=8, **common))
    double = run_worker(token_dir, tmp_path, "ddp", 2, cfg(micro_batch_size=4, **common))
    a = [r["loss"] for r in single["train"]]
    b = [r["loss"] for r in double["train"]]
    assert len(a) == len(b) == 12
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-5, list(zip(a, b))
    va = [r["val_loss"] for r in single["val"]]
    vb = [r["val_loss"] for r in double["val"]]
    assert max(abs(x - y) for x, y in zip(va, vb)) < 1e-5
