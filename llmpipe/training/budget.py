"""The time-budget dial: turn `pretrain.budget` (minutes, tokens or FLOPs) into a model shape and a
number of steps, compute-optimally for this machine.

Minutes mean nothing until the machine's speed is known, so each candidate shape trains a few steps
here first (`time_steps`); its tokens per second turn the minutes into tokens. The shape whose
tokens-per-parameter ratio comes closest to budget.tokens_per_param (bench/ladder.py bounds it; the
shapes measured at equal time by bench/recipe.py set it, docs/recipe.md) wins. The plan depends on the
machine: the stage records it in its metrics (and so in lineage) and in
the checkpoint's identity, so a resumed run continues with the shape it started with rather than
measuring again. Under torchrun every rank follows rank 0's timings. The timed steps cannot foresee
evaluations or a change of load, so for minutes the loop corrects the number of steps as it trains
(llmpipe.training.pace).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from pathlib import Path

from llmpipe.config.pretrain import PretrainParams
from llmpipe.training.pace import Pace
from llmpipe.util.io import InputError, read_json

log = logging.getLogger(__name__)


def tokens_per_step(cfg: PretrainParams, world: int | None = None) -> int:
    from llmpipe.training.optim import accumulation_steps
    world = world or int(os.environ.get("WORLD_SIZE", "1"))
    return cfg.micro_batch_size * cfg.model.block_size * accumulation_steps(cfg, world) * world


def time_steps(cfg: PretrainParams, token_dir: Path, vocab: int, steps: int = 3, warmup: int = 1) -> float:
    """Seconds per optimizer step of `cfg` on this machine: the fastest of `steps` after `warmup`.
    Another job on a shared machine only ever slows a step, so the fastest is the closest to the
    machine's own speed (a median of three let a light load pick a smaller model: issue 27); what the
    run then really gets, evaluations and load included, the pace corrects (llmpipe.training.pace)."""
    from llmpipe.training.loop import train  # the very loop the run will use
    # full-length rows: a sequence-length warm-up's short early rows would time the run's cheapest steps
    probe = cfg.model_copy(update={"max_steps": warmup + steps, "warmup_steps": 0, "log_interval": 1,
                                   "eval_interval": 10**9, "eval_batches": 1, "checkpoint_interval": 10**9,
                                   "seq_warmup_steps": 0})
    with tempfile.TemporaryDirectory() as tmp:
        res = train(probe, token_dir, Path(tmp) / "ckpt", vocab, {"probe": True})
    rows = res.history["train"][warmup:]
    seconds = min(tokens_per_step(cfg) / r["tokens_per_s"] for r in rows)
    import torch
    import torch.distributed as dist
    if dist.is_initialized():  # every rank takes rank 0's figure: the ranks must choose alike
        t = torch.tensor([seconds], dtype=torch.float64)
        dist.broadcast(t, 0)
        seconds = float(t.item())
    return seconds


def shape(cfg: PretrainParams, depth: int) -> PretrainParams:
    """The candidate of `depth` layers: d_model = aspect * depth (nanochat's one-dial rule), heads of
    budget.head_dim channels."""
    b = cfg.budget
    d = b.aspect * depth
    heads = max(1, d // b.head_dim)
    model = cfg.model.model_copy(update={"n_layer": depth, "d_model": d, "n_head": heads, "n_kv_head": None})
    return cfg.model_copy(update={"model": model})


def count_params(cfg: PretrainParams, vocab: int) -> tuple[int, int]:
    """(parameters, training FLOPs per token) of a shape, from the model itself (on the meta device)."""
    import torch

    from llmpipe.model.gpt import GPT, GPTConfig
    with torch.device("meta"):
        model = GPT(GPTConfig(vocab_size=vocab, **cfg.model.model_dump()))
    return model.num_params(), model.flops_per_token()


def probe_speeds(cfg: PretrainParams, token_dir: Path, vocab: int, t0: float) -> dict[int, float]:
    """Seconds per step of each depth the dial considers, the fastest of budget.probe_rounds rounds that
    go over the depths in turn: a load that comes and goes during the probes slows one round of a shape,
    not all of them. The climb stops at the first shape whose ratio is out of reach (below half the
    target), and goes on after the last round if the faster timings brought it back within reach."""
    b = cfg.budget
    speeds: dict[int, float] = {}
    params: dict[int, int] = {}  # each shape's count, built once (the check runs before every probe)

    def out_of_reach() -> bool:
        # A deeper shape is larger and slower, so it plans fewer tokens a parameter: once one is under the
        # target, every deeper one is further from it and cannot be the nearest. Half the target leaves
        # room for noisy probes. The climb used to go two shapes past a quarter of it: the demo's dial
        # (target 1.15) timed 6, 7 and 8 layers too, about 20 of its 28 s of probes (issue 27).
        if not speeds:
            return False
        left = max(b.amount * 60 * b.train_fraction - (time.perf_counter() - t0), 0)
        d = max(speeds)
        params.setdefault(d, count_params(shape(cfg, d), vocab)[0])
        return left / speeds[d] * tokens_per_step(shape(cfg, d)) / params[d] < b.tokens_per_param / 2

    def climb() -> None:
        for depth in range(max(speeds, default=b.min_layers - 1) + 1, b.max_layers + 1):
            if out_of_reach():
                return
            speeds[depth] = time_steps(shape(cfg, depth), token_dir, vocab)

    climb()
    for _ in range(b.probe_rounds - 1):
        for depth in speeds:
            speeds[depth] = min(speeds[depth], time_steps(shape(cfg, depth), token_dir, vocab))
    climb()
    return speeds


def round_up(x: float) -> float:
    """x rounded up at three significant digits (a smallest value that works must not round below it)."""
    unit = 10 ** (math.floor(math.log10(x)) - 2)
    return math.ceil(x / unit) * unit


def check_enough(cfg: PretrainParams, smallest: dict, speeds: dict[int, float], spent: float) -> None:
    """A budget that does not buy one step of the smallest shape stops, naming the smallest that does."""
    b, step_tokens = cfg.budget, tokens_per_step(shape(cfg, smallest["n_layer"]))
    if smallest["tokens"] >= step_tokens:
        return
    key = "pretrain.budget.amount"
    if b.unit == "tokens":
        raise InputError(f"{key}: {b.amount:g} tokens are less than one step of the smallest shape "
                         f"(micro_batch_size x block_size = {step_tokens}); the smallest that works is {step_tokens}")
    if b.unit == "flops":
        least = step_tokens * smallest["flops_per_token"]
        raise InputError(f"{key}: {b.amount:g} FLOPs are less than one step of the smallest shape; "
                         f"the smallest that works is {round_up(least):.3g}")
    step_s = speeds[smallest["n_layer"]]
    least = (spent + step_s) / 60 / b.train_fraction
    raise InputError(f"{key}: {b.amount:g} minutes leave {max(b.amount * 60 * b.train_fraction - spent, 0):.1f} s "
                     f"after {spent:.1f} s of probes on this machine, less than one step of the smallest shape "
                     f"({smallest['n_layer']} layers: {step_s:.2f} s); the smallest that works here is about "
                     f"{round_up(least):.3g} minutes")


def plan(cfg: PretrainParams, token_dir: Path, vocab: int) -> dict:
    """Pick depth, width and steps for cfg.budget; returns the plan (recorded as metrics)."""
    b = cfg.budget
    t0 = time.perf_counter()
    speeds = probe_speeds(cfg, token_dir, vocab, t0) if b.unit == "minutes" else {}
    spent = probed = time.perf_counter() - t0  # the probes come out of the budget too
    depths = list(speeds) or range(b.min_layers, b.max_layers + 1)
    candidates = []
    for depth in depths:
        c = shape(cfg, depth)
        n, fpt = count_params(c, vocab)
        if b.unit == "tokens":
            tokens = b.amount
        elif b.unit == "flops":
            tokens = b.amount / fpt
        else:  # the training seconds left after the probes (the loop then corrects the steps: training.pace)
            tokens = max(b.amount * 60 * b.train_fraction - spent, 0) / speeds[depth] * tokens_per_step(c)
        candidates.append({"n_layer": depth, "d_model": c.model.d_model, "n_head": c.model.n_head,
                           "params": n, "flops_per_token": fpt, "tokens": int(tokens),
                           "tokens_per_param": tokens / n,
                           **({"step_seconds": round(speeds[depth], 5)} if speeds else {})})
    check_enough(cfg, candidates[0], speeds, spent)
    best = min(candidates, key=lambda c: abs(math.log(max(c["tokens_per_param"], 1e-9) / b.tokens_per_param)))
    steps = max(1, round(best["tokens"] / tokens_per_step(shape(cfg, best["n_layer"]))))
    spent = time.perf_counter() - t0
    timed = {"train_seconds": round(max(b.amount * 60 * b.train_fraction - spent, 1.0), 2)} if b.unit == "minutes" else {}
    return {**best, "max_steps": steps, "unit": b.unit, "amount": b.amount,
            "target_tokens_per_param": b.tokens_per_param, "plan_seconds": round(spent, 2),
            "probe_seconds": round(probed, 3), **timed,
            "candidates": candidates}


def pace_for(p: dict) -> Pace | None:
    """A minutes plan's pace: the loop keeps the run within the training seconds the plan left."""
    return Pace(p["train_seconds"]) if p.get("train_seconds") else None


def scaled_warmup(warmup_steps: int, steps: int) -> int:
    """The warmup of a run of `steps` whose length the dial chose: at most a tenth of it."""
    return min(warmup_steps, max(steps // 10, 1))


def apply_plan(cfg: PretrainParams, p: dict) -> PretrainParams:
    """cfg with the plan's shape and steps (warmup and intervals scaled to the number of steps)."""
    c = shape(cfg, p["n_layer"])
    steps = p["max_steps"]
    return c.model_copy(update={
        "max_steps": steps, "warmup_steps": scaled_warmup(cfg.warmup_steps, steps),
        "eval_interval": max(steps // 4, 1), "checkpoint_interval": max(steps // 4, 1),
        "log_interval": max(1, min(cfg.log_interval, steps // 20 or 1)), "budget": None})


def resolve_budget(cfg: PretrainParams, token_dir: Path, ckpt_dir: Path, vocab: int,
                   identity: dict) -> tuple[PretrainParams, dict, dict]:
    """(cfg as trained: the budget turned into a shape and steps, the plan, the run's identity with the
    plan in it). The plan of a checkpoint of this same run (identity equal but for the plan) is reused."""
    if cfg.budget is None:
        return cfg, {}, identity
    state = ckpt_dir / "state.json"
    old = read_json(state).get("identity", {}) if state.exists() else {}
    if "budget_plan" in old and {k: v for k, v in old.items() if k != "budget_plan"} == identity:
        p = old["budget_plan"]
    else:
        p = plan(cfg, token_dir, vocab)
    log.info("budget %s %s: %d layers x %d wide, %.2fM parameters, %d steps (%d tokens, %.1f per parameter)",
             p["amount"], p["unit"], p["n_layer"], p["d_model"], p["params"] / 1e6, p["max_steps"], p["tokens"],
             p["tokens_per_param"])
    return apply_plan(cfg, p), p, {**identity, "budget_plan": p}
