"""A small scaling ladder on the demo tokens: bits per byte against training compute, and the
tokens-per-parameter ratio the IsoFLOP slice points to for the budget dial (pretrain.budget.tokens_per_param;
its value is set by the shapes measured at equal time, bench/recipe.py --shape), in one run.

    python bench/ladder.py [--ratio 0.5] [--threads 1]

- The ladder: six sizes (depth x width) with params.yaml's recipe, each trained on ratio x its
  parameters in tokens (parameters counted whole, embeddings included: at these sizes the output layer
  is a large share of the compute). A power law bpb = a * C^-b (C the training FLOPs, llmpipe's
  flops_per_token x tokens) is fitted on the five smallest by least squares in log-log; the sixth is
  held out and predicted: the error must stay within 2%.
- The ratio: an IsoFLOP slice at the middle size's compute, where the sizes on either side train on the
  same FLOPs (fewer or more tokens); a parabola of bpb over log(parameters) through the three gives the
  best size for that compute, and its tokens per parameter.
Each run is scored on the first --eval-tokens of the val split. Needs data/tokens (`dvc repro tokenize`).
Last line: RESULT tokens_per_param=<x> exponent=<b> heldout_error=<fraction> heldout_bpb=<x> predicted_bpb=<x>
"""

from __future__ import annotations

import _root  # noqa: F401  (first: takes bench/ off the import path, see bench/_root.py)

import argparse
import logging
import math
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from llmpipe.stages.params import load_params  # noqa: E402
from llmpipe.training.budget import count_params  # noqa: E402
from llmpipe.training.evaluate import evaluate_model  # noqa: E402
from llmpipe.training.loop import train  # noqa: E402

# (n_layer, d_model); heads of 32 channels. The last is held out of the fit.
SIZES = [(1, 32), (2, 48), (2, 64), (3, 80), (4, 96), (4, 128)]


def fit_power_law(c: list[float], y: list[float]) -> tuple[float, float]:
    """(a, b) of y = a * c^-b, least squares in log-log."""
    xs, ys = [math.log(v) for v in c], [math.log(v) for v in y]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (v - my) for x, v in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return math.exp(my - slope * mx), -slope


def parabola_min(x: list[float], y: list[float]) -> float:
    """The x of the vertex of the parabola through three points (clamped to their range)."""
    (x0, x1, x2), (y0, y1, y2) = x, y
    den = (x0 - x1) * (x0 - x2) * (x1 - x2)
    a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / den
    b = (x2**2 * (y0 - y1) + x1**2 * (y2 - y0) + x0**2 * (y1 - y2)) / den
    if a <= 0:  # no minimum inside: the best of the three
        return x[min(range(3), key=lambda i: y[i])]
    return min(max(-b / (2 * a), min(x)), max(x))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ratio", type=float, default=0.5, help="tokens per parameter of the ladder's runs")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eval-tokens", type=int, default=32768)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    t_start = time.perf_counter()
    from bench.recipe import demo_tokens  # noqa: E402  (one helper, shared)
    token_dir, vocab, table, val = demo_tokens(args.threads)
    base = load_params(ROOT / "params.yaml").pretrain.model_copy(update={
        "budget": None, "device": "cpu", "threads": args.threads, "micro_batch_size": 16,
        "log_interval": 10**6, "eval_interval": 10**9, "checkpoint_interval": 10**9, "eval_batches": 1})

    def cfg_for(layers: int, width: int):
        model = base.model.model_copy(update={"n_layer": layers, "d_model": width, "n_head": width // 32,
                                              "n_kv_head": None, "block_size": 64})
        return base.model_copy(update={"model": model})

    def run(layers: int, width: int, tokens: float) -> dict:
        c = cfg_for(layers, width)
        per_step = c.micro_batch_size * c.model.block_size
        steps = max(10, round(tokens / per_step))
        c = c.model_copy(update={"max_steps": steps, "warmup_steps": max(1, steps // 10)})
        n, fpt = count_params(c, vocab)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            res = train(c, token_dir, Path(tmp) / "ckpt", vocab, {"bench": "ladder"})
        bpb = evaluate_model(res.model, val, table, batch_size=8, max_tokens=args.eval_tokens)["bits_per_byte"]
        r = {"n_layer": layers, "d_model": width, "params": n, "tokens": steps * per_step,
             "flops": fpt * steps * per_step, "bpb": bpb, "seconds": time.perf_counter() - t0}
        print(f"{layers} x {width:4d}  {n / 1e6:6.3f}M params  {r['tokens'] / 1e6:6.3f}M tokens  "
              f"{r['flops']:.3g} FLOPs  {bpb:.4f} bpb  ({r['seconds']:.0f} s)", flush=True)
        return r

    ladder = [run(L, d, args.ratio * count_params(cfg_for(L, d), vocab)[0]) for L, d in SIZES]
    a, b = fit_power_law([r["flops"] for r in ladder[:-1]], [r["bpb"] for r in ladder[:-1]])
    held = ladder[-1]
    predicted = a * held["flops"] ** -b
    error = abs(predicted - held["bpb"]) / held["bpb"]
    print(f"fit: bpb = {a:.4g} * C^-{b:.4f}; held-out {held['n_layer']} x {held['d_model']}: "
          f"{held['bpb']:.4f} measured, {predicted:.4f} predicted ({error:.2%})")

    # IsoFLOP slice at the middle size's compute
    mid = ladder[2]
    iso = [None, mid, None]
    for i, (L, d) in ((0, SIZES[1]), (2, SIZES[3])):
        fpt = count_params(cfg_for(L, d), vocab)[1]
        iso[i] = run(L, d, mid["flops"] / fpt)
    log_n = parabola_min([math.log(r["params"]) for r in iso], [r["bpb"] for r in iso])
    n_opt = math.exp(log_n)
    # tokens for n_opt at this compute: interpolate FLOPs per token per parameter between the points
    fpt_per_param = sum(r["flops"] / r["tokens"] / r["params"] for r in iso) / 3
    ratio = mid["flops"] / (fpt_per_param * n_opt) / n_opt
    edge = min(abs(log_n - math.log(r["params"])) for r in (iso[0], iso[2])) < 1e-9
    print(f"IsoFLOP at {mid['flops']:.3g} FLOPs: " + ", ".join(f"{r['params'] / 1e6:.3f}M -> {r['bpb']:.4f}"
                                                           for r in iso) +
          f"; best {n_opt / 1e6:.3f}M parameters, {ratio:.2f} tokens per parameter" +
          (" (at the slice's edge: the optimum lies beyond, the ratio is a bound)" if edge else ""))
    print(f"RESULT tokens_per_param={ratio:.3f} exponent={b:.4f} heldout_error={error:.4f} "
          f"heldout_bpb={held['bpb']:.4f} predicted_bpb={predicted:.4f} seconds={time.perf_counter() - t_start:.0f}")


if __name__ == "__main__":
    main()
