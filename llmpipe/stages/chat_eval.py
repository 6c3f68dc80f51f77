"""Stage chat-eval: exact-match accuracy on the held-out instruction items for the finetuned model,
against the best trivial baseline of each item type; the base model and the reward stage's model (rl)
alike, the rl model also against the finetuned one it started from; samples side by side.

An item is a held-out conversation: the prompt is everything before its last assistant turn, the
reference is that turn; an answer counts when it equals the item's answer after `normalize` (case,
whitespace and trailing punctuation); a reply taught to repeat the quoted line first is scored on what
follows that line (llmpipe.evals.trivial.Check). The headline is the gain over the best trivial rule
(llmpipe.evals.trivial: the train items' majority answer, the passage's first or last speaker or line,
a seeded random one): per type the best rule on the held-out items, combined over types, with a paired
bootstrap interval and an exact sign test. The base model never saw the chat markers, so its accuracy
is what the format alone gives a model that was not finetuned; it is reported, not the reference.

Conversations from instruction files have free-text answers that no exact match can score: for them the
stage reports each model's loss on the held-out answers (llmpipe.evals.answer_loss: nats per answer
token and bits per byte), what finetuning took off the base model's (with a bootstrap interval), and a
few replies beside their references.

Every model also gets evaluate's copy probe (a val span shown twice: top-1 on the repeat against the
first showing), since the demo's questions are answered by copying from the passage and finetuning can
wear the copying down (docs/assistant.md).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from llmpipe.evals.answer_loss import AnswerLoss, answer_losses
from llmpipe.evals.copying import copy_probe, varied_copy_probe
from llmpipe.evals.trivial import (FILES, Baselines, Gain, answer_of, baselines, case_of, chance, check_of,
                                   is_checkable, paired_gain)
from llmpipe.model.gpt import GPT
from llmpipe.model.weights import WEIGHTS, is_pass_through, load_model
from llmpipe.stages.registry import StageParams, StageResult, stage
from llmpipe.tokens.chat import ChatFormat, check_reply_budget, prompt_and_reference
from llmpipe.tokens.examples import read_conversations
from llmpipe.tokens.loader import TokenData
from llmpipe.training.generate import generate_batch
from llmpipe.util.io import InputError, atomic_path

log = logging.getLogger(__name__)
STAGE = stage("chat-eval")


def answers(model: GPT, fmt: ChatFormat, prompts: list[list[dict]], max_new_tokens: int,
            batch_size: int) -> list[str]:
    """Greedy replies to each prompt (a list of messages), each ending at <|end|> or <|endoftext|>."""
    ids = [fmt.prompt(p) for p in prompts]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths share a batch: less padding
    out: list[str] = [""] * len(ids)
    for s in range(0, len(order), batch_size):
        rows = order[s : s + batch_size]
        gen = generate_batch(model, [ids[i] for i in rows], max_new_tokens, eot_id=fmt.end, temperature=0.0,
                             stop_fn=lambda _row, toks: toks[-1] in fmt.stop_ids)
        for i, toks in zip(rows, gen):
            out[i] = fmt.reply_text(toks)
    return out


def score(conversations: list[dict], replies: list[str]) -> tuple[float, dict[str, float], list[bool]]:
    """(accuracy, accuracy per task, right or wrong per item)."""
    right = [check_of(c)(r) for c, r in zip(conversations, replies)]
    per: dict[str, list[bool]] = {}
    for c, ok in zip(conversations, right):
        per.setdefault(c.get("task") or FILES, []).append(ok)
    acc = sum(right) / len(right) if right else 0.0
    return acc, {task: sum(v) / len(v) for task, v in sorted(per.items())}, right


def significant(p: float) -> float:
    """A p-value to 6 significant digits: rounding to decimals made 5.6e-08 a 0 that the demo printed."""
    return float(f"{p:.6g}")


def baseline_metrics(conversations: list[dict], train: list[dict], right: list[bool], seed: int = 0,
                     resamples: int = 2000) -> tuple[dict, Baselines, Gain]:
    """The finetuned model's results (`right`, per item) against the trivial baselines: the metrics,
    the baselines and the gain over the best of them."""
    cases = [case_of(c) for c in conversations]
    base = baselines(cases, [case_of(c) for c in train], seed)
    gain = paired_gain(right, base.best_right, seed, resamples)
    m: dict = {"best_baseline_acc": round(base.best_acc, 4),
               "majority_acc": round(sum(base.majority_right) / len(cases), 4),
               "gain_over_best_baseline": round(gain.gain, 4), "gain_ci_low": round(gain.ci_low, 4),
               "gain_ci_high": round(gain.ci_high, 4), "gain_p_value": significant(gain.p_value),
               "items_model_only_right": gain.model_only, "items_baseline_only_right": gain.baseline_only}
    type_gains = []
    for task, rules in base.acc.items():
        mine = [ok for c, ok in zip(cases, right) if c.task == task]
        acc = sum(mine) / len(mine)
        m[f"acc_{task}"] = round(acc, 4)
        m[f"best_baseline_{task}"] = round(base.best_acc_of(task), 4)
        m[f"best_baseline_rule_{task}"] = base.best_rule[task]
        m[f"majority_acc_{task}"] = round(rules["majority"], 4)
        m[f"gain_{task}"] = round(acc - base.best_acc_of(task), 4)
        type_gains.append(acc - base.best_acc_of(task))
        # the same interval and paired test per type: a type's gain alone can be noise at 100 items
        best_right = [ok for c, ok in zip(cases, base.best_right) if c.task == task]
        per = paired_gain(mine, best_right, seed, resamples)
        m[f"gain_ci_low_{task}"], m[f"gain_ci_high_{task}"] = round(per.ci_low, 4), round(per.ci_high, 4)
        m[f"gain_p_value_{task}"] = significant(per.p_value)
    m.update({f"chance_{task}": round(p, 4) for task, p in chance(cases).items()})
    m["min_type_gain"] = round(min(type_gains), 4)
    return m, base, gain


def rl_metrics(conversations: list[dict], train: list[dict], right: dict[str, list[bool]], seed: int = 0) -> dict:
    """The rl model against the same trivial baselines (its gains, prefixed rl_) and against the finetuned
    model it started from, item by item (rl_gain_over_sft, with its interval and paired test)."""
    against, _, _ = baseline_metrics(conversations, train, right["rl"], seed)
    m = {f"rl_{k}": v for k, v in against.items() if k.startswith(("gain", "min_type_gain", "items_"))}
    over = paired_gain(right["rl"], right["finetuned"], seed)
    m.update({"rl_gain_over_sft": round(over.gain, 4), "rl_gain_over_sft_ci_low": round(over.ci_low, 4),
              "rl_gain_over_sft_ci_high": round(over.ci_high, 4), "rl_gain_over_sft_p_value": significant(over.p_value),
              "items_rl_only_right": over.model_only, "items_sft_only_right": over.baseline_only})
    return m


def free_text_metrics(losses: dict[str, AnswerLoss], seed: int = 0, resamples: int = 2000) -> dict:
    """Each model's loss on the held-out free-text answers, and what finetuning took off the base model's,
    with a 95% bootstrap interval over conversations (the answers' tokens are the same for every model)."""
    m: dict = {}
    for name, loss in losses.items():
        m[f"{name}_answer_loss"] = round(loss.mean_loss, 4)
        m[f"{name}_answer_bpb"] = round(loss.bits_per_byte, 4)
    base, tuned = losses["base"], losses["finetuned"]
    m["answer_loss_drop"] = round(base.mean_loss - tuned.mean_loss, 4)
    m["answer_bpb_drop"] = round(base.bits_per_byte - tuned.bits_per_byte, 4)
    nb, nf, tok = (np.asarray(v, dtype=np.float64) for v in (base.nats, tuned.nats, base.tokens))
    idx = np.random.default_rng(seed).integers(0, len(tok), size=(resamples, len(tok)))
    drops = (nb[idx].sum(axis=1) - nf[idx].sum(axis=1)) / np.maximum(tok[idx].sum(axis=1), 1)
    m["answer_loss_drop_ci_low"], m["answer_loss_drop_ci_high"] = (round(float(v), 4) for v in np.percentile(drops, [2.5, 97.5]))
    m["answer_loss_items_improved"] = round(float(np.mean(np.asarray(tuned.per_item()) < np.asarray(base.per_item()))), 4)
    return m


def run(params: StageParams, root: Path, sink=None) -> StageResult:
    t0 = time.perf_counter()
    cfg = params.chat_eval
    held_out = read_conversations(root / STAGE.inp("val"))[: cfg.max_items]
    if not held_out:
        raise InputError(f"{STAGE.inp('val')}: no held-out conversations to evaluate (see data/sft/report.json)")
    train = read_conversations(root / STAGE.inp("train"))
    try:
        fmt = ChatFormat(Tokenizer.from_file(str(root / STAGE.inp("tokenizer"))))
    except ValueError as err:
        raise InputError(f"{STAGE.inp('tokenizer')}: {err}") from None
    # exact match where the answer is checkable (the demo's items); the answers' loss for free text (files)
    conversations = [c for c in held_out if is_checkable(c)]
    free = [c for c in held_out if not is_checkable(c)]
    check_reply_budget(conversations, fmt, cfg.max_new_tokens, "chat_eval.max_new_tokens")
    prompts = [prompt_and_reference(c["messages"])[0] for c in conversations]
    free_prompts = [prompt_and_reference(c["messages"])[0] for c in free[: cfg.samples]]
    metrics: dict = {"n_val_items": len(conversations), "n_free_items": len(free)}
    replies, right, losses, free_replies = {}, {}, {}, {}
    stream = None  # the whole val split, checked against the tokenizer the models were trained with
    if cfg.copy_spans:
        stream = TokenData(root / STAGE.inp("tokens"), "val", tokenizer_path=root / STAGE.inp("tokenizer")).scored()[0]
    models = [("base", "base"), ("finetuned", "model")]
    rl_dir = root / STAGE.inp("rl")
    if (rl_dir / WEIGHTS).exists() and not is_pass_through(rl_dir):  # the reward stage's model, side by side
        models.append(("rl", "rl"))
    for name, key in models:
        t1 = time.perf_counter()
        model = load_model(root / STAGE.inp(key))
        if conversations:
            replies[name] = answers(model, fmt, prompts, cfg.max_new_tokens, cfg.batch_size)
            acc, per_task, right[name] = score(conversations, replies[name])
            metrics[f"{name}_acc"] = round(acc, 4)
            metrics.update({f"{name}_acc_{task}": round(a, 4) for task, a in per_task.items()})
        if cfg.copy_spans:  # evaluate's batch of 8 rows: a row's logits take ~25 MB
            probe = copy_probe(model, stream, cfg.copy_spans, min(cfg.batch_size, 8))
            if probe:
                metrics.update({f"{name}_{k}": round(probe[k], 4) for k in ("copy_repeat_top1", "copy_first_top1")})
                metrics.update(copy_spans=probe["copy_spans"], copy_span_tokens=probe["copy_span_tokens"])
                log.info("chat-eval: %s model copies a val span's repeat with top-1 %.3f (first showing %.3f)",
                         name, probe["copy_repeat_top1"], probe["copy_first_top1"])
            else:
                log.warning("chat-eval: no copy probe: the %d val tokens hold no span of block_size // 2 = %d "
                            "tokens (chat_eval.copy_spans)", len(stream), model.cfg.block_size // 2)
            if varied := varied_copy_probe(model, stream, cfg.copy_spans, min(cfg.batch_size, 8)):
                keys = ("copy_varied_repeat_top1", "copy_varied_first_top1")
                metrics.update({f"{name}_{k}": round(varied[k], 4) for k in keys})
                log.info("chat-eval: %s model, spans of %d-%d tokens shown twice: top-1 %.3f on the repeat (first %.3f)",
                         name, varied["copy_varied_min_tokens"], varied["copy_varied_max_tokens"], *(varied[k] for k in keys))
            else:
                log.warning("chat-eval: no varied copy probe: the %d val tokens hold too few rows of %d tokens",
                            len(stream), model.cfg.block_size)
        if free:
            losses[name] = answer_losses(model, fmt, free, cfg.batch_size)
            free_replies[name] = answers(model, fmt, free_prompts, cfg.max_new_tokens, cfg.batch_size)
        metrics[f"{name}_seconds"] = round(time.perf_counter() - t1, 3)
    if free:
        metrics.update(free_text_metrics(losses))
        log.info("chat-eval: loss on %d held-out free-text answers %.3f nats per token (%.3f bits per byte) after "
                 "finetuning, %.3f (%.3f) before", len(free), losses["finetuned"].mean_loss,
                 losses["finetuned"].bits_per_byte, losses["base"].mean_loss, losses["base"].bits_per_byte)
    samples = []
    if conversations:
        samples = exact_match_report(conversations, train, prompts, replies, right, metrics)[: cfg.samples]
    for i, c in enumerate(free[: cfg.samples]):
        samples.append({"source": c.get("source"), "task": FILES, "prompt": free_prompts[i],
                        "reference": prompt_and_reference(c["messages"])[1],
                        **{name: free_replies[name][i] for name in free_replies},
                        **{f"{name}_loss": round(losses[name].per_item()[i], 4) for name in losses}})
    dest = root / STAGE.out("samples")
    with atomic_path(dest) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for sample in samples:
            f.write(json.dumps(sample, ensure_ascii=False) + "\n")
    metrics["seconds"] = round(time.perf_counter() - t0, 3)
    return StageResult(metrics, artifacts=[dest])


def exact_match_report(conversations: list[dict], train: list[dict], prompts: list, replies: dict, right: dict,
                       metrics: dict) -> list[dict]:
    """Adds the exact-match comparisons to `metrics` (finetuned and rl against the trivial baselines, rl
    against the finetuned model); returns the items side by side, one record each."""
    against, base, gain = baseline_metrics(conversations, train, right["finetuned"])
    metrics.update(against)
    metrics["gain_over_base"] = round(metrics["finetuned_acc"] - metrics["base_acc"], 4)
    if "rl" in right:
        metrics.update(rl_metrics(conversations, train, right))
    metrics["tasks"] = ",".join(f"{k}:{n}" for k, n in sorted(Counter(c.get("task") or FILES for c in conversations).items()))
    log.info("chat-eval: finetuned %.1f%% exact match on %d items, best trivial baseline %.1f%%: gain %+.1f points "
             "(95%% interval %+.1f to %+.1f, p = %.3g); base model %.1f%%", 100 * metrics["finetuned_acc"],
             len(conversations), 100 * base.best_acc, 100 * gain.gain, 100 * gain.ci_low, 100 * gain.ci_high,
             gain.p_value, 100 * metrics["base_acc"])
    if "rl" in right:
        log.info("chat-eval: rl %.1f%% exact match, %+.1f points over the finetuned model (95%% interval %+.1f to "
                 "%+.1f, p = %.3g)", 100 * metrics["rl_acc"], 100 * metrics["rl_gain_over_sft"],
                 100 * metrics["rl_gain_over_sft_ci_low"], 100 * metrics["rl_gain_over_sft_ci_high"],
                 metrics["rl_gain_over_sft_p_value"])
    return [{"source": c.get("source"), "task": c.get("task"), "prompt": prompts[i],
             "reference": prompt_and_reference(c["messages"])[1], "answer": answer_of(c),
             "base": replies["base"][i], "base_ok": right["base"][i],
             "finetuned": replies["finetuned"][i], "finetuned_ok": right["finetuned"][i],
             **({"rl": replies["rl"][i], "rl_ok": right["rl"][i]} if "rl" in right else {}),
             "baseline": base.best_answers[i], "baseline_ok": base.best_right[i],
             "baseline_rule": base.best_rule[c.get("task") or FILES]} for i, c in enumerate(conversations)]
