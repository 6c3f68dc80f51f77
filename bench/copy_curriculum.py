"""A copy curriculum in phases (issue 26): can the demo's model learn to look up text by its content
(induction), which every line and name question needs and the demo's pretraining never gives?

Each phase runs params.yaml's pretraining recipe (no budget) for its steps from the previous phase's
weights, with shares of each micro-batch's rows swapped:
  periodic=S       rows of a random sequence of P ids (P from --pmin to --pmax per row) of the --alphabet
                   most frequent train tokens, repeated to fill the row: only a lookup by content predicts
                   the repeats, at a distance that changes from row to row;
  text_periodic=S  rows whose own first P text tokens repeat to fill the row (the same, on text);
  decay=F          the phase's wsd decay fraction (default: params.yaml's);
  block=N, rows=N  the phase's row length (at most --block; RoPE's weights do not depend on it) and rows
                   per micro-batch (default: --block and params.yaml's micro_batch_size): a cheaper phase.
Each phase starts the optimizer, the lr warm-up and the sequence-length warm-up afresh (the warm-up
cuts rows into pieces of 64 and 128 tokens over up to half a phase's steps, where longer periods repeat
inside no piece). After each phase: the varied-distance copy probe on val text (llmpipe.evals.copying, as evaluate runs it),
the half-context probe, and the loss and top-1 on 16 fixed periodic rows (positions --pmax on; ln of the
alphabet is no copying). At the end, val bits per byte on the first --eval-bytes; `--baseline-steps N`
first trains the recipe on text alone for N steps from the same seed, the reference.

    python bench/copy_curriculum.py --n-layer 3 --d-model 96 --tie --threads 2 --baseline-steps 1447 \\
        --phases "900:periodic=1,decay=0.05;300:periodic=0.25,text_periodic=0.75,decay=0.05;1447:periodic=0.125,text_periodic=0.125"

Needs data/tokens and data/tokenizer (`dvc repro tokenize`). Last line:
RESULT bpb=<x> baseline_bpb=<x> delta_bpb=<x> varied_repeat_top1=<x> varied_first_top1=<x> baseline_varied_repeat_top1=<x>
       baseline_varied_first_top1=<x> periodic_top1=<x> steps=<all phases> seconds=<all phases> baseline_seconds=<x>
"""

from __future__ import annotations

import _root  # first: takes bench/ off the import path, see bench/_root.py

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent

from llmpipe.config.pretrain import PretrainParams  # noqa: E402
from llmpipe.config.sections import load_sections  # noqa: E402
from llmpipe.evals.copying import copy_probe, varied_copy_probe  # noqa: E402
from llmpipe.model.gpt import GPT, GPTConfig  # noqa: E402
from llmpipe.model.weights import save_model  # noqa: E402
from llmpipe.stages.registry import output  # noqa: E402
from llmpipe.tokens.loader import TokenData  # noqa: E402
from llmpipe.tokens.shards import load_manifest  # noqa: E402
from llmpipe.training.budget import scaled_warmup  # noqa: E402
from llmpipe.training.evaluate import evaluate_model  # noqa: E402

KEYS = {"periodic", "text_periodic", "decay", "block", "rows"}
WHOLE = {"block", "rows"}  # whole numbers: the phase's row length and rows per micro-batch


def parse_phases(spec: str, block: int = 10**9) -> list[tuple[int, dict]]:
    """"STEPS:key=value,...;STEPS:..." -> [(steps, {key: value})], with a clear error for a bad piece."""
    phases = []
    for piece in filter(None, (p.strip() for p in spec.split(";"))):
        steps, _, rest = piece.partition(":")
        if not steps.strip().isdigit() or int(steps) < 1:
            raise ValueError(f"--phases {piece!r}: starts with its steps, a positive whole number")
        opts = {}
        for item in filter(None, (i.strip() for i in rest.split(","))):
            key, _, value = item.partition("=")
            if key not in KEYS:
                raise ValueError(f"--phases {piece!r}: unknown key {key!r} (known: {', '.join(sorted(KEYS))})")
            if key in WHOLE:
                if not (value.strip().isascii() and value.strip().isdigit()) or int(value) < 1:
                    raise ValueError(f"--phases {piece!r}: {key} takes a positive whole number, got {value!r}")
                opts[key] = int(value)
                continue
            try:
                opts[key] = float(value)
            except ValueError:
                raise ValueError(f"--phases {piece!r}: {key} takes a number, got {value!r}") from None
            if not 0.0 <= opts[key] <= 1.0 or (key == "decay" and opts[key] == 0.0):
                raise ValueError(f"--phases {piece!r}: {key} takes a share from 0 to 1"
                                 + (" (above 0: the decay's length)" if key == "decay" else ""))
        if opts.get("periodic", 0) + opts.get("text_periodic", 0) > 1:
            raise ValueError(f"--phases {piece!r}: periodic and text_periodic share the rows, at most 1 together")
        phases.append((int(steps), opts))
    if not phases:
        raise ValueError("--phases: names no phase")
    if any(o.get("block", 0) > block for _, o in phases):
        raise ValueError(f"--phases: a phase's block exceeds --block {block}")
    return phases


def train_phase(cfg: dict, steps: int, opts: dict, state: dict | None, token_dir: Path, vocab: int, patch):
    """The recipe for `steps` from `state` (None: the loop's own initial weights) -> (model, seconds)."""
    model = {**cfg["model"], **({"block_size": opts["block"]} if "block" in opts else {})}
    run = PretrainParams.model_validate({**cfg, "model": model, "max_steps": steps,
                                         "warmup_steps": scaled_warmup(cfg["warmup_steps"], steps),
                                         **({"decay_frac": opts["decay"]} if "decay" in opts else {}),
                                         **({"micro_batch_size": opts["rows"]} if "rows" in opts else {})})
    return _root.train_from_state(run, token_dir, vocab, state, "copy_curriculum", patch)


@torch.no_grad()
def periodic_probe(model, rows: np.ndarray, start: int) -> tuple[float, float]:
    model.eval()
    logits, _ = model(torch.from_numpy(rows[:, :-1]))
    y = torch.from_numpy(rows[:, 1:])
    return (F.cross_entropy(logits[:, start:].float().transpose(1, 2), y[:, start:]).item(),
            (logits[:, start:].argmax(-1) == y[:, start:]).float().mean().item())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phases", required=True, help='e.g. "900:periodic=1,decay=0.05;1447:text_periodic=0.125"')
    ap.add_argument("--baseline-steps", type=int, default=0, help="the recipe on text alone first (0: none)")
    ap.add_argument("--alphabet", type=int, default=512, help="periodic rows' ids: the most frequent train tokens")
    ap.add_argument("--pmin", type=int, default=8)
    ap.add_argument("--pmax", type=int, default=96)
    ap.add_argument("--n-layer", type=int, default=3)
    ap.add_argument("--d-model", type=int, default=96, help="heads of 32 channels")
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--tie", action="store_true", help="tie the input embedding to the output layer")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-bytes", type=int, default=524288)
    ap.add_argument("--probe-spans", type=int, default=48)
    ap.add_argument("--save", type=Path, default=None, help="keep the last phase's model here")
    args = ap.parse_args()
    try:
        phases = parse_phases(args.phases, args.block)
    except ValueError as e:
        ap.error(str(e))
    if args.baseline_steps < 0:
        ap.error(f"--baseline-steps {args.baseline_steps}: takes at least 0")
    if not 2 <= args.pmin <= args.pmax or 2 * args.pmax > args.block + 1 or args.d_model % 32 or args.alphabet < 2:
        ap.error(f"--pmin {args.pmin} / --pmax {args.pmax} take 2 <= min <= max with two of the longest in a row of "
                 f"--block {args.block}; --d-model {args.d_model} a multiple of 32; --alphabet {args.alphabet} at least 2")
    logging.basicConfig(level=logging.WARNING)
    token_dir = ROOT / output("tokenize.tokens")
    if not (token_dir / "manifest.json").exists():
        sys.exit(f"{token_dir}: no token shards; run `dvc repro tokenize` first")
    vocab = load_manifest(token_dir).vocab_size
    torch.set_num_threads(args.threads)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(ROOT / output("tokenizer.tokenizer")))
    try:  # never a special token (<|endoftext|>, the chat markers)
        alphabet = _root.commonest_ids(token_dir, vocab, args.alphabet, tok.get_added_tokens_decoder())
    except ValueError as e:
        ap.error(f"--alphabet {args.alphabet}: {e}")
    cfg = load_sections(ROOT / "params.yaml", ["pretrain"]).pretrain.model_dump(mode="json")
    if any("block" in o for _, o in phases) and cfg["model"]["pos"] != "rope":
        ap.error("--phases: a phase's own block needs pretrain.model.pos: rope (learned positions are one table per block)")
    cfg.update(budget=None, grad_accum_steps=1, batch_tokens=None, device="cpu", precision="auto", threads=args.threads,
               log_interval=10**6, eval_interval=10**9, checkpoint_interval=10**9, eval_batches=1, seed=args.seed)
    cfg["model"].update(n_layer=args.n_layer, d_model=args.d_model, n_head=args.d_model // 32, n_kv_head=None,
                        block_size=args.block)
    if args.tie:
        cfg["model"].update(tie_embeddings=True, zero_init_head=False)
    val = TokenData(token_dir, "val")
    stream, mask = val.scored()
    from llmpipe.tokens.bpe import token_byte_lengths
    table = token_byte_lengths(tok)
    reached = np.flatnonzero(np.cumsum(table[stream[mask]]) >= args.eval_bytes)
    max_tokens = int(reached[0]) + 1 if len(reached) else int(mask.sum())
    probe_rows = np.stack([np.resize(alphabet[r.integers(0, len(alphabet), size=int(r.integers(args.pmin, args.pmax + 1)))],
                                     args.block + 1) for r in [np.random.default_rng([99, i]) for i in range(16)]])
    nan = float("nan")

    def probes(model) -> dict:
        out = {**varied_copy_probe(model, stream, args.probe_spans), **copy_probe(model, stream, 16)}
        out["periodic_loss"], out["periodic_top1"] = periodic_probe(model, probe_rows, args.pmax)
        return out

    base_bpb, base, base_s = nan, {}, 0.0
    if args.baseline_steps:
        model, base_s = train_phase(cfg, args.baseline_steps, {}, None, token_dir, vocab, None)
        base_bpb, base = evaluate_model(model, val, table, batch_size=8, max_tokens=max_tokens)["bits_per_byte"], probes(model)
        print(f"text alone, {args.baseline_steps} steps: {base_bpb:.4f} bpb, varied probe "
              f"{base.get('copy_varied_repeat_top1', nan):.3f} / {base.get('copy_varied_first_top1', nan):.3f} ({base_s:.0f} s)", flush=True)
    state, total_s = None, 0.0
    for i, (steps, opts) in enumerate(phases, 1):
        model, secs = train_phase(cfg, steps, opts, state, token_dir, vocab, _root.swapped_rows(opts, alphabet, args.pmin, args.pmax))
        state, total_s = {k: v.detach().clone() for k, v in model.state_dict().items()}, total_s + secs
        if model.cfg.block_size != args.block:  # a shorter phase's model, back at the full block for the probes
            model = GPT(GPTConfig(**{**model.cfg.to_dict(), "block_size": args.block}))
            model.load_state_dict(state)
        p = probes(model)
        print(f"phase {i} ({steps} steps, {opts}): varied probe {p.get('copy_varied_repeat_top1', nan):.3f} on the repeat / "
              f"{p.get('copy_varied_first_top1', nan):.3f} first, half-context {p.get('copy_repeat_top1', nan):.3f}, periodic rows "
              f"{p['periodic_loss']:.2f} nats (top-1 {p['periodic_top1']:.3f}) ({secs:.0f} s)", flush=True)
    bpb = evaluate_model(model, val, table, batch_size=8, max_tokens=max_tokens)["bits_per_byte"]
    if args.save:
        save_model(model, args.save)
    print(f"RESULT bpb={bpb:.4f} baseline_bpb={base_bpb:.4f} delta_bpb={bpb - base_bpb:+.4f} "
          f"varied_repeat_top1={p.get('copy_varied_repeat_top1', nan):.3f} varied_first_top1={p.get('copy_varied_first_top1', nan):.3f} "
          f"baseline_varied_repeat_top1={base.get('copy_varied_repeat_top1', nan):.3f} "
          f"baseline_varied_first_top1={base.get('copy_varied_first_top1', nan):.3f} periodic_top1={p['periodic_top1']:.3f} "
          f"steps={sum(s for s, _ in phases)} seconds={total_s:.0f} baseline_seconds={base_s:.0f}", flush=True)


if __name__ == "__main__":
    main()
