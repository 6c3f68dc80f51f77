"""A training step's time, this checkout's code against another commit's, side by side on this machine.

    python bench/step_time.py [--ref e9982e6] [--depths 4 3 5] [--rounds 7] [--steps 20] [--threads 2]
                              [--precision auto|bf16|fp32]

At a fixed budget the dial's steps are what a faster step buys (issue 27), so a change that only makes
the step cheaper is a change of the recipe too. The other commit's `llmpipe/` and `params.yaml` are
unpacked with `git archive` into a scratch folder; each round runs one process per side, in turn (a load
that comes and goes spreads over both), that trains `--steps` timed steps (after 3 untimed) of
params.yaml's pretrain at the dial's shape of each depth (its width: budget.aspect x depth) on the demo's
token shards, through the training loop itself (llmpipe.training.loop.train, as the dial's probes do), and
reports its median step; a shape's speedup is the median over rounds of the ratio of its two adjacent runs.
One process at a time, never two.

Needs the demo's token shards (`dvc repro tokenize`) and a git checkout that holds --ref.
Last line: RESULT step_ms_ref=<first depth's median> step_ms_new=<...> speedup=<median of ref / new> ref=<commit>
depths=<...> precision=<...> threads=<...> seconds=<...> (speedup_LxW for every depth on the line before it)
"""

from __future__ import annotations

import _root  # noqa: F401  (first: takes bench/ off the import path, see bench/_root.py)

import argparse
import json
import statistics
import subprocess
import sys
import tarfile
import time
from io import BytesIO
from pathlib import Path

from llmpipe.stages.registry import output

ROOT = Path(_root.ROOT)

# Run in a fresh interpreter whose `llmpipe` is the tree given (this checkout's, or the unpacked commit's).
CHILD = r"""
import json, statistics, sys, tempfile
from pathlib import Path
tree, depth, steps, threads, precision, token_dir, vocab = sys.argv[1:8]
sys.path.insert(0, tree)  # before the current folder and the editable install's finder
import torch
from llmpipe.config.sections import load_sections
from llmpipe.training.budget import shape, tokens_per_step
from llmpipe.training.loop import train
torch.set_num_threads(int(threads))
base = load_sections(Path(tree) / "params.yaml", ["pretrain"]).pretrain
if base.budget is None:  # the shapes follow the dial's rule (aspect, head_dim) at its defaults
    from llmpipe.config.pretrain import BudgetParams
    base = base.model_copy(update={"budget": BudgetParams()})
warm = 3
cfg = shape(base, int(depth)).model_copy(update={
    "budget": None, "max_steps": warm + int(steps), "warmup_steps": 0, "log_interval": 1,
    "eval_interval": 10**9, "eval_batches": 1, "checkpoint_interval": 10**9, "seq_warmup_steps": 0,
    "threads": int(threads), "precision": precision})
with tempfile.TemporaryDirectory() as tmp:
    res = train(cfg, Path(token_dir), Path(tmp) / "ckpt", int(vocab), {"step_time": True})
rows = res.history["train"][warm:]
tokens = tokens_per_step(cfg)
import llmpipe
print(json.dumps({"ms": statistics.median(1000 * tokens / r["tokens_per_s"] for r in rows), "code": llmpipe.__file__,
                  "precision": res.metrics["precision"], "d_model": cfg.model.d_model, "tokens": tokens}))
"""


def resolve(ref: str) -> str:
    """The commit `ref` names (its full hash), or a clear stop."""
    proc = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", "--end-of-options",
                           f"{ref}^{{commit}}"], capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"--ref {ref}: not a commit of {ROOT} (run from a git checkout that holds it)")
    return proc.stdout.strip()


def unpack(commit: str, into: Path) -> Path:
    """`llmpipe/` and `params.yaml` of `commit`, unpacked under `into`."""
    proc = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "llmpipe", "params.yaml"], capture_output=True)
    if proc.returncode:
        sys.exit(f"git archive {commit}: {proc.stderr.decode().strip()}")
    with tarfile.open(fileobj=BytesIO(proc.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into


def time_step(tree: Path, depth: int, args, token_dir: Path, vocab: int) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tree), str(depth), str(args.steps), str(args.threads),
                           args.precision, str(token_dir), str(vocab)], capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"the step-time run of {tree} at depth {depth} failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if not Path(out["code"]).resolve().is_relative_to(tree.resolve()):
        sys.exit(f"the run meant for {tree} imported llmpipe from {out['code']}")
    return out


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be at least 1")
    return value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", default="e9982e6", help="the commit to compare with (default: the one before "
                    "issue 27's batched Newton-Schulz and one-exp loss)")
    ap.add_argument("--depths", type=positive, nargs="+", default=[4, 3, 5],
                    help="the dial's shapes (their width: budget.aspect x depth)")
    ap.add_argument("--rounds", type=positive, default=7)
    ap.add_argument("--steps", type=positive, default=20, help="timed steps a process (after 3 untimed)")
    ap.add_argument("--threads", type=positive, default=2, help="the demo's (2 cores)")
    ap.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    args = ap.parse_args()
    from llmpipe.tokens.shards import load_manifest

    token_dir = ROOT / output("tokenize.tokens")
    if not (token_dir / "manifest.json").exists():
        sys.exit(f"{token_dir}: no token shards; run `dvc repro tokenize` first")
    vocab = load_manifest(token_dir).vocab_size
    t0 = time.perf_counter()
    commit = resolve(args.ref)
    ref_tree = unpack(commit, Path(_root.scratch_dir("bench-step-time-")))
    trees = {"ref": ref_tree, "new": ROOT}
    ms: dict[tuple[str, int], list[float]] = {}
    precision, work_of = "", {}  # each depth's (precision, d_model, tokens a step): alike on both sides
    for r in range(args.rounds):
        for depth in args.depths:
            for side in (("ref", "new") if r % 2 == 0 else ("new", "ref")):  # each side goes first in turn
                out = time_step(trees[side], depth, args, token_dir, vocab)
                ms.setdefault((side, depth), []).append(out["ms"])
                work = (out["precision"], out["d_model"], out["tokens"])
                if work_of.setdefault(depth, work) != work:  # another params.yaml: not the code's change alone
                    sys.exit(f"depth {depth}: the two sides train different steps (precision, width, tokens a step: "
                             f"{work_of[depth]} and {work}); compare commits whose params.yaml agree on them")
                precision = out["precision"]
                print(f"round {r + 1}/{args.rounds} {depth} x {out['d_model']} {side}: {out['ms']:.1f} ms a step "
                      f"({out['precision']})", flush=True)
    # each round's two runs of a shape are adjacent: their ratio cancels the machine's drift between rounds
    # (on 2 shared vCPUs one process's 2-thread steps can run 15% slower than the next one's)
    # (the medians of the milliseconds come from different rounds: they need not agree with the ratios)
    print(f"\n| shape | {args.ref} = {commit[:10]} (ms a step, median of {args.rounds}) | this checkout | speedup (median "
          f"of the rounds' paired ratios) | their range |\n|---|---:|---:|---:|---|")
    speedups = {}
    for depth in args.depths:
        ref, new = ms[("ref", depth)], ms[("new", depth)]
        ratios = [a / b for a, b in zip(ref, new)]
        speedups[depth] = statistics.median(ratios)
        print(f"| {depth} x {work_of[depth][1]} | {statistics.median(ref):.1f} | {statistics.median(new):.1f} | "
              f"{speedups[depth]:.3f} | {min(ratios):.3f}-{max(ratios):.3f} |")
    print(" ".join(f"speedup_{d}x{work_of[d][1]}={s:.3f}" for d, s in speedups.items()))
    d0 = args.depths[0]
    print(f"RESULT step_ms_ref={statistics.median(ms[('ref', d0)]):.1f} step_ms_new={statistics.median(ms[('new', d0)]):.1f} "
          f"speedup={speedups[d0]:.3f} ref={commit[:10]} depths={','.join(map(str, args.depths))} precision={precision} "
          f"threads={args.threads} seconds={time.perf_counter() - t0:.0f}")


if __name__ == "__main__":
    _root.run_main(main)
