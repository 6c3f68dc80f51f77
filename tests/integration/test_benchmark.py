"""The benchmark suite in the tiny pipeline: fixed items, the in-loop plot, the per-task table, the
contamination report, `llmpipe seen`, and parity with lm-evaluation-harness on the HF export."""

from __future__ import annotations

import json
import sys

import pyarrow.parquet as pq
import pytest

from tests.conftest import run

pytestmark = pytest.mark.integration


def test_items_are_fixed_and_scored_with_an_in_loop_plot(tiny_pipeline):
    root = tiny_pipeline / "data"
    manifest = json.loads((root / "evals/tasks/manifest.json").read_text())
    assert manifest["tasks"] == ["hellaswag", "arc_easy", "winogrande", "indomain"]
    assert all(len(ids) == (8 if t == "indomain" else 4) for t, ids in manifest["ids"].items())
    metrics = json.loads((root / "metrics/benchmark.json").read_text())
    for task in manifest["tasks"]:
        assert 0.0 <= metrics[f"{task}_acc_norm"] <= 1.0
    assert "core" in metrics and metrics["items"] == 20 and metrics["items_per_s"] > 0
    table = (root / "evals/benchmark.md").read_text()
    assert all(f"| {t} |" in table for t in manifest["tasks"]) and "CORE-style" in table
    rows = (root / "plots/bench.tsv").read_text().splitlines()
    assert rows[0].split("\t")[:3] == ["step", "tokens", "indomain_acc_norm"] and "acc_norm" in rows[0].split("\t")
    assert [r.split("\t")[0] for r in rows[1:]] == ["10", "20", "30"]  # every eval_interval
    pretrain = json.loads((root / "metrics/pretrain.json").read_text())
    assert "inloop_acc_norm" in pretrain
    report = json.loads((root / "evals/contamination.json").read_text())
    assert set(report["tasks"]) == set(manifest["tasks"]) and report["tasks"]["indomain"]["contaminated"] == 0


def test_seen_finds_a_training_passage(tiny_pipeline):
    index_meta = json.loads((tiny_pipeline / "data/evals/index/meta.json").read_text())
    docs = pq.read_table(tiny_pipeline / "data/dedup/docs.parquet", columns=["id", "text"]).to_pylist()
    doc = next(d for d in docs if d["id"] == index_meta["doc_ids"][0])
    passage = " ".join(doc["text"].split()[200:240])
    proc = run([sys.executable, "-m", "llmpipe.cli", "seen", passage], tiny_pipeline)
    assert proc.returncode == 0, proc.stderr
    assert "; seen in the training documents" in proc.stdout and doc["id"] in proc.stdout


def test_same_scores_as_lm_eval_on_the_hf_export(tiny_pipeline, tmp_path):
    """lm-eval's own hellaswag preprocessing and HF backend on the export give llmpipe's log-likelihoods."""
    import datasets
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks.hellaswag.utils import process_docs
    from tokenizers import Tokenizer

    from llmpipe.evals.builtin import hellaswag, read_rows
    from llmpipe.evals.score import score_items
    from llmpipe.model.weights import load_model
    from llmpipe.ops.export import export_hf

    model = load_model(tiny_pipeline / "data/model")
    tok_path = tiny_pipeline / "data/tokenizer/tokenizer.json"
    export_hf(model, tok_path, tmp_path / "hf")
    rows = read_rows("hellaswag/none")[:6]
    ours = score_items(model, Tokenizer.from_file(str(tok_path)), [hellaswag(r, i) for i, r in enumerate(rows)], 0)
    lm = HFLM(pretrained=str(tmp_path / "hf"), dtype="float32", device="cpu", batch_size=8)

    class Req:  # the two fields of lm-eval's Instance that loglikelihood reads
        def __init__(self, args):
            self.args = args

    docs = process_docs(datasets.Dataset.from_list(rows))
    reqs = [Req((d["query"], " " + c)) for d in docs for c in d["choices"]]
    theirs = [ll for ll, _ in lm.loglikelihood(reqs, disable_tqdm=True)]
    assert [x for s in ours for x in s.loglik] == pytest.approx(theirs, abs=1e-3)
