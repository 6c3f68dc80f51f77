"""The ablation table of the speedrun recipe (issue 18): the baseline, each change alone and all of
them together, at equal wall-clock per run, on the demo corpus's token shards, in one run.

    python bench/recipe.py [--seconds 15] [--seeds 3] [--threads 1]
    python bench/recipe.py --accepted wsd --only muon relu2 half_batch --precision fp32 --seconds 30 --seeds 5

`--accepted` puts changes an earlier round made defaults into every configuration, the baseline
included (the second round builds on the first, as modded-nanogpt's records do); `--only` picks the
changes to measure. Besides the recipe's switches, two hyperparameters are measured the same way:
`lr_x2` (AdamW at 4e-3) and `half_batch` (8 rows a step: twice the steps at equal time).

Issue 27 measures at the AVX2 dial's shape (`--base params`: params.yaml's pretrain at 4 x 128; `--shape bf16`:
at the 5 x 160 the bf16 demo's dial picked before the fifth round, for the shape candidates). On a
faster CPU, `--baseline-steps N` replays the slow CPU's run: the baseline trains N steps (the AVX2 demo
took 632) and every other configuration the steps that take the same time at this machine's relative
step costs; `--first-seed` lets a second process take other seeds of the same table, `--no-all` leaves
out the configuration with every change (for screens of alternatives, such as several rates):

    python bench/recipe.py --base params --block 256 --baseline-steps 632 --seeds 5 --threads 2
                           --precision fp32 --eval-bytes 524288 --accepted round1 --only round2   (one command)

(632: the steps of the AVX2 demo at commit 8b42f8d; issue 27 itself quoted an earlier demo's 565.)
The third round's check measures today's defaults against the ones issue 27 was filed against, in two
processes of 1 thread; the second takes the steps the first printed (`--steps`), so pooled seeds train alike:

    python bench/recipe.py --base params --block 256 --baseline-steps 632 --first-seed 1 --seeds 3 --threads 1
                           --precision fp32 --eval-bytes 524288 --accepted filed --only round2 round3 --no-all
    ... the same with --first-seed 4 --steps baseline=N round2=N round3=N, the steps the first one printed
With several changes and --no-all, the RESULT line's all_bpb and p_all are the first change's, named in
all_name.

Every configuration trains a small model (4 layers x 128, context 64, 1,024 tokens a step) for the
same number of seconds (with --baseline-steps: the seconds of the baseline's steps):
a few timed steps first give each configuration's step time, which sets its max_steps, so a faster
recipe gets more steps and a slower one fewer, as a fixed budget would. Runs go round-robin over the
configurations (seed 1 of each, then seed 2, ...) so drifting machine load spreads over all of them.
Each run is scored by llmpipe's evaluator on the first --eval-tokens of the val split, in bits per byte;
the table gives mean ± std over seeds and Welch's t-test p-value (two-sided) against the baseline.
modded-nanogpt's acceptance rule: a change becomes a default only if it helps with p < 0.01.

Needs data/tokens and data/tokenizer (`dvc repro tokenize`).
Last line: RESULT baseline_bpb=<x> all_bpb=<x> delta_bpb=<all - baseline> p_all=<x> helps=<names> seconds=<total>
    all_name=<the configuration in all_bpb> seeds=<first>-<last>
"""

from __future__ import annotations

import _root  # noqa: F401  (first: takes bench/ off the import path, see bench/_root.py)

import argparse
import atexit
import json
import logging
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent

from llmpipe.config.pretrain import PretrainParams  # noqa: E402
from llmpipe.stages.registry import output  # noqa: E402
from llmpipe.tokens.loader import TokenData  # noqa: E402
from llmpipe.tokens.shards import load_manifest  # noqa: E402
from llmpipe.training.budget import scaled_warmup, time_steps  # noqa: E402
from llmpipe.training.evaluate import evaluate_model  # noqa: E402
from llmpipe.training.loop import train  # noqa: E402

# The baseline is the recipe before issue 18 (params.yaml's defaults then), at a small size.
BASE = dict(model={"n_layer": 4, "n_head": 4, "d_model": 128, "block_size": 64, "norm": "rmsnorm",
                   "mlp": "swiglu", "pos": "rope", "tie_embeddings": True},
            micro_batch_size=16, lr=2e-3, min_lr_ratio=0.1, weight_decay=0.1, optimizer="adamw",
            schedule="cosine", doc_aligned=False)
# what the fourth round changed, as it was before: every earlier bundle sets it, so that it means the same
# on today's params.yaml as when it was measured
BEFORE_ROUND4 = {"muon_momentum": 0.95, "beta1": 0.9, "seq_warmup_steps": 0}
CHANGES = {
    "muon": {"optimizer": "muon"},
    "qk_norm": {"model": {"qk_norm": True}},
    "relu2": {"model": {"mlp": "relu2"}},
    "zero_head": {"model": {"tie_embeddings": False, "zero_init_head": True}},
    "softcap": {"model": {"logit_softcap": 15.0}},
    "value_embeds": {"model": {"value_embeds": True}},
    "wsd": {"schedule": "wsd"},
    "doc_aligned": {"doc_aligned": True},
    # hyperparameters around the recipe (not modded-nanogpt's switches, measured the same way)
    "lr_x2": {"lr": 4e-3},
    "half_batch": {"micro_batch_size": 8},
    # issue 27: what the small shapes of slow CPUs may need
    "muon_wd": {"muon_weight_decay": 0.1},
    "tail_avg": {"tail_average": 0.2},
    "lr_x4": {"lr": 8e-3},  # under Muon, lr is the embeddings', the output layer's and the vectors' (AdamW)
    "muon_lr_x2": {"muon_lr": 0.04},
    "quarter_batch": {"micro_batch_size": 4},
    "vocab4096": {"vocab": 4096},  # a tokenizer of this size and its shards, trained here (data/tokenizer's
    "vocab2048": {"vocab": 2048},  # training split and params); bits per byte compare across vocabularies
    # issue 27, second round: around the 0.008 that won, and what a few hundred steps may want
    "lr_x8": {"lr": 1.6e-2},
    "lr_x16": {"lr": 3.2e-2},
    "lr_x32": {"lr": 6.4e-2},
    "muon_lr_half": {"muon_lr": 0.01},
    "decay_half": {"decay_frac": 0.5},  # WSD's linear decay over the last half instead of 30%
    "min_lr_zero": {"min_lr_ratio": 0.0},
    "untied": {"model": {"tie_embeddings": False}},  # the input embedding apart from the output layer
    # issue 27, third round: the embedding's and the output layer's own rates (modded-nanogpt runs its
    # embedding far faster than its head), and the AdamW part's decay, which at lr 0.032 shrinks them fast
    "embed_lr_x3": {"embed_lr": 0.1},
    "embed_lr_x10": {"embed_lr": 0.3},
    "head_lr_quarter": {"head_lr": 0.008},
    "adamw_wd0": {"weight_decay": 0.0},
    "embed_lr_third": {"embed_lr": 0.01},
    "warmup_none": {"warmup_steps": 0},
    "beta2_99": {"beta2": 0.99},
    "beta2_999": {"beta2": 0.999},
    "beta1_08": {"beta1": 0.8},  # modded-nanogpt's Adam betas are (0.8, 0.95)
    "muon_lr_quarter": {"muon_lr": 0.005},
    "head_lr_x2": {"head_lr": 0.064},
    # issue 27, fourth round: Muon's momentum and the decay's length at a few hundred steps
    "muon_mom_09": {"muon_momentum": 0.9},
    "muon_mom_085": {"muon_momentum": 0.85},
    "decay_full": {"decay_frac": 1.0},  # WSD with no flat part: linear decay from the warm-up's end
    # sequence-length warm-up over half the screen's (316) or the check's (632) steps: rows of 64 tokens
    # for its first third, 128 for the other two, then 256 (the step's tokens stay the same)
    "seq_warmup_158": {"seq_warmup_steps": 158, "seq_warmup_min": 64},
    "seq_warmup_316": {"seq_warmup_steps": 316, "seq_warmup_min": 64},
    # the defaults before and after each round, spelled out whole (params.yaml holds round3 plus round4):
    # the second round's check is `--accepted round1 --only round2`, the third's `--accepted filed --only
    # round2 round3`, the fourth's `--accepted round3 --only round4_opt round4`. lr_xN and *_batch are
    # named after the issue-18 base (lr 2e-3, 16 rows)
    "round1": {"lr": 8e-3, "muon_lr": 0.02, "model": {"tie_embeddings": True}, "weight_decay": 0.1, "beta2": 0.95,
               **BEFORE_ROUND4},
    "round2": {"lr": 3.2e-2, "muon_lr": 0.01, "model": {"tie_embeddings": False}, "weight_decay": 0.1, "beta2": 0.95,
               **BEFORE_ROUND4},
    "round3": {"lr": 3.2e-2, "muon_lr": 0.01, "model": {"tie_embeddings": False}, "weight_decay": 0.0, "beta2": 0.99,
               **BEFORE_ROUND4},
    # the fourth round's screen winners, without and with the sequence-length warm-up (its probe times its
    # short early steps, so the check gives it the steps of the same shape without it: `--steps`)
    "round4_opt": {"muon_momentum": 0.9, "beta1": 0.8},
    "round4": {"muon_momentum": 0.9, "beta1": 0.8, "seq_warmup_steps": 316, "seq_warmup_min": 64},
    # the defaults issue 27 was filed against (before round one's lr 0.008): its target is 0.10 below them
    "filed": {"lr": 2e-3, "muon_lr": 0.02, "model": {"tie_embeddings": True}, "weight_decay": 0.1, "beta2": 0.95,
              **BEFORE_ROUND4},
    # the vocabulary-aware dial's question: at equal time, another split of the parameters
    "shape_6x96": {"model": {"n_layer": 6, "d_model": 96, "n_head": 3}},
    "shape_3x160": {"model": {"n_layer": 3, "d_model": 160, "n_head": 5}},
    # issue 27's bf16 target, `--shape bf16` (the dial's 5 x 160 there): the dial's ladder (aspect 32) at
    # equal time, two smaller shapes and a larger one, and deeper, narrower ones whose embedding and
    # output layer (8,192 x d_model each) take less of the step
    "shape_4x128": {"model": {"n_layer": 4, "d_model": 128, "n_head": 4}},
    "shape_3x96": {"model": {"n_layer": 3, "d_model": 96, "n_head": 3}},
    "shape_5x160": {"model": {"n_layer": 5, "d_model": 160, "n_head": 5}},  # the other way, from --shape avx2
    "shape_6x192": {"model": {"n_layer": 6, "d_model": 192, "n_head": 6}},
    "shape_8x128": {"model": {"n_layer": 8, "d_model": 128, "n_head": 4}},
    "shape_6x128": {"model": {"n_layer": 6, "d_model": 128, "n_head": 4}},
    # issue 27, seventh round, with --base params --block 256 (8 rows of 256; under the issue-18 base, 16 rows
    # of 64, rows16 is the baseline): twice the context at the same tokens a step, 4 rows of 512 (each model
    # is scored in windows of its own context, on the same val text), and twice the tokens a step
    "block512": {"model": {"block_size": 512}, "micro_batch_size": 4},
    "rows16": {"micro_batch_size": 16},
    # issue 26: what the repeat rows cost in bits per byte, untied and tied (they teach a copy from half the
    # context back, not induction: docs/assistant.md)
    "repeat_quarter": {"repeat_share": 0.25},
    "repeat_quarter_tied": {"repeat_share": 0.25, "model": {"tie_embeddings": True}},
    "tied": {"model": {"tie_embeddings": True}},
}
# `--base params`: today's defaults (params.yaml's pretrain) at a fixed shape, the AVX2 dial's by default
SHAPES = {"avx2": {"n_layer": 4, "d_model": 128, "n_head": 4},
          "bf16": {"n_layer": 5, "d_model": 160, "n_head": 5}}  # the bf16 demo's pick (2026-12-06, 8f96655)


def merged(*parts: dict) -> dict:
    out: dict = {}
    for p in parts:
        for k, v in p.items():
            out[k] = {**out.get(k, {}), **v} if isinstance(v, dict) else v
    return out


# keys whose value changes the numbers but not the work of a step
COST_FREE = {"lr", "muon_lr", "muon_weight_decay", "weight_decay", "min_lr_ratio", "decay_frac", "schedule",
             "warmup_steps", "beta1", "beta2", "muon_momentum", "seed", "tail_average",
             "embed_lr", "head_lr"}


def cost_key(c: dict, vocab: int | None) -> str:
    """What decides a configuration's step time (its shape, batch, optimizer, vocabulary)."""
    return json.dumps([{k: v for k, v in c.items() if k not in COST_FREE}, vocab], sort_keys=True, default=str)


def params_base(shape: str, block: int, rows: int) -> dict:
    """params.yaml's pretrain section without the dial, at a fixed shape (issue 27: the AVX2 dial's)."""
    from llmpipe.config.sections import load_sections
    cfg = load_sections(ROOT / "params.yaml", ["pretrain"]).pretrain.model_dump(mode="json")
    cfg.update(budget=None, micro_batch_size=rows, grad_accum_steps=1, batch_tokens=None)
    return merged(cfg, {"model": {**SHAPES[shape], "n_kv_head": None, "block_size": block}})


def configs(names: list[str] | None = None, accepted: list[str] = (), block: int = 64,
            base: dict | None = None) -> dict[str, dict]:
    """baseline, each change alone and all together. `accepted`: changes an earlier round made defaults,
    in every configuration (the baseline included), as modded-nanogpt's records build on each other."""
    base = merged(base or BASE, {"model": {"block_size": block}}, *(CHANGES[a] for a in accepted))
    chosen = {k: v for k, v in CHANGES.items() if (names is None or k in names) and k not in accepted}
    together = {"all": merged(base, *chosen.values())} if len(chosen) > 1 else {}  # one change: "all" is it
    return {"baseline": base, **{k: merged(base, v) for k, v in chosen.items()}, **together}


def welch(a: list[float], b: list[float]) -> tuple[float, float]:
    """(t, two-sided p) of Welch's unequal-variance t-test of mean(a) != mean(b), scipy's (in the
    runtime lock, through scikit-learn); two constant samples: p 1 if equal, else 0 (scipy gives nan)."""
    from scipy import stats
    if statistics.variance(a) + statistics.variance(b) == 0:
        return (0.0, 1.0) if statistics.mean(a) == statistics.mean(b) else (math.inf, 0.0)
    r = stats.ttest_ind(a, b, equal_var=False)
    return float(r.statistic), float(r.pvalue)


# --- the runs --------------------------------------------------------------------------------------


def token_bytes_table(tokenizer_path: Path):
    from tokenizers import Tokenizer

    from llmpipe.tokens.bpe import token_byte_lengths
    return token_byte_lengths(Tokenizer.from_file(str(tokenizer_path)))


def demo_tokens(threads: int):
    """(token folder, vocabulary size, bytes per token id, val data) of the demo's shards; sets torch's threads."""
    token_dir = ROOT / output("tokenize.tokens")
    if not (token_dir / "manifest.json").exists():
        sys.exit(f"{token_dir}: no token shards; run `dvc repro tokenize` first")
    torch.set_num_threads(threads)
    table = token_bytes_table(ROOT / output("tokenizer.tokenizer"))
    return token_dir, load_manifest(token_dir).vocab_size, table, TokenData(token_dir, "val")


def vocab_tokens(vocab: int, work: Path):
    """demo_tokens' tuple for a tokenizer of `vocab` tokens trained as the tokenizer stage trains (its
    params but the size, the training split only) and the documents tokenized as the tokenize stage does."""
    from llmpipe.config.sections import load_sections
    from llmpipe.stages.tokenize import tokenize_corpus
    from llmpipe.tokens.bpe import train_tokenizer
    from llmpipe.tokens.split import iter_split_texts
    cfg = load_sections(ROOT / "params.yaml", ["tokenizer", "tokenize"])
    docs, split = ROOT / output("dedup.docs"), ROOT / output("split.assignments")
    t0 = time.perf_counter()
    tok = train_tokenizer(iter_split_texts(docs, split, want_val=False),
                          cfg.tokenizer.model_copy(update={"vocab_size": vocab}))
    out = work / f"vocab{vocab}"
    out.mkdir(parents=True)
    tok.save(str(out / "tokenizer.json"))
    tokenize_corpus(docs, out / "tokenizer.json", out / "tokens", split, cfg.tokenize)
    print(f"vocabulary {vocab}: tokenizer and shards in {time.perf_counter() - t0:.0f} s", flush=True)
    return out / "tokens", vocab, token_bytes_table(out / "tokenizer.json"), TokenData(out / "tokens", "val")


def tokens_for_bytes(val: TokenData, table, n_bytes: int) -> int:
    """The scored targets whose text first reaches `n_bytes` bytes: every vocabulary is scored on the
    same text (a fixed number of tokens would be more text for a larger vocabulary)."""
    stream, mask = val.scored()
    reached = np.flatnonzero(np.cumsum(table[stream[mask]]) >= n_bytes)
    return int(reached[0]) + 1 if len(reached) else int(mask.sum())


def steps_given(ap: argparse.ArgumentParser, items: list[str]) -> dict[str, int]:
    """--steps NAME=N ... as {name: steps}; a malformed item or a name given twice stops with its text."""
    fixed: dict[str, int] = {}
    for item in items:
        name, _, n = item.partition("=")
        try:
            value = int(n)
        except ValueError:
            value = 0
        if not name or value < 1 or name in fixed:
            ap.error(f"--steps {item}: takes NAME=N once per name, with N a whole number of at least 1")
        fixed[name] = value
    return fixed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=13.0,
                    help="training seconds per run (13 keeps the table under 10 minutes; README's used 15: 10m36s)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=1,
                    help="seeds run from here: a second process can take other seeds of the same table")
    ap.add_argument("--threads", type=int, default=1, help="1: spinning OpenMP threads on a shared, loaded machine cost more than they give")
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--eval-tokens", type=int, default=32768)
    ap.add_argument("--eval-bytes", type=int, default=0,
                    help="score the val text's first N bytes instead of --eval-tokens (set automatically with vocab changes)")
    ap.add_argument("--only", nargs="*", help="changes to include (default: all)")
    ap.add_argument("--accepted", nargs="*", default=[], choices=sorted(CHANGES),
                    help="changes in every configuration, the baseline too (a later round: --accepted wsd)")
    ap.add_argument("--block", type=int, default=64, help="context (tokens a row; 16 rows a step)")
    ap.add_argument("--base", choices=["issue18", "params"], default="issue18",
                    help="issue18: the recipe before issue 18 at 4 x 128; params: params.yaml's pretrain at --shape")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="avx2",
                    help="with --base params: the fixed shape (avx2: 4 x 128; bf16: 5 x 160, the bf16 demo's)")
    ap.add_argument("--rows", type=int, default=8, help="micro-batch rows with --base params")
    ap.add_argument("--baseline-steps", type=int, default=0,
                    help="the baseline trains this many steps and every other configuration the steps that take "
                         "the same time at this machine's relative step costs (replays a slower CPU's run: "
                         "issue 27's AVX2 demo took 632 steps at 4 x 128); --seconds is then unused")
    ap.add_argument("--no-all", action="store_true", help="leave out the configuration with every change")
    ap.add_argument("--steps", nargs="*", default=[], metavar="NAME=N",
                    help="a configuration's steps in place of the ones its probe gives: a second process "
                         "(--first-seed) takes the steps the first one printed, so that the pooled seeds train alike")
    args = ap.parse_args()
    if args.seeds < 1 or args.first_seed < 0 or args.baseline_steps < 0:
        ap.error("--seeds must be at least 1, --first-seed and --baseline-steps at least 0")
    fixed = steps_given(ap, args.steps)
    logging.basicConfig(level=logging.WARNING)
    t_start = time.perf_counter()
    demo = demo_tokens(args.threads)
    common = dict(device="cpu", precision=args.precision, threads=args.threads, log_interval=10**6,
                  eval_interval=10**9, checkpoint_interval=10**9, eval_batches=1)
    base_cfg = params_base(args.shape, args.block, args.rows) if args.base == "params" else None
    raw = configs(args.only, args.accepted, args.block, base_cfg)
    if args.no_all:
        raw.pop("all", None)
    if set(fixed) - set(raw):  # before the data and the probes, which take minutes
        ap.error(f"--steps names no configuration of this table: {', '.join(sorted(set(fixed) - set(raw)))} "
                 f"(it has {', '.join(raw)})")
    vocabs = {name: c.pop("vocab", None) for name, c in raw.items()}
    work = Path(tempfile.mkdtemp(prefix="recipe-vocab-"))
    atexit.register(shutil.rmtree, work, True)  # also when a run fails
    built = {v: vocab_tokens(v, work) for v in sorted({v for v in vocabs.values() if v})}
    eval_bytes = args.eval_bytes or (4 * args.eval_tokens if built else 0)  # ~4 bytes a token at 8,192
    # the targets to score, once per vocabulary's data (None: the demo's)
    sources = {None: demo, **built}
    scored = {v: tokens_for_bytes(d[3], d[2], eval_bytes) if eval_bytes else args.eval_tokens
              for v, d in sources.items() if v in vocabs.values()}
    data = {name: sources[v] for name, v in vocabs.items()}
    max_eval = {name: scored[v] for name, v in vocabs.items()}
    cfgs = {name: PretrainParams.model_validate({**c, **common, "max_steps": 10, "warmup_steps": 0})
            for name, c in raw.items()}
    # Equal wall-clock: each configuration's own step time sets its steps. Timed three times,
    # round-robin, keeping the fastest: a load spike on a shared machine must not cost one
    # configuration its steps (two timings were not enough at a load of 6 on 2 cores).
    step_s: dict[str, float] = {}
    for _ in range(3):
        for name, c in cfgs.items():
            t = time_steps(c, data[name][0], data[name][1], steps=5, warmup=1)
            step_s[name] = min(t, step_s.get(name, t))
    # Changes that cannot change a step's cost (a rate, a decay) share their configuration's fastest
    # timing: probe noise alone gave identical steps 127 to 137 in 60 s (issue 27's screening).
    for name, c in raw.items():
        twins = [n for n in raw if cost_key(raw[n], vocabs[n]) == cost_key(c, vocabs[name])]
        step_s[name] = min(step_s[n] for n in twins)
    budget_s = args.baseline_steps * step_s["baseline"] if args.baseline_steps else args.seconds
    steps = {name: max(10, int(budget_s / t + 1e-6)) for name, t in step_s.items()}
    steps.update(fixed)
    for name, n in steps.items():
        how = "given by --steps" if name in fixed else f"in {budget_s:.0f} s ({step_s[name] * 1000:.0f} ms a step)"
        print(f"{name:13} {n:5d} steps {how}", flush=True)
    bpb: dict[str, list[float]] = {name: [] for name in cfgs}
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for name, c in cfgs.items():  # round-robin: load drift spreads over every configuration
            n = steps[name]
            # warmup: issue 18's bench used a tenth; today's defaults take the dial's rule (apply_plan)
            warm = max(1, n // 10) if base_cfg is None else scaled_warmup(raw[name]["warmup_steps"], n)
            run = c.model_copy(update={"max_steps": n, "warmup_steps": warm, "seed": seed,
                                       "log_interval": max(1, n // 5)})
            token_dir, vocab, table, val = data[name]
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                res = train(run, token_dir, Path(tmp) / "ckpt", vocab, {"bench": "recipe"})
            took = time.perf_counter() - t0
            ev = evaluate_model(res.model, val, table, batch_size=8, max_tokens=max_eval[name])
            bpb[name].append(ev["bits_per_byte"])
            print(f"seed {seed} {name:13} {ev['bits_per_byte']:.4f} bpb  ({took:.1f} s)", flush=True)
    base = bpb["baseline"]
    print(f"\n| change | steps | val bpb (mean ± std, {args.seeds} seeds) | Δ vs baseline | p (Welch) |")
    print("|---|---:|---:|---:|---:|")
    helps = []
    p_all = 1.0
    for name, vals in bpb.items():
        mean, std = statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0
        if name == "baseline":
            print(f"| baseline | {steps[name]} | {mean:.4f} ± {std:.4f} | | |")
            continue
        _, p = welch(vals, base) if len(vals) > 1 else (0.0, float("nan"))
        delta = mean - statistics.mean(base)
        if name == "all":
            p_all = p
        elif delta < 0 and p < 0.01:
            helps.append(name)
        print(f"| {name} | {steps[name]} | {mean:.4f} ± {std:.4f} | {delta:+.4f} | {p:.2g} |")
    total = time.perf_counter() - t_start
    best_name = "all" if "all" in bpb else next(n for n in bpb if n != "baseline")
    best = bpb[best_name]
    p_all = p_all if "all" in bpb or len(base) < 2 else welch(best, base)[1]
    print(f"RESULT baseline_bpb={statistics.mean(base):.4f} all_bpb={statistics.mean(best):.4f} "
          f"delta_bpb={statistics.mean(best) - statistics.mean(base):+.4f} p_all={p_all:.2g} helps={','.join(helps) or 'none'} "
          f"seconds={total:.0f} all_name={best_name} seeds={args.first_seed}-{args.first_seed + args.seeds - 1}")


if __name__ == "__main__":
    main()
