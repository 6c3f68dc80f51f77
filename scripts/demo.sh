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
PY
echo
echo "== benchmark (data/evals/benchmark.md) =="
cat data/evals/benchmark.md
