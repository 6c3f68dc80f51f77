"""Instruction finetuning on the demo: exact match on held-out items, the finetuned model side by side
with its base (the reference: same prompts, same chat template, greedy decoding).

    python bench/sft.py [--root .] [--no-dvc] [-S finetune.max_steps=300 ...]

Runs the chat stages up to chat-eval: `dvc repro chat-eval` in the repository (which first builds
whatever is missing, the whole demo pipeline from a fresh clone), or with --no-dvc the three stage
commands (sft-data, finetune, chat-eval) on outputs already there (data/model, data/dedup,
data/tokenizer). -S KEY=VALUE overrides params for this run (with --no-dvc only: written to a copy of
params.yaml that the commands get with --params).

Prints where the time went (each stage's seconds), accuracy per task for both models, a few samples,
and ends with

    RESULT finetuned_acc=<x> base_acc=<x> n_val_items=<n> gain=<x> finetune_s=<x> chat_eval_s=<x>

The target is finetuned_acc >= base_acc + 0.20 on at least 200 held-out items.
"""

from __future__ import annotations

import _root  # noqa: F401  (first: takes bench/ off the import path, see bench/_root.py)

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
STAGES = ["sft-data", "finetune", "chat-eval"]


def override(params: dict, key: str, value: str) -> None:
    *path, leaf = key.split(".")
    node = params
    for part in path:
        node = node.setdefault(part, {})
    node[leaf] = yaml.safe_load(value)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=ROOT)
    ap.add_argument("--no-dvc", action="store_true", help="run the three stage commands, not dvc repro")
    ap.add_argument("-S", dest="set", action="append", default=[], help="KEY=VALUE params override (--no-dvc)")
    args = ap.parse_args()
    root = args.root.resolve()
    params = root / "params.yaml"
    if args.set:
        if not args.no_dvc:
            sys.exit("-S needs --no-dvc (dvc repro reads params.yaml itself)")
        data = yaml.safe_load(params.read_text())
        for item in args.set:
            key, _, value = item.partition("=")
            override(data, key, value)
        params = root / "data" / "bench-sft-params.yaml"
        params.parent.mkdir(parents=True, exist_ok=True)
        params.write_text(yaml.safe_dump(data, sort_keys=False))
    t0 = time.perf_counter()
    if args.no_dvc:
        for name in STAGES:
            cmd = [sys.executable, "-m", "llmpipe.cli", "--root", str(root), "--params", str(params), name]
            if subprocess.run(cmd, cwd=root).returncode != 0:
                sys.exit(f"llmpipe {name} failed")
    else:
        if subprocess.run(["dvc", "repro", "chat-eval"], cwd=root).returncode != 0:
            sys.exit("dvc repro chat-eval failed")
    wall = time.perf_counter() - t0
    metrics = {name: json.loads((root / "data" / "metrics" / f"{name}.json").read_text()) for name in STAGES}
    ev, ft, sd = metrics["chat-eval"], metrics["finetune"], metrics["sft-data"]
    print(f"\nsft-data: {sd['train_conversations']} train / {sd['val_conversations']} held-out conversations, "
          f"{sd['train_target_tokens']:,} target tokens in {sd['train_rows']} rows ({sd['seconds']:.1f} s)")
    print(f"finetune: {ft['steps']} steps in {ft['seconds']:.1f} s ({ft['precision']}), "
          f"final train loss {ft.get('final_train_loss')}, val loss {ft.get('final_val_loss')}")
    print(f"chat-eval: {ev['seconds']:.1f} s (base {ev['base_seconds']:.1f} s, finetuned {ev['finetuned_seconds']:.1f} s);"
          f" items per task: {ev['tasks']}")
    tasks = sorted(k.removeprefix("base_acc_") for k in ev if k.startswith("base_acc_"))
    print(f"{'task':10} {'base':>6} {'finetuned':>9}")
    for task in tasks + [""]:
        suffix = f"_{task}" if task else ""
        print(f"{task or 'all':10} {ev['base_acc' + suffix]:6.3f} {ev['finetuned_acc' + suffix]:9.3f}")
    for line in (root / "data" / "chat_eval" / "samples.jsonl").read_text().splitlines()[:4]:
        s = json.loads(line)
        print(f"--- {s['task']}: {s['prompt'][-1]['content'][-90:]!r}\n    reference {s['reference']!r} | "
              f"base {s['base'][:60]!r} | finetuned {s['finetuned'][:60]!r}")
    print(f"wall time of this run: {wall:.1f} s")
    result = {"finetuned_acc": ev["finetuned_acc"], "base_acc": ev["base_acc"], "n_val_items": ev["n_val_items"],
              "gain": ev["gain"], "finetune_s": ft["seconds"], "chat_eval_s": ev["seconds"]}
    print("RESULT " + " ".join(f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
