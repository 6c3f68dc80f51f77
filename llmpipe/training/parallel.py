"""Data parallelism under torchrun: DDP (replicate) or FSDP (shard), and whole-model state across ranks.

The training loop stays the same for one process or many: it asks this module to wrap the model, to
gather the full model and optimizer states for a checkpoint (a collective under FSDP), to load them
back, and whether all ranks' weights are finite. Each rank reads its own rows of every global batch
(llmpipe.tokens.shards.TokenData.random_batch), so N ranks see exactly the data one process would.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel as DDP

from llmpipe.model.weights import model_state, with_tied


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    fsdp: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_main_process() -> bool:
    """Rank 0 under torchrun, or a plain single process: the one that writes outputs and tracks."""
    return int(os.environ.get("RANK", "0")) == 0


def init_distributed(device_type: str, strategy: str = "ddp") -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    if not dist.is_initialized():
        # How long a rank waits in a collective for a peer that never arrives (a node that died without
        # closing its connections): torch's default is 30 minutes, LLMPIPE_DIST_TIMEOUT (seconds) shortens it.
        timeout = timedelta(seconds=float(os.environ.get("LLMPIPE_DIST_TIMEOUT", 1800)))
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo", timeout=timeout)
    return Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")), fsdp=strategy == "fsdp")


def shard(model: torch.nn.Module, d: Dist) -> None:
    """FSDP2: each block's parameters, then the rest (embeddings, final norm), sharded across ranks.
    Done before the optimizer is made, which then holds only this rank's shards."""
    if d.fsdp:
        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)


def wrap(net: torch.nn.Module, d: Dist) -> torch.nn.Module:
    """DDP around the (possibly compiled) model; FSDP models are already sharded in place."""
    return DDP(net) if d.world > 1 and not d.fsdp else net


def set_grad_sync(net: torch.nn.Module, model: torch.nn.Module, d: Dist, sync: bool):
    """Skip the gradient all-reduce on all but the last micro-batch of an accumulated step."""
    if d.world == 1 or sync:
        if d.fsdp:
            model.set_requires_gradient_sync(True)
        return contextlib.nullcontext()
    if d.fsdp:
        model.set_requires_gradient_sync(False)
        return contextlib.nullcontext()
    return net.no_sync()


def local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


def full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if isinstance(t, DTensor) else t


def all_finite(model: torch.nn.Module, d: Dist) -> bool:
    """True when every rank's weights are finite (all ranks get the same answer)."""
    ok = all(bool(torch.isfinite(local(p)).all()) for p in model.parameters())
    if d.world == 1:
        return ok
    flag = torch.tensor(float(ok), device=next(model.parameters()).device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def gather_model_state(model: torch.nn.Module, d: Dist) -> dict[str, torch.Tensor]:
    """The whole model's weights (on rank 0 under FSDP, where this is a collective: call on all ranks)."""
    if not d.fsdp:
        return model_state(model)
    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if getattr(model.cfg, "tie_embeddings", False):
        sd.pop("lm_head.weight", None)
    return sd


def gather_optimizer_state(model, opt, d: Dist) -> dict:
    """The whole optimizer state (keyed by parameter index, or by parameter name under FSDP)."""
    if not d.fsdp:
        return opt.state_dict()
    return get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_model_state(model, state: dict[str, torch.Tensor], d: Dist) -> tuple[list[str], list[str]]:
    """Load full weights (every rank passes the whole state); returns (missing, unexpected) names."""
    state = with_tied(model, state)
    if not d.fsdp:
        return model.load_state_dict(state, strict=False)
    names = set(model.state_dict())
    missing, unexpected = sorted(names - set(state)), sorted(set(state) - names)
    if not missing and not unexpected:
        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))
    return missing, unexpected


def load_optimizer_state(model, opt, state: dict, d: Dist) -> None:
    if not d.fsdp:
        opt.load_state_dict(state)
    else:
        set_optimizer_state_dict(model, opt, state, options=StateDictOptions(full_state_dict=True))
