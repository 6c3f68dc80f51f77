"""Stage benchmark: the trained model on the chosen benchmark items.

Per task acc, acc_norm, centered accuracy, and both accuracies without the items the contamination check
found in the training documents; the CORE-style mean; items per second. Beside every accuracy its
baselines (random, the majority rule), its 95% Wilson interval and whether it clears them, the gold
continuation's bits per byte, and the task's signal-to-noise ratio over pretraining's in-loop
evaluations (data/plots/bench.tsv); the CORE-style mean again over the tasks whose SNR exceeds 1.
A table in markdown (data/evals/benchmark.md) and the whole result in JSON; the flat metrics go to DVC
and MLflow.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path

import torch
from tokenizers import Tokenizer

from llmpipe.evals.snr import read_curves, task_snr
from llmpipe.evals.suite import flat_metrics, run_suite
from llmpipe.evals.tasks import read_items
from llmpipe.model.weights import load_model
from llmpipe.stages.registry import StageParams, StageResult, stage
from llmpipe.tokens.bpe import EOT
from llmpipe.util.io import InputError, read_json, write_json, write_text

log = logging.getLogger(__name__)
STAGE = stage("benchmark")


SNR_MIN = 1.0  # tasks whose accuracy moves more than it jitters enter the filtered CORE-style mean


def add_snr(result: dict, curves: dict[str, list[float]], window: int, inloop_items: dict[str, int]) -> None:
    """Per task its SNRs over the in-loop curves; `core_snr_mean`: the CORE-style mean over the tasks whose
    acc_norm SNR exceeds 1. The filter reads acc_norm's SNR, not gold_bpb's: the mean averages centered
    accuracy, and bits per byte fall during training even where accuracy stays at chance, so a bpb filter
    would let chance-level tasks back into the mean (the paper filters on the averaged metric's SNR).
    inloop_items: in-loop items per task (an accuracy's binomial noise; llmpipe/evals/snr.py)."""
    for name, m in result["tasks"].items():
        m.update(task_snr(curves, name, window, inloop_items.get(name)))
    kept = [n for n, m in result["tasks"].items() if m["snr"] is not None and m["snr"] > SNR_MIN]
    result["core_snr_tasks"] = kept
    result["core_snr_mean"] = float(sum(result["tasks"][n]["centered"] for n in kept) / len(kept)) if kept else None
    result["snr_window"] = window


def _ci(m: dict, key: str) -> str:
    lo, hi = m[f"{key}_ci"]
    return f"{m[key]:.3f} [{lo:.2f}, {hi:.2f}]"


def _snr(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(result: dict) -> str:
    lines = ["acc and acc_norm with their 95% Wilson score intervals; majority: always the most frequent gold "
             "answer of these items (chosen with the answers in view: an upper bound on any constant rule); "
             "sig.: the interval's lower bound exceeds max(random, majority); gold bpb: bits per UTF-8 byte of "
             "the right continuation; SNR: signal over noise of acc_norm (of gold bpb) over pretraining's in-loop "
             "evaluations (- when too few; acc_norm's noise includes the binomial error of the in-loop items).", "",
             "| task | items | acc [95% CI] | acc_norm [95% CI] | random | majority | sig. (acc/norm) | centered | "
             "gold bpb | SNR (bpb) | contaminated | acc_norm (clean) |",
             "|---|---:|---:|---:|---:|---:|:---:|---:|---:|---:|---:|---:|"]
    for name, m in result["tasks"].items():
        clean = f"{m['acc_norm_clean']:.4f}" if "acc_norm_clean" in m else f"{m['acc_norm']:.4f}"
        sig = "/".join("yes" if m[k] else "no" for k in ("significant", "significant_norm"))
        lines.append(f"| {name} | {m['n']} | {_ci(m, 'acc')} | {_ci(m, 'acc_norm')} | {m['random']:.3f} | "
                     f"{m['majority']:.3f} | {sig} | {m['centered']:+.4f} | {m['gold_bpb']:.3f} | "
                     f"{_snr(m.get('snr'))} ({_snr(m.get('snr_bpb'))}) | {m['contaminated']} | {clean} |")
    lines.append(f"\nCORE-style mean centered accuracy: {result['core']:+.4f} over {len(result['tasks'])} tasks; "
                 f"{result['items']} items in {result['seconds']:.1f} s ({result['items_per_s']:.1f} items/s)")
    if "core_snr_tasks" in result:
        kept = result["core_snr_tasks"]
        mean = "n/a" if result["core_snr_mean"] is None else f"{result['core_snr_mean']:+.4f}"
        lines.append(f"\nCORE-style mean over the tasks with acc_norm SNR > {SNR_MIN:g} (first and last "
                     f"{result['snr_window']} in-loop evaluations, half of them when fewer): {mean} over {len(kept)} "
                     f"task{'s' if len(kept) != 1 else ''}{': ' + ', '.join(kept) if kept else ''}")
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
    inloop_items = Counter(i.task for i in read_items(root / STAGE.inp("inloop")))
    add_snr(result, read_curves(root / STAGE.inp("bench")), cfg.snr_window, inloop_items)
    write_json(root / STAGE.out("results"), result)
    write_text(root / STAGE.out("table"), table(result))
    log.info("benchmark:\n%s", table(result))
    metrics = {**flat_metrics(result), "items": result["items"], "items_per_s": round(result["items_per_s"], 2),
               "seconds": round(time.perf_counter() - t0, 3), "core_snr_tasks": len(result["core_snr_tasks"])}
    if result["core_snr_mean"] is not None:
        metrics["core_snr_mean"] = round(result["core_snr_mean"], 6)
    return StageResult(metrics, artifacts=[root / STAGE.out("table"), root / STAGE.out("results")])
