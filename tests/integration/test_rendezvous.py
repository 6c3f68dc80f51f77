"""Two torchrun agents, one per "node", meet through a c10d rendezvous on 127.0.0.1 (gloo, CPU): they
train the same weights as one process, and a node killed mid-run makes the other fail fast, not hang."""

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from safetensors.torch import load_file

from tests.integration.test_distributed import COMMON, run_worker
from tests.unit.training.test_train import cfg, token_dir  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration
WORKER = Path(__file__).with_name("_ddp_worker.py")
# A dead peer is noticed by its closed connections at once; LLMPIPE_DIST_TIMEOUT bounds the case where
# it is not (a partitioned network), and the agents' rendezvous gives up after --rdzv-conf's timeouts.
ENV = {"LLMPIPE_DIST_TIMEOUT": "30", "OMP_NUM_THREADS": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_tree(pid: int) -> None:
    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGKILL)
    psutil.wait_procs(procs, timeout=10)


def start_nodes(token_dir, tmp_path, c, name):
    """Two agents, started one after the other like two machines; ranks are the rendezvous's to assign."""
    port, nodes = free_port(), []
    for node in range(2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", name,
               "--rdzv-conf", "join_timeout=60,read_timeout=20", "--max-restarts", "0",
               str(WORKER), str(token_dir), str(tmp_path / f"ckpt-{name}"), str(tmp_path / f"{name}.json"),
               c.model_dump_json()]
        log = open(tmp_path / f"{name}-node{node}.log", "w")
        nodes.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                      env={**os.environ, **ENV, "TMPDIR": str(tmp_path)}))  # torchrun's logs: here
        time.sleep(1)  # the first agent hosts the rendezvous store
    return nodes


def test_two_nodes_train_the_weights_of_one_process(token_dir, tmp_path):
    single = run_worker(token_dir, tmp_path, "single", 1, cfg(micro_batch_size=8, **COMMON))
    nodes = start_nodes(token_dir, tmp_path, cfg(micro_batch_size=4, parallel="ddp", **COMMON), "nodes")
    try:
        codes = [n.wait(timeout=300) for n in nodes]
    finally:
        for n in nodes:
            kill_tree(n.pid)
    assert codes == [0, 0], [(tmp_path / f"nodes-node{i}.log").read_text()[-3000:] for i in range(2)]
    double = json.loads((tmp_path / "nodes.json").read_text())
    assert len(double["train"]) == 12
    assert max(abs(a["loss"] - b["loss"]) for a, b in zip(single["train"], double["train"])) < 1e-5
    a_w, b_w = (load_file(str(tmp_path / f"{n}.model" / "model.safetensors")) for n in ("single", "nodes"))
    assert a_w.keys() == b_w.keys()
    gap = max((a_w[k] - b_w[k]).abs().max().item() for k in a_w)
    print(f"two nodes vs one process: max weight difference {gap:.2e}")
    assert gap < 1e-5


# What the survivor's log says. A dead worker: gloo's read on its socket fails within seconds, the survivor's
# worker raises and its agent exits with ChildFailedError. A dead store host (the node that started first):
# the survivor's agent may lose the store before its worker notices the peer.
PEER_GONE = ("Connection reset by peer", "Connection closed by peer")
STORE_GONE = ("RendezvousConnectionError: The connection to the C10d store has failed",)
EXPECTED = {0: PEER_GONE + STORE_GONE, 1: PEER_GONE}


LONG_RUN = dict(micro_batch_size=4, parallel="ddp", **{**COMMON, "max_steps": 100000, "checkpoint_interval": 5,
                                                        "eval_interval": 100000})


def start_training(token_dir, tmp_path, name):
    """Two nodes on a long run, once training has started: the first checkpoint is written."""
    nodes = start_nodes(token_dir, tmp_path, cfg(**LONG_RUN), name)
    state = tmp_path / f"ckpt-{name}" / "state.json"
    deadline = time.monotonic() + 180
    while not state.exists():
        if time.monotonic() > deadline or any(n.poll() is not None for n in nodes):
            for n in nodes:
                kill_tree(n.pid)
            pytest.fail(f"training did not start: {(tmp_path / f'{name}-node0.log').read_text()[-3000:]}")
        time.sleep(0.5)
    return nodes


@pytest.mark.parametrize("victim", [0, 1])  # 0 hosts the rendezvous store
def test_a_killed_node_fails_the_other_within_a_timeout(token_dir, tmp_path, victim):
    nodes = start_training(token_dir, tmp_path, f"kill{victim}")
    survivor = nodes[1 - victim]
    survivor_tree = psutil.Process(survivor.pid).children(recursive=True)
    killed_at = time.monotonic()
    kill_tree(nodes[victim].pid)  # the whole node: its agent and its worker (which runs in a session of its own)
    try:
        code = survivor.wait(timeout=120)
    finally:
        kill_tree(survivor.pid)
    waited = time.monotonic() - killed_at
    log = (tmp_path / f"kill{victim}-node{1 - victim}.log").read_text()
    print(f"survivor exit {code} after {waited:.1f}s:\n{log[-4000:]}")
    assert code != 0 and waited < 60, log[-3000:]
    # the error names the cause: the rendezvous store is gone (its host died), or the worker's peer is
    assert any(cause in log for cause in EXPECTED[victim]), log[-3000:]
    assert "ChildFailedError" in log or "RendezvousConnectionError" in log
    assert survivor_tree and not any(p.is_running() for p in survivor_tree)  # its worker went down with it


def test_a_frozen_node_fails_the_other_after_the_collective_timeout(token_dir, tmp_path):
    """A node that stops answering but keeps its connections open (SIGSTOP: a hung machine, a partitioned
    network) is noticed only by the collective's timeout, LLMPIPE_DIST_TIMEOUT (30 s here, not torch's 30 min)."""
    nodes = start_training(token_dir, tmp_path, "frozen")
    frozen = [psutil.Process(nodes[1].pid), *psutil.Process(nodes[1].pid).children(recursive=True)]
    for proc in frozen:
        proc.send_signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        code = nodes[0].wait(timeout=150)
    finally:
        for n in nodes:
            kill_tree(n.pid)
    waited = time.monotonic() - stopped_at
    log = (tmp_path / "frozen-node0.log").read_text()
    print(f"survivor exit {code} after {waited:.1f}s:\n{log[-4000:]}")
    assert code != 0 and 25 < waited < 120, log[-3000:]
    # gloo's own words, with LLMPIPE_DIST_TIMEOUT in them (the survivor may be sending or receiving when its
    # peer freezes: both time out alike)
    assert re.search(r"Timed out waiting 30000ms for (recv|send) operation to complete", log), log[-3000:]
    assert "ChildFailedError" in log
