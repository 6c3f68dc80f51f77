"""Stage benchmark: the trained model on the chosen benchmark items.

Per task acc, acc_norm, centered accuracy, and both accuracies without the items the contamination check
found in the training documents; the CORE-style mean; items per second. A table in markdown
(data/evals/benchmark.md) and the whole result in JSON; the flat metrics go to DVC and MLflow.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer

from llmpipe.evals.suite import flat_metrics, run_suite
from llmpipe.evals.tasks import read_items
from llmpipe.model.weights import load_model
from llmpipe.stages.registry import StageParams, StageResult, stage
from llmpipe.tokens.bpe import EOT
from llmpipe.util.io import InputError, read_json, write_json, write_text

log = logging.getLogger(__name__)
STAGE = stage("benchmark")


def table(result: dict) -> str:
    lines = ["| task | items | acc | acc_norm | random | centered | contaminated | acc_norm (clean) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, m in result["tasks"].items():
        clean = f"{m['acc_norm_clean']:.4f}" if "acc_norm_clean" in m else f"{m['acc_norm']:.4f}"
        lines.append(f"| {name} | {m['n']} | {m['acc']:.4f} | {m['acc_norm']:.4f} | {m['random']:.4f} | "
                     f"{m['centered']:+.4f} | {m['contaminated']} | {clean} |")
    lines.append(f"\nCORE-style mean centered accuracy: {result['core']:+.4f} over {len(result['tasks'])} tasks; "
                 f"{result['items']} items in {result['seconds']:.1f} s ({result['items_per_s']:.1f} items/s)")
    return "\n".join(lines) + "\n"


def run(params: StageParams, root: Path, sink=None) -> StageResult:
    t0 = time.perf_counter()
    cfg = params.benchmark
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    folder = root / STAGE.inp("tasks")
    manifest = read_json(folder / "manifest.json")
    tasks = {name: read_items(folder / f"{name}.jsonl") for name in manifest["tasks"]}
    empty = [n for n, items in tasks.items() if not items]
    if empty:
        raise InputError(f"{folder}: task(s) {', '.join(empty)} have no items")
    report = read_json(root / STAGE.inp("report"))
    dirty = {n: set(r["contaminated_ids"]) for n, r in report["tasks"].items()}
    tok = Tokenizer.from_file(str(root / STAGE.inp("tokenizer")))
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(root / STAGE.inp("model"), device)
    dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32
    result = run_suite(model, tok, tasks, tok.token_to_id(EOT), cfg.batch_rows, dtype, dirty)
    result["fewshot"], result["device"] = manifest.get("fewshot", 0), device
    write_json(root / STAGE.out("results"), result)
    write_text(root / STAGE.out("table"), table(result))
    log.info("benchmark:\n%s", table(result))
    metrics = {**flat_metrics(result), "items": result["items"], "items_per_s": round(result["items_per_s"], 2),
               "seconds": round(time.perf_counter() - t0, 3)}
    return StageResult(metrics, artifacts=[root / STAGE.out("table"), root / STAGE.out("results")])
