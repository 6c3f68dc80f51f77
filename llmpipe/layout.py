"""Where each stage writes, relative to the repository root. dvc.yaml names the same paths."""

from pathlib import Path

DATA = Path("data")
METRICS = DATA / "metrics"

SCRAPE_DOCS = DATA / "scrape" / "docs"  # part-00000.parquet, ... (one per work unit)
SCRAPE_REPORT = DATA / "scrape" / "report.json"
FILTER_DOCS = DATA / "filter" / "docs"  # one part per scrape part
FILTER_REPORT = DATA / "filter" / "report.json"
DEDUP_DOCS = DATA / "dedup" / "docs.parquet"
DEDUP_REMOVED = DATA / "dedup" / "removed.parquet"
DEDUP_REPORT = DATA / "dedup" / "report.json"
DEDUP_INDEX = DATA / "dedup" / "index"
TOKENIZER = DATA / "tokenizer" / "tokenizer.json"
TOKENS = DATA / "tokens"
MODEL = DATA / "model"
CHECKPOINTS = DATA / "checkpoints"
TRAIN_PLOT = DATA / "plots" / "train.tsv"
VAL_PLOT = DATA / "plots" / "val.tsv"
LOSS_PNG = DATA / "plots" / "loss.png"
SAMPLES = DATA / "samples" / "samples.jsonl"


def metrics_file(stage: str) -> Path:
    return METRICS / f"{stage}.json"
