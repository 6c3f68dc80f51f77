#!/usr/bin/env bash
# Set up (first time) and run the whole pipeline on the demo corpus through the Prefect flow.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
python -m flows.pipeline "$@"
echo
echo "== samples (data/samples/samples.jsonl) =="
python - <<'PY'
import json
for line in open("data/samples/samples.jsonl", encoding="utf-8"):
    s = json.loads(line)
    print(f"--- {s['prompt']!r}\n{s['prompt']}{s['completion']}\n")
m = json.load(open("data/metrics/evaluate.json"))
print(f"val loss {m['val_loss']:.4f}  perplexity {m['perplexity']:.1f}  bits per byte {m['bits_per_byte']:.4f}")
if "ngram_bits_per_byte" in m:  # the baselines, on the same val tokens and bytes
    xz = (f", xz {m['compressor_bits_per_byte']:.4f} after the train text"
          f" ({m['compressor_alone_bits_per_byte']:.4f} alone)" if "compressor_bits_per_byte" in m else "")
    print(f"bits per byte: model {m['bits_per_byte']:.4f}, {m['ngram_order']}-gram Kneser-Ney"
          f" {m['ngram_bits_per_byte']:.4f} (the model gains {m['gain_over_ngram_bpb']:.4f}),"
          f" unigram {m['unigram_bits_per_byte']:.4f}{xz}")
print("\n== the finetuned model on held-out instructions (data/chat_eval/samples.jsonl) ==")
for line in list(open("data/chat_eval/samples.jsonl", encoding="utf-8"))[:3]:
    s = json.loads(line)
    print(f"user> {s['prompt'][-1]['content']}\nassistant> {s['finetuned']}   (expected {s['reference']!r}; "
          f"the base model said {s['base'][:40]!r})\n")
c = json.load(open("data/metrics/chat-eval.json"))
print(f"exact match on {c['n_val_items']} held-out items: finetuned {c['finetuned_acc']:.3f}, best trivial rule "
      f"{c['best_baseline_acc']:.3f}: gain {c['gain_over_best_baseline']:+.3f} (95% interval {c['gain_ci_low']:+.3f} "
      f"to {c['gain_ci_high']:+.3f}, p = {c['gain_p_value']:.2g}); the base model {c['base_acc']:.3f}")
if "finetuned_copy_repeat_top1" in c:  # what the questions need: reading a span back out of the context
    print("copy probe (top-1 on a val span's repeat, first showing in brackets): " + ", ".join(
        f"{n} {c[f'{n}_copy_repeat_top1']:.3f} ({c[f'{n}_copy_first_top1']:.3f})" for n in ("base", "finetuned", "rl")
        if f"{n}_copy_repeat_top1" in c))
if "rl_acc" in c:
    print(f"after the reward stage (rl): {c['rl_acc']:.3f}, {c['rl_gain_over_sft']:+.3f} over the finetuned model "
          f"(95% interval {c['rl_gain_over_sft_ci_low']:+.3f} to {c['rl_gain_over_sft_ci_high']:+.3f}, "
          f"p = {c['rl_gain_over_sft_p_value']:.2g})")
times = {s: json.load(open(f"data/metrics/{s}.json")).get("seconds", 0) for s in
         ("scrape", "filter", "dedup", "split", "tokenizer", "tokenize", "trace-index", "tasks", "pretrain", "evaluate", "benchmark", "sample", "sft-data",
          "finetune", "rl", "chat-eval")}
print("seconds per stage: " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()))
print("talk to it: llmpipe chat")
PY
echo
echo "== benchmark (data/evals/benchmark.md) =="
cat data/evals/benchmark.md
