"""A benchmark suite over scored items: the metrics, and scoring whole tasks (in the loop and after it).

- acc: the choice with the highest summed log-likelihood is the right one (first on ties);
- acc_norm: the same after dividing each log-likelihood by its choice's length in characters, as
  lm-eval 0.4 defines it (llm.c and build-nanogpt divide by tokens instead);
- language-modeling items count as right when greedy decoding gives the whole continuation;
- centered accuracy: (acc - random) / (1 - random), 0 at chance and 1 when perfect, where `random` is the
  mean of 1/choices over the items; multiple-choice tasks center acc_norm, the others acc; the CORE-style
  score is the mean centered accuracy over the tasks (nanochat's CORE: 22 DCLM tasks);
- beside every accuracy its baselines and its uncertainty (llmpipe/evals/taskstats.py): the majority
  rule, a 95% Wilson interval, whether the interval clears the best trivial rule, and the gold
  continuation's bits per byte.
"""

from __future__ import annotations

import time

import numpy as np

from llmpipe.evals.taskstats import gold_bits_bytes, majority, wilson
from llmpipe.evals.score import Scored, score_items
from llmpipe.evals.tasks import Item


def item_metrics(item: Item, s: Scored) -> tuple[float, float]:
    """(acc, acc_norm) of one scored item."""
    if item.kind == "language_modeling":
        right = float(s.greedy[0])
        return right, right
    ll = np.array(s.loglik)
    acc = float(int(np.argmax(ll)) == item.gold)
    acc_norm = float(int(np.argmax(ll / np.maximum(np.array(s.cont_chars, dtype=float), 1.0))) == item.gold)
    return acc, acc_norm


def task_metrics(items: list[Item], scores: list[Scored], contaminated: set[str] = frozenset()) -> dict:
    rows = [item_metrics(i, s) for i, s in zip(items, scores)]
    acc, acc_norm = (float(np.mean([r[k] for r in rows])) for k in (0, 1))
    random_acc = float(np.mean([0.0 if i.kind == "language_modeling" else 1.0 / i.n_choices for i in items]))
    main = acc_norm if items[0].kind == "multiple_choice" else acc
    out = {"n": len(items), "acc": acc, "acc_norm": acc_norm, "random": random_acc,
           "centered": (main - random_acc) / (1.0 - random_acc)}
    out.update(uncertainty(items, acc, acc_norm, random_acc))
    bits, n_bytes = np.sum([gold_bits_bytes(i, s.loglik) for i, s in zip(items, scores)], axis=0)
    out["gold_bpb"] = float(bits / max(n_bytes, 1))
    clean = [r for i, r in zip(items, rows) if i.id not in contaminated]
    out["contaminated"] = len(items) - len(clean)
    if contaminated:
        out["acc_clean"] = float(np.mean([r[0] for r in clean])) if clean else float("nan")
        out["acc_norm_clean"] = float(np.mean([r[1] for r in clean])) if clean else float("nan")
    return out


def uncertainty(items: list[Item], acc: float, acc_norm: float, random_acc: float) -> dict:
    """The majority rule, 95% Wilson intervals of acc and acc_norm, and whether each interval's lower
    bound clears the best trivial rule."""
    n = len(items)
    trivial = max(random_acc, majority(items))
    acc_ci, norm_ci = wilson(acc * n, n), wilson(acc_norm * n, n)
    return {"majority": majority(items), "trivial": trivial, "acc_ci": list(acc_ci), "acc_norm_ci": list(norm_ci),
            "significant": acc_ci[0] > trivial, "significant_norm": norm_ci[0] > trivial}


def run_suite(model, tok, tasks: dict[str, list[Item]], eot_id: int, max_rows: int = 32, dtype=None,
              contaminated: dict[str, set[str]] | None = None) -> dict:
    """Score every task; per-task metrics, the CORE-style mean, items and seconds."""
    import torch

    dtype = dtype or torch.float32
    t0, out, n_items = time.perf_counter(), {}, 0
    for name, items in tasks.items():
        scores = score_items(model, tok, items, eot_id, max_rows, dtype)
        out[name] = task_metrics(items, scores, (contaminated or {}).get(name, set()))
        n_items += len(items)
    seconds = time.perf_counter() - t0
    return {"tasks": out, "core": float(np.mean([t["centered"] for t in out.values()])) if out else 0.0,
            "items": n_items, "seconds": seconds, "items_per_s": n_items / max(seconds, 1e-9)}


def flat_metrics(result: dict, prefix: str = "") -> dict[str, float]:
    """The suite result as flat metric names: <task>_acc, <task>_acc_norm, ..., core."""
    flat = {f"{prefix}core": round(result["core"], 6)}
    for name, m in result["tasks"].items():
        for key in ("acc", "acc_norm", "centered", "acc_clean", "acc_norm_clean", "gold_bpb", "majority", "snr"):
            if m.get(key) is not None:
                flat[f"{prefix}{name}_{key}"] = round(m[key], 6)
    return flat


def inloop_evaluator(items: list[Item], tok, eot_id: int, max_rows: int = 64):
    """For pretraining: model, dtype -> {<task>_acc_norm, <task>_gold_bpb ..., acc_norm and gold_bpb (means
    over tasks)} on fixed items: the benchmark stage's signal-to-noise ratios are computed from these."""
    by_task: dict[str, list[Item]] = {}
    for item in items:
        by_task.setdefault(item.task, []).append(item)

    def evaluate(model, dtype) -> dict[str, float]:
        result = run_suite(model, tok, by_task, eot_id, max_rows, dtype)
        row = {}
        for name, m in result["tasks"].items():
            row[f"{name}_acc_norm"], row[f"{name}_gold_bpb"] = round(m["acc_norm"], 6), round(m["gold_bpb"], 6)
        for key in ("acc_norm", "gold_bpb"):
            row[key] = round(float(np.mean([m[key] for m in result["tasks"].values()])), 6)
        return row

    return evaluate
