"""Stage chat-eval: exact-match accuracy on the held-out instruction items for the finetuned model,
against the best trivial baseline of each item type; the base model alike; samples side by side.

An item is a held-out conversation: the prompt is everything before its last assistant turn, the
reference is that turn; an answer counts when it equals the reference after `normalize` (case,
whitespace and trailing punctuation). The headline is the gain over the best trivial rule
(llmpipe.evals.trivial: the train items' majority answer, the passage's first or last speaker or line,
a seeded random one): per type the best rule on the held-out items, combined over types, with a paired
bootstrap interval and an exact sign test. The base model never saw the chat markers, so its accuracy
is what the format alone gives a model that was not finetuned; it is reported, not the reference.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path

from tokenizers import Tokenizer

from llmpipe.evals.trivial import FILES, Baselines, Gain, baselines, case_of, chance, is_right, paired_gain
from llmpipe.model.gpt import GPT
from llmpipe.model.weights import load_model
from llmpipe.stages.registry import StageParams, StageResult, stage
from llmpipe.tokens.chat import ChatFormat, prompt_and_reference
from llmpipe.tokens.examples import read_conversations
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
            out[i] = fmt.tok.decode([t for t in toks if t not in fmt.stop_ids])
    return out


def score(conversations: list[dict], replies: list[str]) -> tuple[float, dict[str, float], list[bool]]:
    """(accuracy, accuracy per task, right or wrong per item)."""
    right = [is_right(r, prompt_and_reference(c["messages"])[1]) for c, r in zip(conversations, replies)]
    per: dict[str, list[bool]] = {}
    for c, ok in zip(conversations, right):
        per.setdefault(c.get("task") or FILES, []).append(ok)
    acc = sum(right) / len(right) if right else 0.0
    return acc, {task: sum(v) / len(v) for task, v in sorted(per.items())}, right


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
               "gain_ci_high": round(gain.ci_high, 4), "gain_p_value": round(gain.p_value, 6),
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
        m[f"gain_p_value_{task}"] = round(per.p_value, 6)
    m.update({f"chance_{task}": round(p, 4) for task, p in chance(cases).items()})
    m["min_type_gain"] = round(min(type_gains), 4)
    return m, base, gain


def run(params: StageParams, root: Path, sink=None) -> StageResult:
    t0 = time.perf_counter()
    cfg = params.chat_eval
    conversations = read_conversations(root / STAGE.inp("val"))[: cfg.max_items]
    if not conversations:
        raise InputError(f"{STAGE.inp('val')}: no held-out conversations to evaluate (see data/sft/report.json)")
    train = read_conversations(root / STAGE.inp("train"))
    try:
        fmt = ChatFormat(Tokenizer.from_file(str(root / STAGE.inp("tokenizer"))))
    except ValueError as err:
        raise InputError(f"{STAGE.inp('tokenizer')}: {err}") from None
    prompts = [prompt_and_reference(c["messages"])[0] for c in conversations]
    metrics: dict = {"n_val_items": len(conversations)}
    replies, right = {}, {}
    for name, key in (("base", "base"), ("finetuned", "model")):
        t1 = time.perf_counter()
        replies[name] = answers(load_model(root / STAGE.inp(key)), fmt, prompts, cfg.max_new_tokens, cfg.batch_size)
        acc, per_task, right[name] = score(conversations, replies[name])
        metrics[f"{name}_acc"] = round(acc, 4)
        metrics.update({f"{name}_acc_{task}": round(a, 4) for task, a in per_task.items()})
        metrics[f"{name}_seconds"] = round(time.perf_counter() - t1, 3)
    against, base, gain = baseline_metrics(conversations, train, right["finetuned"])
    metrics.update(against)
    metrics["gain_over_base"] = round(metrics["finetuned_acc"] - metrics["base_acc"], 4)
    metrics["tasks"] = ",".join(f"{k}:{n}" for k, n in sorted(Counter(c.get("task") or FILES for c in conversations).items()))
    log.info("chat-eval: finetuned %.1f%% exact match on %d items, best trivial baseline %.1f%%: gain %+.1f points "
             "(95%% interval %+.1f to %+.1f, p = %.3g); base model %.1f%%", 100 * metrics["finetuned_acc"],
             len(conversations), 100 * base.best_acc, 100 * gain.gain, 100 * gain.ci_low, 100 * gain.ci_high,
             gain.p_value, 100 * metrics["base_acc"])
    dest = root / STAGE.out("samples")
    with atomic_path(dest) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for i, c in enumerate(conversations[: cfg.samples]):
            f.write(json.dumps({"source": c.get("source"), "task": c.get("task"), "prompt": prompts[i],
                                "reference": prompt_and_reference(c["messages"])[1],
                                "base": replies["base"][i], "base_ok": right["base"][i],
                                "finetuned": replies["finetuned"][i], "finetuned_ok": right["finetuned"][i],
                                "baseline": base.best_answers[i], "baseline_ok": base.best_right[i],
                                "baseline_rule": base.best_rule[c.get("task") or FILES]},
                               ensure_ascii=False) + "\n")
    metrics["seconds"] = round(time.perf_counter() - t0, 3)
    return StageResult(metrics, artifacts=[dest])
