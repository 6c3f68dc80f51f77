"""Does a busy machine fool the time-budget dial? (issue 27) The dial's plan (llmpipe.training.budget)
for params.yaml's budget, on this machine quiet and under a load, with one round of probes (the dial
before issue 27 took one round, though the median of three steps where it now takes the fastest) and
with budget.probe_rounds rounds, in one run.

    python bench/dial_load.py [--load bursts|steady] [--repeats 2]

The load is one other process on one core: `bursts` spins 1.5 s and sleeps 1.5 s (a job that comes
and goes, e.g. a build or a browser), `steady` spins all the time (a machine that is really slower: the
smaller shape is then the right one, and no statistic of the probes should hide it).
Needs data/tokens (`dvc repro tokenize`).
Last line: RESULT quiet_shape=<LxW> loaded_shape_one_round=<LxW> loaded_shape_rounds=<LxW> load=<kind>
"""

from __future__ import annotations

import _root  # noqa: F401  (first: takes bench/ off the import path, see bench/_root.py)

import argparse
import collections
import logging
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from llmpipe.stages.params import load_params  # noqa: E402
from llmpipe.stages.registry import output  # noqa: E402
from llmpipe.tokens.shards import load_manifest  # noqa: E402
from llmpipe.training.budget import plan  # noqa: E402


# The other job, in its own interpreter (a spawned multiprocessing child would re-import this script):
# busy on one core, all the time or in bursts.
SPIN = """
import time
while True:
    end = time.perf_counter() + 1.5
    while time.perf_counter() < end:
        pass
    if {bursts}:
        time.sleep(1.5)
"""


def shapes(cfg, token_dir: Path, vocab: int, repeats: int) -> str:
    """The shape the dial picks most often over `repeats` plans (and every pick, for the log)."""
    picks = []
    for _ in range(repeats):
        p = plan(cfg, token_dir, vocab)
        picks.append(f"{p['n_layer']}x{p['d_model']}")
        print(f"  {picks[-1]}: {p['max_steps']} steps, probes {p['plan_seconds']:.0f} s, step s "
              + " ".join(f"{c['n_layer']}:{c['step_seconds']:.3f}" for c in p["candidates"]), flush=True)
    return collections.Counter(picks).most_common(1)[0][0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--load", choices=["bursts", "steady"], default="bursts")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    token_dir = ROOT / output("tokenize.tokens")
    if not (token_dir / "manifest.json").exists():
        raise SystemExit(f"{token_dir}: no token shards; run `dvc repro tokenize` first")
    vocab = load_manifest(token_dir).vocab_size
    cfg = load_params(ROOT / "params.yaml").pretrain
    if cfg.budget is None or cfg.budget.unit != "minutes":
        raise SystemExit("params.yaml: pretrain.budget.unit must be minutes for this bench")
    one = cfg.model_copy(update={"budget": cfg.budget.model_copy(update={"probe_rounds": 1})})
    t0 = time.perf_counter()
    print("quiet, budget.probe_rounds:", flush=True)
    quiet = shapes(cfg, token_dir, vocab, args.repeats)
    other = subprocess.Popen([sys.executable, "-c", SPIN.format(bursts=args.load == "bursts")])
    time.sleep(1.0)
    if other.poll() is not None:  # a load that did not start would make the loaded rows quiet ones
        raise SystemExit(f"the load process exited with {other.returncode}")
    try:
        print(f"load {args.load}, one round:", flush=True)
        loaded_one = shapes(one, token_dir, vocab, args.repeats)
        print(f"load {args.load}, {cfg.budget.probe_rounds} rounds:", flush=True)
        loaded = shapes(cfg, token_dir, vocab, args.repeats)
        if other.poll() is not None:
            raise SystemExit(f"the load process died during the plans (exit {other.returncode})")
    finally:
        other.kill()
    print(f"RESULT quiet_shape={quiet} loaded_shape_one_round={loaded_one} loaded_shape_rounds={loaded} "
          f"load={args.load} seconds={time.perf_counter() - t0:.0f}")


if __name__ == "__main__":
    main()
