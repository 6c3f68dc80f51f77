"""The training loop: accumulation, clipping, evaluation, checkpoints and exact resume.

Parallelism lives in llmpipe.training.parallel: under `torchrun` the model is replicated (DDP) or sharded (FSDP)
and each rank reads its own rows of every global batch; the loop itself does not change.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from llmpipe.config.pretrain import PretrainParams
from llmpipe.model.gpt import GPT, GPTConfig
from llmpipe.model.weights import load_weights
from llmpipe.tokens.loader import TokenData
from llmpipe.training import data_order
from llmpipe.training.averaging import TailAverage
from llmpipe.training.checkpoint import load_average, load_checkpoint, save_checkpoint
from llmpipe.training.device import cpu_kind, peak_flops, resolve_device, resolve_dtype
from llmpipe.training.optim import accumulation_steps, cut_rows, lr_at, make_optimizer, row_length_at
from llmpipe.training.pace import Pace
from llmpipe.training.parallel import (Dist, all_finite, full, gather_model_state, gather_optimizer_state,
                                       init_distributed, set_grad_sync, shard, wrap)

log = logging.getLogger(__name__)

class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


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


def repace(cfg: PretrainParams, pace: Pace, step: int, ddp: Dist) -> PretrainParams:
    """cfg with the length `pace` asks for at `step` (rank 0's answer on every rank)."""
    steps = pace.max_steps(cfg, step)
    if ddp.world > 1:  # the ranks must stop at the same step
        t = torch.tensor([steps], dtype=torch.int64, device="cuda" if dist.get_backend() == "nccl" else "cpu")
        dist.broadcast(t, 0)
        steps = int(t.item())
    if abs(steps - cfg.max_steps) > cfg.max_steps // 50 and ddp.is_main:  # log the moves that matter
        log.info("pace: %d steps fit in the budget (was %d), %.0f s spent of %.0f", steps, cfg.max_steps,
                 pace.elapsed(), pace.seconds)
    return cfg.model_copy(update={"max_steps": steps}) if steps != cfg.max_steps else cfg


def train(cfg: PretrainParams, token_dir: Path, ckpt_dir: Path, vocab_size: int, identity: dict,
          sink: Callable[[dict, int], None] | None = None, stop_after: int | None = None,
          on_eval: Callable[[GPT, torch.dtype], dict] | None = None, pace: Pace | None = None) -> TrainResult:
    """Train from scratch or resume from `ckpt_dir`; returns the model (on rank 0 all ranks agree).

    `stop_after` ends the run early after that many steps in this process (for tests of resume).
    `on_eval(model, dtype)` scores benchmark items at every evaluation (history["bench"]).
    `pace` moves max_steps so that the run ends on time (a minutes budget: llmpipe.training.pace)."""
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
    train_data = TokenData(token_dir, data_order.TRAIN_SPLIT)
    val_data = TokenData(token_dir, "val")

    start, history = 0, {"train": [], "val": []}
    resumed = load_checkpoint(ckpt_dir, model, opt, identity, ddp)
    if resumed is not None:
        start, history = resumed
        log.info("resuming from %s at step %d", ckpt_dir, start)
    tail = TailAverage(model, cfg.tail_average)
    if resumed is not None and history.get("tail_average", 0):
        tail.restore(load_average(ckpt_dir), history["tail_average"])
    if pace is not None:
        pace.start(start, history)
        if "pace" in history:  # the length the run had reached: a resumed run keeps it
            cfg = cfg.model_copy(update={"max_steps": history["pace"]["max_steps"]})
    net = wrap(torch.compile(model) if cfg.compile else model, ddp)
    rows = cfg.micro_batch_size
    accum = accumulation_steps(cfg, ddp.world)
    tokens_per_step = rows * mcfg.block_size * accum * ddp.world
    # what shapes the batches, kept in every checkpoint and the model (`llmpipe lineage --step`)
    order = data_order.record(history, cfg.seed, rows, mcfg.block_size, cfg.doc_aligned, ddp.world, accum, start,
                              cfg.repeat_share)
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
        if pace is not None:
            pace.record(history, cfg)
        average, history["tail_average"] = tail.state()
        if ddp.is_main:
            save_checkpoint(ckpt_dir, weights, optimizer, step, identity, history, average)
        if ddp.world > 1:
            dist.barrier()

    model.train()
    t_last, steps_here = time.perf_counter(), 0
    step = start
    while step < cfg.max_steps and (stop_after is None or steps_here < stop_after):
        lr = lr_at(step, cfg)
        for group in opt.param_groups:  # lr_scale: Muon's groups run at muon_lr, embed_lr/head_lr's at theirs
            group["lr"] = lr * group.get("lr_scale", 1.0)
        loss_sum, length = 0.0, row_length_at(step, cfg)
        data_order.record_row_length(order, step + 1, length)
        for micro in range(accum):
            x, y = train_data.random_batch(step, micro, rows, mcfg.block_size, cfg.seed, ddp.rank, ddp.world,
                                           stream=data_order.TRAIN_STREAM, doc_aligned=cfg.doc_aligned,
                                           repeat_share=cfg.repeat_share)
            x, y = cut_rows(x.to(device, non_blocking=True), y.to(device, non_blocking=True), length)
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
        tail.update(done, cfg.max_steps)
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
            if pace is not None:
                cfg = repace(cfg, pace, done, ddp)
        if done % cfg.eval_interval == 0 or done == cfg.max_steps:
            vl = estimate_val_loss(model, val_data, cfg, device, dtype, ddp)
            history["val"].append({"step": done, "tokens": done * tokens_per_step, "val_loss": round(vl, 6)})
            if ddp.is_main:
                log.info("step %d val loss %.4f", done, vl)
                if sink:
                    sink({"val_loss": vl}, done)
            if on_eval is not None:  # in-loop benchmark items (llmpipe/evals), every rank alike (FSDP)
                bench = on_eval(model, dtype)
                history.setdefault("bench", []).append({"step": done, "tokens": done * tokens_per_step, **bench})
                if ddp.is_main and sink:
                    sink({f"inloop_{k}": v for k, v in bench.items()}, done)
        if done % cfg.checkpoint_interval == 0 or done == cfg.max_steps:
            checkpoint(done)
    final_step = step
    averaged_val = None
    if tail.count and final_step == cfg.max_steps:  # the finished run's model is the mean of its tail
        tail.apply()
        averaged_val = estimate_val_loss(model, val_data, cfg, device, dtype, ddp)  # what is saved, scored
    metrics = {"steps": final_step, "tokens": final_step * tokens_per_step,
               "params": model.num_params(), "flops_per_token": model.flops_per_token(),
               "precision": str(dtype).removeprefix("torch."), "device": device.type, "world_size": ddp.world,
               **cpu_kind()}
    if pace is not None:
        metrics["pace_seconds"] = round(pace.elapsed(), 2)  # training seconds, resumed parts included
    if device.type == "cuda":
        metrics["gpu"] = torch.cuda.get_device_name(device)
    if history["train"]:
        metrics["final_train_loss"] = history["train"][-1]["loss"]
        metrics["tokens_per_s"] = round(sum(r["tokens_per_s"] for r in history["train"]) / len(history["train"]), 1)
    if history["val"]:
        metrics["final_val_loss"] = history["val"][-1]["val_loss"]
    if averaged_val is not None:  # the last step's loss stays in history; the metric is the saved model's
        metrics["final_val_loss_last_step"], metrics["final_val_loss"] = metrics.get("final_val_loss"), averaged_val
    if ddp.fsdp:  # hand back a whole model: gathered on rank 0 (a collective), shards elsewhere
        weights = gather_model_state(model, ddp)
        if ddp.is_main:
            model = GPT(mcfg)
            load_weights(model, weights, "gathered FSDP state")
    metrics["parallel"] = "fsdp" if ddp.fsdp else ("ddp" if ddp.world > 1 else "none")
    return TrainResult(model, final_step, history, metrics)
