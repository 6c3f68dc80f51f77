"""Checkpoints for exact resume: safetensors for tensors, JSON for the rest; nothing is pickled.

The data loader's position is the step (batches are a pure function of seed and step), so weights,
optimizer state, RNG state and the step restore a run exactly."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors.torch import save_file

from llmpipe.model.weights import check_names
from llmpipe.training.parallel import Dist, full, load_model_state, load_optimizer_state
from llmpipe.util.io import atomic_dir, read_json, read_safetensors, write_json

log = logging.getLogger(__name__)
AVERAGE = "average.safetensors"


def _optimizer_tensors(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer state dict as flat tensors ("<param>.<name>") plus JSON for the rest."""
    tensors, scalars = {}, {}
    for pid, state in sd["state"].items():
        for k, v in state.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = full(v).detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict = {}
    for key, v in [*tensors.items(), *meta["scalars"].items()]:
        pid, name = key.rsplit(".", 1)  # parameter index, or its dotted name under FSDP
        state.setdefault(int(pid) if pid.isdigit() else pid, {})[name] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(path: Path, weights: dict, optimizer: dict, step: int, identity: dict, history: dict,
                    average: dict[str, torch.Tensor] | None = None) -> None:
    """`average`: the tail average of the weights so far (llmpipe.training.averaging), when one is kept."""
    tensors, opt_meta = _optimizer_tensors(optimizer)
    rng = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["torch_cuda"] = torch.cuda.get_rng_state()
    with atomic_dir(path) as tmp:
        save_file(weights, str(tmp / "model.safetensors"))
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        save_file(rng, str(tmp / "rng.safetensors"))
        if average:
            save_file(average, str(tmp / AVERAGE))
        # The data loader's position is the step: batches are a pure function of (seed, step).
        write_json(tmp / "state.json", {"step": step, "identity": identity, "optimizer": opt_meta,
                                        "history": history})


def load_checkpoint(path: Path, model, opt, identity: dict, d: Dist = Dist()) -> tuple[int, dict] | None:
    """Restore from `path` when it holds a checkpoint of this very run; else None (start fresh).
    Every rank reads the whole checkpoint and keeps its part."""
    if not (path / "state.json").exists():
        return None
    state = read_json(path / "state.json")
    if state.get("identity") != identity:
        log.warning("checkpoint in %s belongs to other params or data; starting fresh", path)
        return None
    check_names(*load_model_state(model, read_safetensors(path / "model.safetensors"), d), path / "model.safetensors")
    optimizer = _optimizer_state(read_safetensors(path / "optimizer.safetensors"), state["optimizer"])
    load_optimizer_state(model, opt, optimizer, d)
    rng = read_safetensors(path / "rng.safetensors")
    torch.set_rng_state(rng["torch_cpu"])
    if "torch_cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["torch_cuda"])
    return int(state["step"]), state["history"]


def load_average(path: Path) -> dict[str, torch.Tensor]:
    """The tail average a checkpoint holds ({} when it holds none)."""
    return read_safetensors(path / AVERAGE) if (path / AVERAGE).exists() else {}
