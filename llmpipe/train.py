"""The training loop: AdamW, warmup + cosine schedule, accumulation, clipping, checkpoints, resume.

Parallelism lives in llmpipe.parallel: under `torchrun` the model is replicated (DDP) or sharded (FSDP)
and each rank reads its own rows of every global batch; the loop itself does not change.
"""

from __future__ import annotations

import logging
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from .config import PretrainParams
from .io import InputError, atomic_dir, read_json, read_safetensors, write_json
from .model import GPT, GPTConfig
from .parallel import (Dist, all_finite, full, gather_model_state, gather_optimizer_state, init_distributed,
                       is_main_process, load_model_state, load_optimizer_state, set_grad_sync, shard, wrap)
from .tokens import TokenData

log = logging.getLogger(__name__)

# Peak dense bf16 TFLOP/s per device, for MFU. CPUs have no entry: MFU is not reported there.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0, "L40": 181.0}


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


# --- environment ---------------------------------------------------------------------------------


def cpu_has_native_bf16() -> bool:
    """bf16 autocast pays off on CPUs only with AVX512-BF16 or AMX; elsewhere it is far slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_kind() -> dict[str, str]:
    """What the weights depend on besides params and data: the CPU model and its bf16 units (a model
    trained on another CPU kind, or in another precision, has other weights and another DVC hash)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        info = ""
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                platform.processor() or platform.machine() or "unknown")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    units = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    return {"cpu": name, "cpu_bf16_units": ",".join(units) or "none"}


def resolve_device(cfg: PretrainParams, local_rank: int = 0) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise InputError("pretrain.device: cuda requested but no CUDA device is available")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def resolve_dtype(cfg: PretrainParams, device: torch.device) -> torch.dtype:
    if cfg.precision == "fp32":
        return torch.float32
    if cfg.precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_TFLOPS.items():
        if key in name:
            return tflops * 1e12
    return None


# --- optimizer and schedule ----------------------------------------------------------------------


def make_optimizer(model: torch.nn.Module, cfg: PretrainParams, device: torch.device) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]  # matrices and embeddings; not norms or biases
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                             fused=device.type == "cuda")


def accumulation_steps(cfg: PretrainParams, world: int) -> int:
    """Micro-batches per optimizer step: grad_accum_steps, or what batch_tokens asks for on `world` ranks."""
    if cfg.batch_tokens is None:
        return cfg.grad_accum_steps
    per_micro = cfg.micro_batch_size * cfg.model.block_size * world
    if cfg.batch_tokens % per_micro:
        raise InputError(f"pretrain.batch_tokens: {cfg.batch_tokens} is not a multiple of micro_batch_size x "
                         f"block_size x ranks = {cfg.micro_batch_size} x {cfg.model.block_size} x {world}")
    return cfg.batch_tokens // per_micro


def lr_at(step: int, cfg: PretrainParams) -> float:
    min_lr = cfg.lr * cfg.min_lr_ratio
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(cfg.max_steps - cfg.warmup_steps, 1)
    progress = min((step - cfg.warmup_steps) / span, 1.0)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - min_lr)


# --- checkpoints: safetensors for tensors, JSON for the rest; nothing is pickled -------------------


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


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Weights of an unsharded model, without tied duplicates (safetensors refuses shared storage)."""
    return gather_model_state(model, Dist())


def load_weights(model, state: dict[str, torch.Tensor], source: Path | str, d: Dist = Dist()) -> None:
    """Load weights saved by model_state (tied copies dropped); refuse any other mismatch by name."""
    missing, unexpected = load_model_state(model, state, d)
    if missing or unexpected:
        raise InputError(f"{source}: does not match the model (missing {missing}, unexpected {unexpected})")


def save_checkpoint(path: Path, weights: dict, optimizer: dict, step: int, identity: dict, history: dict) -> None:
    tensors, opt_meta = _optimizer_tensors(optimizer)
    rng = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["torch_cuda"] = torch.cuda.get_rng_state()
    with atomic_dir(path) as tmp:
        save_file(weights, str(tmp / "model.safetensors"))
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        save_file(rng, str(tmp / "rng.safetensors"))
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
    load_weights(model, read_safetensors(path / "model.safetensors"), path / "model.safetensors", d)
    optimizer = _optimizer_state(read_safetensors(path / "optimizer.safetensors"), state["optimizer"])
    load_optimizer_state(model, opt, optimizer, d)
    rng = read_safetensors(path / "rng.safetensors")
    torch.set_rng_state(rng["torch_cpu"])
    if "torch_cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["torch_cuda"])
    return int(state["step"]), state["history"]


# --- the loop ------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    model: GPT
    step: int
    history: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)


@torch.no_grad()
def estimate_val_loss(model, val: TokenData, cfg: PretrainParams, device, dtype, ddp: Dist = Dist()) -> float:
    """Mean loss on a fixed set of val batches (the same batches at every evaluation and for any number
    of ranks: each rank scores its rows of the global batch, then the ranks average)."""
    model.eval()
    losses = []
    for i in range(cfg.eval_batches):
        x, y = val.random_batch(step=0, micro_step=i, rows=cfg.micro_batch_size, block=model.cfg.block_size,
                                seed=cfg.seed, rank=ddp.rank, world=ddp.world, stream=1)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            _, loss = model(x.to(device), y.to(device))
        losses.append(loss.float())
    mean = torch.stack(losses).mean()
    if ddp.world > 1:
        dist.all_reduce(mean, op=dist.ReduceOp.AVG)
    model.train()
    return mean.item()


def train(cfg: PretrainParams, token_dir: Path, ckpt_dir: Path, vocab_size: int, identity: dict,
          sink: Callable[[dict, int], None] | None = None, stop_after: int | None = None) -> TrainResult:
    """Train from scratch or resume from `ckpt_dir`; returns the model (on rank 0 all ranks agree).

    `stop_after` ends the run early after that many steps in this process (for tests of resume)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg)
    ddp = init_distributed(device.type, cfg.parallel)
    if device.type == "cuda":
        device = torch.device("cuda", ddp.local_rank)
        torch.cuda.set_device(device)
    dtype = resolve_dtype(cfg, device)
    torch.manual_seed(cfg.seed)
    mcfg = GPTConfig(vocab_size=vocab_size, **cfg.model.model_dump())
    model = GPT(mcfg).to(device)
    shard(model, ddp)  # FSDP: before the optimizer, which then holds only this rank's shards
    opt = make_optimizer(model, cfg, device)
    train_data = TokenData(token_dir, "train")
    val_data = TokenData(token_dir, "val")

    start, history = 0, {"train": [], "val": []}
    resumed = load_checkpoint(ckpt_dir, model, opt, identity, ddp)
    if resumed is not None:
        start, history = resumed
        log.info("resuming from %s at step %d", ckpt_dir, start)
    net = wrap(torch.compile(model) if cfg.compile else model, ddp)
    rows = cfg.micro_batch_size
    accum = accumulation_steps(cfg, ddp.world)
    tokens_per_step = rows * mcfg.block_size * accum * ddp.world
    flops_per_step = model.flops_per_token() * tokens_per_step
    peak = peak_flops(device)
    if ddp.is_main:
        log.info("model: %.2fM parameters, %s on %s, %d tokens per step, %d steps",
                 model.num_params() / 1e6, str(dtype).removeprefix("torch."), device, tokens_per_step, cfg.max_steps)

    def checkpoint(step: int) -> None:
        # Never let a diverged state overwrite the last good checkpoint.
        if not all_finite(model, ddp):
            raise TrainingDiverged(f"non-finite weights at step {step}; the last good checkpoint in {ckpt_dir} is kept")
        weights, optimizer = gather_model_state(model, ddp), gather_optimizer_state(model, opt, ddp)
        if ddp.is_main:
            save_checkpoint(ckpt_dir, weights, optimizer, step, identity, history)
        if ddp.world > 1:
            dist.barrier()

    model.train()
    t_last, steps_here = time.perf_counter(), 0
    step = start
    while step < cfg.max_steps and (stop_after is None or steps_here < stop_after):
        lr = lr_at(step, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        loss_sum = 0.0
        for micro in range(accum):
            x, y = train_data.random_batch(step, micro, rows, mcfg.block_size, cfg.seed, ddp.rank, ddp.world)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            ctx = set_grad_sync(net, model, ddp, sync=micro == accum - 1)
            with ctx, torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                _, loss = net(x, y)
                (loss / accum).backward()
            loss_sum += loss.detach()
        loss_t = loss_sum / accum
        if ddp.world > 1:
            dist.all_reduce(loss_t, op=dist.ReduceOp.AVG)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(),
                                                   cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        opt.step()
        opt.zero_grad(set_to_none=True)
        steps_here += 1
        step = done = step + 1
        is_log = done % cfg.log_interval == 0 or done == cfg.max_steps
        # Reading the loss waits for the device; on a GPU that would stall the queue every step, so it
        # is read at log steps only (a NaN spreads to the weights, which checkpoint() refuses to save).
        if device.type == "cpu" or is_log:
            loss_val = float(loss_t)
            if not math.isfinite(loss_val):
                raise TrainingDiverged(f"loss is {loss_val} at step {done - 1}; "
                                       f"the last good checkpoint in {ckpt_dir} is kept")
        if is_log:
            grad_norm = float(full(grad_norm))
            now = time.perf_counter()
            n_steps = cfg.log_interval if done % cfg.log_interval == 0 else done % cfg.log_interval
            tps = tokens_per_step * min(n_steps, steps_here) / (now - t_last)
            t_last = now
            row = {"step": done, "tokens": done * tokens_per_step, "loss": round(loss_val, 6), "lr": lr,
                   "grad_norm": round(grad_norm, 6), "tokens_per_s": round(tps, 1)}
            if peak:
                row["mfu"] = round(flops_per_step * tps / tokens_per_step / (peak * ddp.world), 4)
            history["train"].append(row)
            if ddp.is_main:
                log.info("step %d/%d loss %.4f lr %.2e %.0f tok/s", done, cfg.max_steps, loss_val, lr, tps)
                if sink:
                    sink({k: v for k, v in row.items() if k != "step"}, done)
        if done % cfg.eval_interval == 0 or done == cfg.max_steps:
            vl = estimate_val_loss(model, val_data, cfg, device, dtype, ddp)
            history["val"].append({"step": done, "tokens": done * tokens_per_step, "val_loss": round(vl, 6)})
            if ddp.is_main:
                log.info("step %d val loss %.4f", done, vl)
                if sink:
                    sink({"val_loss": vl}, done)
        if done % cfg.checkpoint_interval == 0 or done == cfg.max_steps:
            checkpoint(done)
    final_step = step
    metrics = {"steps": final_step, "tokens": final_step * tokens_per_step,
               "params": model.num_params(), "flops_per_token": model.flops_per_token(),
               "precision": str(dtype).removeprefix("torch."), "device": device.type, "world_size": ddp.world,
               **cpu_kind()}
    if device.type == "cuda":
        metrics["gpu"] = torch.cuda.get_device_name(device)
    if history["train"]:
        metrics["final_train_loss"] = history["train"][-1]["loss"]
        metrics["tokens_per_s"] = round(sum(r["tokens_per_s"] for r in history["train"]) / len(history["train"]), 1)
    if history["val"]:
        metrics["final_val_loss"] = history["val"][-1]["val_loss"]
    if ddp.fsdp:  # hand back a whole model: gathered on rank 0 (a collective), shards elsewhere
        weights = gather_model_state(model, ddp)
        if ddp.is_main:
            model = GPT(mcfg)
            load_weights(model, weights, "gathered FSDP state")
    metrics["parallel"] = "fsdp" if ddp.fsdp else ("ddp" if ddp.world > 1 else "none")
    return TrainResult(model, final_step, history, metrics)
