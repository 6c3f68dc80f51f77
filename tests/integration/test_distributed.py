"""Two processes under torchrun (gloo, CPU) follow the single-process loss curve at the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llmpipe.ops.step_lineage import step_lineage

from tests.unit.training.test_train import VOCAB, cfg, token_dir  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration


def run_worker(token_dir, tmp_path, name, nproc, c, stop_after=None, ckpt=None, env=None):
    out = tmp_path / f"{name}.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           str(Path(__file__).with_name("_ddp_worker.py")), str(token_dir), str(tmp_path / f"ckpt-{ckpt or name}"),
           str(out), c.model_dump_json()] + ([str(stop_after)] if stop_after else [])
    if nproc == 1:
        cmd = [sys.executable] + cmd[cmd.index(str(Path(__file__).with_name("_ddp_worker.py"))):]
    # TMPDIR: torchrun's log folders (torchelastic_*) stay in the test's folder, not in /tmp
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TMPDIR": str(tmp_path), **(env or {})})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


# Exact fp32 arithmetic: `precision: auto` would train in bf16 on CPUs with bf16 units, where two ranks'
# reductions round differently from one process's (up to 2.3e-4 in the loss).
COMMON = dict(max_steps=12, log_interval=1, eval_interval=6, checkpoint_interval=6, threads=1, precision="fp32")
# (precision, loss tolerance, weight tolerance): bf16 autocast keeps fp32 weights and reductions but rounds
# every matmul input to 8 bits of mantissa, so ranks agree only to bf16's resolution. It runs on any CPU:
# where bf16 units are missing it is slow, not wrong.
PRECISIONS = {"fp32": (1e-5, 1e-4), "bf16": (2e-2, 2e-2)}


# issue 18's recipe: Muon (its sharded matrices orthogonalized whole under FSDP), every model option,
# the warmup-stable-decay schedule and document-aligned rows; issue 27's sequence-length warm-up (rows
# of 8, then 16 tokens over the first 6 steps, then 32)
RECIPE = dict(optimizer="muon", schedule="wsd", doc_aligned=True, seq_warmup_steps=6, seq_warmup_min=8,
              model={"n_layer": 2, "n_head": 2, "d_model": 32, "block_size": 32, "qk_norm": True, "mlp": "relu2",
                     "tie_embeddings": False, "zero_init_head": True, "logit_softcap": 15.0, "value_embeds": True})


@pytest.mark.parametrize("parallel,precision,recipe", [("ddp", "fp32", False), ("fsdp", "fp32", False),
                                                       ("ddp", "bf16", False), ("ddp", "fp32", True),
                                                       ("fsdp", "fp32", True)])
def test_two_ranks_match_one_process(token_dir, tmp_path, parallel, precision, recipe):
    assert VOCAB == 64
    common = {**COMMON, "precision": precision, **(RECIPE if recipe else {})}
    loss_tol, weight_tol = PRECISIONS[precision]
    single = run_worker(token_dir, tmp_path, "single", 1, cfg(micro_batch_size=8, **common))
    double = run_worker(token_dir, tmp_path, parallel, 2, cfg(micro_batch_size=4, parallel=parallel, **common))
    a = [r["loss"] for r in single["train"]]
    b = [r["loss"] for r in double["train"]]
    assert len(a) == len(b) == 12
    assert max(abs(x - y) for x, y in zip(a, b)) < loss_tol, list(zip(a, b))
    va = [r["val_loss"] for r in single["val"]]
    vb = [r["val_loss"] for r in double["val"]]
    assert max(abs(x - y) for x, y in zip(va, vb)) < loss_tol
    # the model handed back (gathered from the shards under FSDP) is the one the single process trained
    a_w, b_w = (load_file(str(tmp_path / f"{n}.model" / "model.safetensors")) for n in ("single", parallel))
    assert a_w.keys() == b_w.keys()
    assert max((a_w[k] - b_w[k]).abs().max().item() for k in a_w) < weight_tol
    # each run recorded its ranks; `llmpipe lineage --step` lists the same rows for both
    assert [s["world_size"] for s in single["data_order"]["layout"]] == [1]
    assert [s["world_size"] for s in double["data_order"]["layout"]] == [2]
    # and the same row lengths (with the recipe, the sequence-length warm-up's pieces first)
    assert single["data_order"]["row_lengths"] == double["data_order"]["row_lengths"]
    for step in (1, 12):
        rows = [[r["ids"] for r in step_lineage(token_dir, run["data_order"], step)["rows"]] for run in (single, double)]
        assert rows[0] == rows[1] and len(rows[0]) == 8


@pytest.mark.parametrize("recipe", [False, True])
def test_fsdp_resume_continues_exactly(token_dir, tmp_path, recipe):
    c = cfg(micro_batch_size=4, parallel="fsdp", grad_accum_steps=2, **COMMON, **(RECIPE if recipe else {}))
    whole = run_worker(token_dir, tmp_path, "whole", 2, c)
    run_worker(token_dir, tmp_path, "first", 2, c, stop_after=6, ckpt="split")  # checkpoint at step 6, then exit
    resumed = run_worker(token_dir, tmp_path, "rest", 2, c, ckpt="split")
    assert [r["loss"] for r in resumed["train"]] == [r["loss"] for r in whole["train"]]
    groups = json.loads((tmp_path / "ckpt-split" / "state.json").read_text())["optimizer"]["param_groups"]
    assert "tok_emb.weight" in groups[0]["params"]  # FSDP's optimizer state, keyed by parameter name
    a_w, b_w = (load_file(str(tmp_path / f"{n}.model" / "model.safetensors")) for n in ("whole", "rest"))
    assert all(torch.equal(a_w[k], b_w[k]) for k in a_w)


def test_paced_ranks_stop_at_rank_0s_length(token_dir, tmp_path):
    # A minutes budget (training.pace): rank 0's clock says 12 planned steps are too few for the time,
    # rank 1's that they are too many. The ranks must train the same steps, the length rank 0 chose.
    c = cfg(micro_batch_size=4, parallel="ddp", schedule="wsd", **COMMON)
    env = {"PACE_SECONDS": "20", "PACE_TICK": "0.25,2.0"}
    paced = run_worker(token_dir, tmp_path, "paced", 2, c, env=env)
    steps = [r["step"] for r in paced["train"]]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) > 12
