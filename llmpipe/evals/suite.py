"""A benchmark suite over scored items: the metrics, and scoring whole tasks (in the loop and after it).

- acc: the choice with the highest summed log-likelihood is the right one (first on ties);
- acc_norm: the same after dividing each log-likelihood by its choice's length in characters, as
  lm-eval 0.4 defines it (llm.c and build-nanogpt divide by tokens instead);
- language-modeling items count as right when greedy decoding gives the whole continuation;
- centered accuracy: (acc - random) / (1 - random), 0 at chance and 1 when perfect, where `random` is the
  mean of 1/choices over the items; multiple-choice tasks center acc_norm, the others acc; the CORE-style
  score is the mean centered accuracy over the tasks (nanochat's CORE: 22 DCLM tasks).
"""

from __future__ import annotations

import time

import numpy as np

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
    clean = [r for i, r in zip(items, rows) if i.id not in contaminated]
    out["contaminated"] = len(items) - len(clean)
    if contaminated:
        out["acc_clean"] = float(np.mean([r[0] for r in clean])) if clean else float("nan")
        out["acc_norm_clean"] = float(np.mean([r[1] for r in clean])) if clean else float("nan")
    return out


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
        for key in ("acc", "acc_norm", "centered", "acc_clean", "acc_norm_clean"):
            if key in m:
                flat[f"{prefix}{name}_{key}"] = round(m[key], 6)
    return flat


def inloop_evaluator(items: list[Item], tok, eot_id: int, max_rows: int = 64):
    """For pretraining: model, dtype -> {acc_norm (mean over tasks), <task>_acc_norm ...} on fixed items."""
    by_task: dict[str, list[Item]] = {}
    for item in items:
        by_task.setdefault(item.task, []).append(item)

    def evaluate(model, dtype) -> dict[str, float]:
        result = run_suite(model, tok, by_task, eot_id, max_rows, dtype)
        row = {f"{name}_acc_norm": round(m["acc_norm"], 6) for name, m in result["tasks"].items()}
        row["acc_norm"] = round(float(np.mean(list(row.values()))), 6)
        return row

    return evaluate
