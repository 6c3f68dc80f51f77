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
    assert manifest["tasks"] == ["hellaswag", "arc_easy", "winogrande", "lambada", "indomain"]
    assert all(len(ids) == (8 if t == "indomain" else 4) for t, ids in manifest["ids"].items())
    metrics = json.loads((root / "metrics/benchmark.json").read_text())
    assert "core" in metrics and metrics["items"] == 24 and metrics["items_per_s"] > 0
    table = (root / "evals/benchmark.md").read_text()
    assert all(f"| {t} |" in table for t in manifest["tasks"]) and "CORE-style" in table and "95% Wilson" in table
    rows = [r.split("\t") for r in (root / "plots/bench.tsv").read_text().splitlines()]
    # every task in the loop, with acc_norm and gold bits per byte (the benchmark's SNR reads them)
    assert rows[0][:2] == ["step", "tokens"] and {"acc_norm", "gold_bpb"} <= set(rows[0])
    assert all({f"{t}_acc_norm", f"{t}_gold_bpb"} <= set(rows[0]) for t in manifest["tasks"])
    assert [r[0] for r in rows[1:]] == ["10", "20", "30"]  # every eval_interval
    pretrain = json.loads((root / "metrics/pretrain.json").read_text())
    assert "inloop_acc_norm" in pretrain and "inloop_lambada_gold_bpb" in pretrain
    report = json.loads((root / "evals/contamination.json").read_text())
    assert set(report["tasks"]) == set(manifest["tasks"]) and report["tasks"]["indomain"]["contaminated"] == 0


def test_benchmark_figures_equal_a_rescoring_and_carry_their_baselines(tiny_pipeline):
    """benchmark.json's numbers are the model's on the recorded items (scored again here), each beside its
    majority rule, Wilson interval, gold bits per byte and SNR (none: 3 in-loop evaluations are too few)."""
    import torch
    from tokenizers import Tokenizer

    from llmpipe.evals.taskstats import majority, wilson
    from llmpipe.evals.suite import run_suite
    from llmpipe.evals.tasks import read_items
    from llmpipe.model.weights import load_model

    root = tiny_pipeline / "data"
    result = json.loads((root / "evals/benchmark.json").read_text())
    metrics = json.loads((root / "metrics/benchmark.json").read_text())
    tasks = {t: read_items(root / f"evals/tasks/{t}.jsonl") for t in result["tasks"]}
    tok = Tokenizer.from_file(str(root / "tokenizer/tokenizer.json"))
    again = run_suite(load_model(root / "model"), tok, tasks, tok.token_to_id("<|endoftext|>"), 32, torch.float32)
    for name, m in result["tasks"].items():
        redo = again["tasks"][name]
        assert (m["acc"], m["acc_norm"]) == pytest.approx((redo["acc"], redo["acc_norm"]))
        assert m["gold_bpb"] == pytest.approx(redo["gold_bpb"], rel=1e-5) and m["gold_bpb"] > 0.5
        assert metrics[f"{name}_acc_norm"] == pytest.approx(m["acc_norm"], abs=1e-6)
        assert metrics[f"{name}_gold_bpb"] == pytest.approx(m["gold_bpb"], abs=1e-6)
        assert m["majority"] == pytest.approx(majority(tasks[name]))
        assert m["acc_ci"] == pytest.approx(list(wilson(m["acc"] * m["n"], m["n"])))
        assert m["significant"] == (m["acc_ci"][0] > max(m["random"], m["majority"]))
        assert m["snr"] is None and m["snr_evaluations"] == 3 and m["snr_items"] == 2
    assert result["tasks"]["lambada"]["random"] == 0.0 and result["snr_window"] == 5
    assert result["core_snr_tasks"] == [] and result["core_snr_mean"] is None


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
