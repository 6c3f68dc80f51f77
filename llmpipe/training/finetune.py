"""Full finetuning of a trained GPT on chat examples: the loss counts the assistant's tokens only.

One process (the models finetuned here fit one device). Batches are a pure function of (seed, step,
micro-step), like pretraining's, so the checkpoints of llmpipe.training.checkpoint (weights,
optimizer state, RNG state and the step, in safetensors and JSON) resume a run exactly: a run stopped
and resumed ends with the weights of an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from llmpipe.config.sft import FinetuneParams
from llmpipe.model.gpt import GPT
from llmpipe.model.weights import model_state
from llmpipe.tokens.examples import read_examples
from llmpipe.tokens.loader import TokenData
from llmpipe.training.checkpoint import load_checkpoint, save_checkpoint
from llmpipe.training.device import cpu_kind, resolve_device, resolve_dtype
from llmpipe.training.loop import TrainResult, TrainingDiverged
from llmpipe.training.optim import lr_at, make_adamw
from llmpipe.training.parallel import Dist, all_finite
from llmpipe.util.io import InputError

log = logging.getLogger(__name__)
MIX_STREAM = 3  # the mixed rows' own draw, apart from pretraining's streams (its rows are not pretraining's)


class Examples:
    """Rows of (block_size + 1) tokens with their loss mask; batches by (seed, step, micro-step)."""

    def __init__(self, folder: Path, block_size: int, per_reply: bool = False):
        self.tokens, self.mask = read_examples(folder)
        if self.tokens.shape[1] > block_size + 1:
            raise InputError(f"{folder}: rows of {self.tokens.shape[1] - 1} tokens exceed the model's context "
                             f"of {block_size} (set sft_data.block_size to at most {block_size})")
        if per_reply:
            self.mask = reply_weights(self.mask, str(folder))

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def rows(self, index) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        t = torch.from_numpy(self.tokens[index].astype(np.int64))
        m = torch.from_numpy(self.mask[index].astype(np.float32))
        return t[:, :-1], t[:, 1:], m[:, 1:]

    def batch(self, seed: int, step: int, micro: int, rows: int):
        rng = np.random.default_rng([seed, step, micro])
        return self.rows(rng.integers(0, len(self), rows))


def reply_weights(mask: np.ndarray, where: str = "examples") -> np.ndarray:
    """The 0/1 mask as weights under which every reply (a run of masked targets in a row) weighs the
    same, scaled so the split's total is unchanged: a one-token answer ("2") counts as much as a quoted
    line and its answer, where per token it would count a twentieth as much. Column 0 is no target
    (`Examples.rows`), so it counts for no reply."""
    if not np.isin(mask, (0, 1)).all():
        raise InputError(f"{where}: finetune.reply_weight: reply needs a 0/1 loss mask; these rows carry "
                         f"other weights (set finetune.reply_weight: token)")
    m = mask > 0
    m[:, :1] = False
    starts = m & ~np.pad(m, ((0, 0), (1, 0)))[:, :-1]
    run = np.cumsum(starts.ravel()).reshape(m.shape) - 1  # the reply each masked token belongs to
    lengths = np.bincount(run[m], minlength=int(starts.sum()))
    out = np.zeros(m.shape, np.float32)
    if lengths.size:
        out[m] = (m.sum() / lengths.size) / lengths[run[m]]
    return out


def token_losses(model: GPT, x, y, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of every target, shaped like y. With `keep` (boolean, shaped like y) only the kept
    targets go through the output layer and the others read 0: an SFT batch weighs its answers only, about
    300 of 4,096 targets, and the output layer is most of a small model's work (8,192 x 96 weights at the
    AVX2 demo's 3 x 96, against 3 x 12 x 96^2 in the blocks), so a step takes a fraction of the time."""
    if keep is None:
        logits, _ = model(x)
        return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none").view(y.shape)
    logits, _ = model(x, select=keep)
    losses = torch.zeros(y.shape, dtype=torch.float32, device=y.device)
    losses[keep] = F.cross_entropy(logits, y[keep], reduction="none")
    return losses


def masked_loss(model: GPT, x, y, m) -> torch.Tensor:
    """Mean cross-entropy over the targets the mask counts (weighted by it); the others are not computed."""
    return (token_losses(model, x, y, m > 0) * m).sum() / m.sum().clamp(min=1.0)


def training_batch(train: Examples, text: TokenData | None, cfg: FinetuneParams, step: int, micro: int):
    """Batch (step, micro): micro_batch_size example rows, then cfg.mix.rows rows of pretraining text
    (cut to the examples' row length), their targets weighted by `mix_weights`."""
    x, y, m = train.batch(cfg.seed, step, micro, cfg.micro_batch_size)
    if not cfg.mix.rows:
        return x, y, m
    tx, ty = text.random_batch(step, micro, cfg.mix.rows, x.size(1), cfg.seed, stream=MIX_STREAM,
                               repeat_share=cfg.mix.repeat_share)
    return torch.cat([x, tx]), torch.cat([y, ty]), torch.cat([m, mix_weights(cfg, step, micro, tx.shape)])


def mix_weights(cfg: FinetuneParams, step: int, micro: int, shape) -> torch.Tensor:
    """The text rows' loss weights: cfg.mix.weight on every target, or with target_share < 1 on a seeded
    draw of that share of them at weight / target_share (0 elsewhere: never computed), a pure function of
    (seed, step, micro) like the rows themselves, so a resumed run draws the same targets."""
    share = cfg.mix.target_share
    if share >= 1.0:
        return torch.full(shape, cfg.mix.weight)
    rng = np.random.default_rng([cfg.seed, MIX_STREAM, step, micro, 2])  # apart from the rows' and repeats' draws
    kept = torch.from_numpy(rng.random(tuple(shape)) < share)
    return kept.float() * (cfg.mix.weight / share)


@torch.no_grad()
def val_loss(model: GPT, val: Examples, cfg: FinetuneParams, device, dtype) -> float | None:
    """Masked loss on the first eval_batches x micro_batch_size val rows (the same ones every time)."""
    n = min(len(val), cfg.eval_batches * cfg.micro_batch_size)
    if n == 0:
        return None
    model.eval()
    total = weight = 0.0
    for s in range(0, n, cfg.micro_batch_size):
        x, y, m = (t.to(device) for t in val.rows(np.arange(s, min(s + cfg.micro_batch_size, n))))
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = masked_loss(model, x, y, m)
        total += float(loss) * float(m.sum())
        weight += float(m.sum())
    model.train()
    return total / max(weight, 1.0)


def finetune(cfg: FinetuneParams, model: GPT, train_dir: Path, val_dir: Path, ckpt_dir: Path, identity: dict,
             sink: Callable[[dict, int], None] | None = None, stop_after: int | None = None,
             text: TokenData | None = None) -> TrainResult:
    """Finetune `model` (the base weights) or resume from `ckpt_dir`; `text` is the pretraining split
    that cfg.mix draws rows from; `stop_after` ends this process's run early after that many steps
    (for tests of resume)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg)
    dtype = resolve_dtype(cfg, device)
    torch.manual_seed(cfg.seed)
    model = model.to(device).train()
    # val loss stays per token, comparable across runs whatever the weighting
    train = Examples(train_dir, model.cfg.block_size, per_reply=cfg.reply_weight == "reply")
    val = Examples(val_dir, model.cfg.block_size)
    if len(train) == 0:
        raise InputError(f"{train_dir}: no training rows")
    if cfg.mix.rows and text is None:
        raise InputError(f"finetune.mix.rows is {cfg.mix.rows}, but no pretraining tokens were given to draw them from")
    row = train.tokens.shape[1]  # a mixed row has the examples' length (sft_data.block_size + 1)
    if cfg.mix.rows and text.lengths.max() <= row:
        raise InputError(f"finetune.mix.rows: {text.token_dir}'s train shards hold at most {text.lengths.max()} "
                         f"tokens, too few for a row of {row} (sft_data.block_size + 1)")
    n_text = cfg.mix.rows
    opt = make_adamw(model, cfg, device)
    start, history = 0, {"train": [], "val": []}
    resumed = load_checkpoint(ckpt_dir, model, opt, identity)
    if resumed is not None:
        start, history = resumed
        log.info("resuming finetuning from %s at step %d", ckpt_dir, start)
    log.info("finetuning %.2fM parameters on %d rows (%d val), %s on %s, %d steps%s", model.num_params() / 1e6,
             len(train), len(val), str(dtype).removeprefix("torch."), device, cfg.max_steps,
             f", {n_text} rows of pretraining text in each micro-batch at weight {cfg.mix.weight}" if n_text else "")
    step, steps_here, t_last, targets = start, 0, time.perf_counter(), 0.0
    while step < cfg.max_steps and (stop_after is None or steps_here < stop_after):
        lr = lr_at(step, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        loss_sum = answer_sum = text_sum = 0.0
        for micro in range(cfg.grad_accum_steps):
            x, y, m = (t.to(device) for t in training_batch(train, text, cfg, step, micro))
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                ce = token_losses(model, x, y, m > 0)  # targets of weight 0 are not computed
            loss = (ce * m).sum() / m.sum().clamp(min=1.0)
            (loss / cfg.grad_accum_steps).backward()
            loss_sum += float(loss.detach())
            ce, answers = ce.detach(), slice(0, x.size(0) - n_text)  # the examples' loss and the text's apart
            answer_sum += float((ce[answers] * m[answers]).sum() / m[answers].sum().clamp(min=1.0))
            if n_text:  # the mean over the text targets computed (all, or target_share's draw)
                kept = m[x.size(0) - n_text:] > 0
                text_sum += float(ce[x.size(0) - n_text:][kept].sum() / kept.sum().clamp(min=1))
            targets += float((m[answers] > 0).sum())  # tokens, not their weights
        loss_val = loss_sum / cfg.grad_accum_steps
        if not math.isfinite(loss_val):
            raise TrainingDiverged(f"loss is {loss_val} at step {step}; the last good checkpoint in {ckpt_dir} is kept")
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        opt.step()
        opt.zero_grad(set_to_none=True)
        step, steps_here = step + 1, steps_here + 1
        if step % cfg.log_interval == 0 or step == cfg.max_steps:
            now = time.perf_counter()
            row = {"step": step, "loss": round(loss_val, 6), "answer_loss": round(answer_sum / cfg.grad_accum_steps, 6),
                   "lr": lr, "grad_norm": round(float(grad_norm), 6),
                   "target_tokens_per_s": round(targets / (now - t_last), 1)}
            if n_text:
                row["text_loss"] = round(text_sum / cfg.grad_accum_steps, 6)
            t_last, targets = now, 0.0
            history["train"].append(row)
            log.info("finetune step %d/%d loss %.4f lr %.2e", step, cfg.max_steps, loss_val, lr)
            if sink:
                sink({k: v for k, v in row.items() if k != "step"}, step)
        if step % cfg.eval_interval == 0 or step == cfg.max_steps:
            vl = val_loss(model, val, cfg, device, dtype)
            if vl is not None:
                history["val"].append({"step": step, "val_loss": round(vl, 6)})
                log.info("finetune step %d val loss %.4f", step, vl)
                if sink:
                    sink({"val_loss": vl}, step)
        if step % cfg.checkpoint_interval == 0 or step == cfg.max_steps:
            if not all_finite(model, Dist()):
                raise TrainingDiverged(f"non-finite weights at step {step}; the last good checkpoint is kept")
            save_checkpoint(ckpt_dir, model_state(model), opt.state_dict(), step, identity, history)
    metrics = {"steps": step, "params": model.num_params(), "precision": str(dtype).removeprefix("torch."),
               "device": device.type, **cpu_kind()}
    if history["train"]:
        metrics["final_train_loss"] = history["train"][-1]["loss"]
        for key in ("answer_loss", "text_loss"):
            if key in history["train"][-1]:
                metrics[f"final_{key}"] = history["train"][-1][key]
    if history["val"]:
        metrics["final_val_loss"] = history["val"][-1]["val_loss"]
    return TrainResult(model.cpu().eval(), step, history, metrics)
