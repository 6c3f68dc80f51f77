"""Reinforcement learning with a verifiable reward: group-baseline policy gradient (GRPO-style REINFORCE).

Each step takes `questions_per_step` questions, samples `samples_per_question` answers to each from the
current model, rewards an answer 1 when it is right by the question's Check (exact match after
normalisation, of what follows the repeated quote where the reply is taught to repeat one: the same
check chat-eval scores with) and 0 otherwise, and follows the gradient of

    - sum over sampled answer tokens of  advantage(answer) * log p(token | prompt, earlier answer tokens)
      / number of answer tokens in the batch

where an answer's advantage is its reward less the mean reward of its question's group (optionally over
the group's standard deviation). The loss counts the answer tokens only, the reply's closing <|end|>
included, so the model also learns where to stop. Every answer is sampled by the weights being updated
and used for one update, so the update is on-policy: no importance ratio, no clipping.

No KL term to the finetuned model: the run is a few steps at a small, decaying learning rate, the reward
is exact match on the answer (a quoted reply's first line, the working, is not scored: what drifts there
shows only in chat-eval's samples), and a KL term would need a second model's forward pass per step, a third
more time on the demo's budget of well under a minute. What a KL term guards against, the policy collapsing
onto one answer, is watched instead: when every sampled answer of a batch is the same `collapse_steps`
steps in a row, or the loss is not finite, the run stops and the last good checkpoint is the result.

Exact resume: the questions of a step and its sampling seed are pure functions of (seed, step), and
llmpipe.training.checkpoint saves weights, optimizer and RNG state (safetensors) with the step; a
checkpoint is written only after a step whose answers were diverse, so the latest one is always good.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from llmpipe.config.rl import RlParams
from llmpipe.data.playqa import normalize
from llmpipe.evals.trivial import Check
from llmpipe.model.gpt import GPT
from llmpipe.model.weights import load_weights, model_state
from llmpipe.tokens.chat import ChatFormat
from llmpipe.training.checkpoint import load_checkpoint, save_checkpoint
from llmpipe.training.device import cpu_kind, resolve_device, resolve_dtype
from llmpipe.training.generate import generate_batch
from llmpipe.training.loop import TrainResult, TrainingDiverged
from llmpipe.training.optim import make_adamw
from llmpipe.training.parallel import Dist, all_finite
from llmpipe.util.io import read_safetensors

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Question:
    prompt: list[int]  # the chat prompt's ids, ending with the generation prompt
    check: Check  # whether a reply is right: exact match of its answer


class Collapsed(TrainingDiverged):
    """Every sampled answer of the batch was the same, collapse_steps steps in a row."""


@dataclass
class RlResult(TrainResult):
    # why the run stopped early (NaN loss, collapse); the model is then the last good checkpoint's
    failure: str | None = None
    model_step: int = 0  # the step of the weights returned


def group_advantages(rewards: torch.Tensor, normalize_std: bool = False, eps: float = 1e-6) -> torch.Tensor:
    """rewards (questions, samples) -> advantages: each reward less its group's mean, optionally over the
    group's standard deviation. A group whose answers all score the same gets zeros: nothing to learn."""
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if normalize_std:
        centred = centred / (rewards.std(dim=1, unbiased=False, keepdim=True) + eps)
    return centred


def answer_rows(prompts: list[list[int]], answers: list[list[int]], block_size: int, pad: int):
    """Right-padded (x, y, mask) for next-token prediction over prompt + answer, the mask on the answer's
    tokens; a sequence longer than the context keeps its last block_size + 1 tokens."""
    seqs, starts = [], []
    for p, a in zip(prompts, answers):
        seq = (p + a)[-(block_size + 1):]
        seqs.append(seq)
        starts.append(max(len(seq) - len(a), 1))  # the first answer token's index in seq
    width = max(len(s) for s in seqs) - 1
    x = torch.full((len(seqs), width), pad, dtype=torch.long)
    y = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width))
    for i, (seq, start) in enumerate(zip(seqs, starts)):
        n = len(seq) - 1
        x[i, :n], y[i, :n] = torch.tensor(seq[:-1]), torch.tensor(seq[1:])
        mask[i, start - 1 : n] = 1.0  # y[j] is seq[j + 1]: answer tokens are the targets from start - 1
    return x, y, mask


def policy_loss(model: GPT, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor,
                n_tokens: int) -> torch.Tensor:
    """-(sum of advantage x log-probability over the masked tokens) / n_tokens (the batch's answer tokens)."""
    select = mask > 0
    logits, _ = model(x, select=select)  # the answer tokens' logits only
    logp = -F.cross_entropy(logits.float(), y[select], reduction="none")
    weighted = logp * advantages[:, None].expand_as(mask)[select]
    return -weighted.sum() / max(n_tokens, 1)


def step_questions(n: int, cfg: RlParams, step: int) -> np.ndarray:
    """The question indices of `step`: a pure function of (seed, step), so a resumed run asks the same."""
    rng = np.random.default_rng([cfg.seed, step])
    return rng.choice(n, size=min(cfg.questions_per_step, n), replace=False)


def sampling_seed(cfg: RlParams, step: int) -> int:
    return int(np.random.SeedSequence([cfg.seed, step, 1]).generate_state(1, dtype=np.uint64)[0] >> 1)


def sample_answers(model: GPT, fmt: ChatFormat, questions: list[Question], cfg: RlParams,
                   step: int) -> list[list[int]]:
    """samples_per_question answers to each question (group by group), each with its stop token when the
    model ended it (<|end|> or <|endoftext|>), so the update also teaches where a reply ends."""
    prompts = [q.prompt for q in questions for _ in range(cfg.samples_per_question)]
    return generate_batch(model, prompts, cfg.max_new_tokens, eot_id=None, temperature=cfg.temperature,
                          top_k=cfg.top_k, seed=sampling_seed(cfg, step),
                          stop_fn=lambda _row, toks: toks[-1] in fmt.stop_ids)


def grpo(cfg: RlParams, model: GPT, fmt: ChatFormat, questions: list[Question], ckpt_dir: Path, identity: dict,
         sink: Callable[[dict, int], None] | None = None, stop_after: int | None = None) -> RlResult:
    """Train `model` (the finetuned weights) or resume from `ckpt_dir`; `stop_after` ends this process's
    run after that many steps (tests of resume). A NaN loss or a collapse ends the run early with the
    last good weights and `failure` set."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg)
    dtype = resolve_dtype(cfg, device)
    torch.manual_seed(cfg.seed)
    model = model.to(device)
    opt = make_adamw(model, cfg, device)
    start, history = 0, {"train": []}
    resumed = load_checkpoint(ckpt_dir, model, opt, identity)
    initial = None if resumed else model_state(model)  # the last good weights until a checkpoint is written
    if resumed is not None:
        start, history = resumed
        log.info("resuming rl from %s at step %d", ckpt_dir, start)
    log.info("rl: %d questions, %d per step x %d samples, %d steps, update in %s on %s", len(questions),
             cfg.questions_per_step, cfg.samples_per_question, cfg.steps, str(dtype).removeprefix("torch."), device)
    step, good_step, streak, failure = start, start, 0, None
    try:
        while step < cfg.steps and (stop_after is None or step - start < stop_after):
            row = train_step(model, opt, fmt, [questions[i] for i in step_questions(len(questions), cfg, step)],
                             cfg, step, device, dtype)
            streak = streak + 1 if row["distinct_answers"] == 1 else 0
            step += 1
            history["train"].append(row)
            if sink:
                sink({k: v for k, v in row.items() if k not in ("step", "top_answer")}, step)
            log.info("rl step %d/%d mean reward %.3f, %d distinct answers of %d, loss %.4f", step, cfg.steps,
                     row["mean_reward"], row["distinct_answers"], row["answers"], row["loss"])
            if streak >= cfg.collapse_steps:
                raise Collapsed(f"collapse: every sampled answer was {row['top_answer']!r} for {streak} steps in a "
                                f"row (rl.collapse_steps = {cfg.collapse_steps}), at step {step}")
            if (step % cfg.checkpoint_every == 0 or step == cfg.steps) and streak == 0:
                if not all_finite(model, Dist()):
                    raise TrainingDiverged(f"non-finite weights at step {step}")
                save_checkpoint(ckpt_dir, model_state(model), opt.state_dict(), step, identity, history)
                good_step = step
    except TrainingDiverged as err:
        failure = f"{err}; the output model is the last good checkpoint, of step {good_step}"
        log.error("rl stopped: %s", failure)
        if good_step == 0:  # no checkpoint yet: the finetuned weights are the last good ones
            load_weights(model, initial, "the finetuned model")
        else:
            load_weights(model, read_safetensors(ckpt_dir / "model.safetensors"), ckpt_dir / "model.safetensors")
    metrics = {"steps": step, "model_step": good_step if failure else step, "params": model.num_params(),
               "precision": str(dtype).removeprefix("torch."), "device": device.type, **cpu_kind()}
    metrics.update(summary(history["train"]))
    return RlResult(model.cpu().eval(), step, history, metrics, failure=failure,
                    model_step=metrics["model_step"])


def train_step(model: GPT, opt: torch.optim.Optimizer, fmt: ChatFormat, questions: list[Question], cfg: RlParams,
               step: int, device, dtype) -> dict:
    """One rollout and one update; returns the step's row of metrics."""
    t0 = time.perf_counter()
    if not all_finite(model, Dist()):  # sampling from them would fail inside torch.multinomial
        raise TrainingDiverged(f"non-finite weights before step {step + 1}")
    lr = cfg.lr * (1.0 - step / cfg.steps)  # linear decay to zero, as nanochat's RL
    for group in opt.param_groups:
        group["lr"] = lr
    answers = sample_answers(model, fmt, questions, cfg, step)
    texts = [fmt.reply_text(a) for a in answers]
    S = cfg.samples_per_question
    checks = [q.check for q in questions for _ in range(S)]
    rewards = torch.tensor([float(check(t)) for t, check in zip(texts, checks)]).reshape(len(questions), S)
    adv = group_advantages(rewards, cfg.normalize_advantage).reshape(-1)
    n_tokens = sum(len(a) for a in answers)
    # rows with a zero advantage add exactly nothing to the gradient: only the others go through the model
    active = [i for i in range(len(answers)) if adv[i] != 0]
    model.train()
    loss_sum, grad_norm = 0.0, 0.0
    if active:
        prompts = [q.prompt for q in questions for _ in range(S)]
        for s in range(0, len(active), cfg.micro_batch_size):
            rows = active[s : s + cfg.micro_batch_size]
            x, y, m = answer_rows([prompts[i] for i in rows], [answers[i] for i in rows], model.cfg.block_size,
                                  fmt.eot)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                loss = policy_loss(model, x.to(device), y.to(device), m.to(device), adv[rows].to(device), n_tokens)
            loss.backward()
            loss_sum += float(loss.detach())
        if not math.isfinite(loss_sum):
            opt.zero_grad(set_to_none=True)
            raise TrainingDiverged(f"loss is {loss_sum} at step {step + 1}")
        clip = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip))
        if not math.isfinite(grad_norm):
            opt.zero_grad(set_to_none=True)
            raise TrainingDiverged(f"gradient norm is {grad_norm} at step {step + 1}")
        opt.step()
        opt.zero_grad(set_to_none=True)
    # the answers themselves: a quoted reply's first line differs by question and would hide a collapse
    keys = [normalize(check.answer_in(t)) for t, check in zip(texts, checks)]
    counts: dict[str, int] = {}
    for k in keys:
        counts[k] = counts.get(k, 0) + 1
    groups = [len(set(keys[g * S : (g + 1) * S])) / S for g in range(len(questions))]
    return {"step": step + 1, "mean_reward": round(float(rewards.mean()), 6),
            "distinct_answers": len(counts), "answers": len(keys),
            "group_distinct": round(sum(groups) / len(groups), 6),  # distinct answers per question / samples
            "learning_groups": int((rewards.std(dim=1) > 0).sum()),  # groups with some right, some wrong
            "answer_tokens": round(n_tokens / len(answers), 3), "loss": round(loss_sum, 6), "lr": lr,
            "grad_norm": round(grad_norm, 6), "seconds": round(time.perf_counter() - t0, 3),
            "top_answer": max(counts, key=lambda k: (counts[k], k))}


def summary(rows: list[dict]) -> dict:
    """The run's first and last quarter of steps (at least one each): mean reward and answer diversity."""
    if not rows:
        return {}
    q = max(1, len(rows) // 4)
    first, last = rows[:q], rows[-q:]
    mean = lambda rs, k: round(sum(r[k] for r in rs) / len(rs), 6)  # noqa: E731
    return {"mean_reward_first": mean(first, "mean_reward"), "mean_reward_last": mean(last, "mean_reward"),
            "group_distinct_first": mean(first, "group_distinct"), "group_distinct_last": mean(last, "group_distinct"),
            "seconds_per_step": mean(rows, "seconds")}
