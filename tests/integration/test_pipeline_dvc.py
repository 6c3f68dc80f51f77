"""The whole pipeline under a real `dvc repro`, on the tiny params, in a temporary git copy of the repo."""

import json
import time

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient
from tokenizers import Tokenizer

from llmpipe.config.evaluate import BaselineParams, EvaluateParams
from llmpipe.config.sft import ChatEvalParams
from llmpipe.evals.copying import copy_probe, varied_copy_probe
from llmpipe.evals.trivial import answer_of, baselines, case_of, check_of, sign_test_p
from llmpipe.model.weights import load_model
from llmpipe.stages.registry import STAGE_NAMES as STAGES, stage
from llmpipe.tokens.examples import read_conversations
from llmpipe.tokens.loader import TokenData
from llmpipe.tokens.shards import load_manifest

from tests.conftest import TINY_PARAMS, clone_repo, run

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def repro_repo(tiny_pipeline, tmp_path_factory):
    return clone_repo(tiny_pipeline, tmp_path_factory.mktemp("dvc") / "repo"), None


def test_every_stage_output_is_there(repro_repo):
    repo, _ = repro_repo
    data = repo / "data"
    for stage in STAGES:
        assert (data / "metrics" / f"{stage}.json").exists(), stage
    manifest = load_manifest(data / "tokens", data / "tokenizer" / "tokenizer.json")
    assert manifest.eot_id == 0 and manifest.shards("train") and manifest.shards("val")
    tok = Tokenizer.from_file(str(data / "tokenizer" / "tokenizer.json"))
    assert tok.get_vocab_size() == TINY_PARAMS["tokenizer"]["vocab_size"]
    assert (data / "model" / "model.safetensors").exists() and (data / "checkpoints" / "state.json").exists()
    train_tsv = (data / "plots" / "train.tsv").read_text().splitlines()
    assert (data / "plots" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert train_tsv[0].split("\t")[:3] == ["step", "tokens", "loss"] and len(train_tsv) == 1 + 30 // 5
    ev = json.loads((data / "metrics" / "evaluate.json").read_text())
    assert 0 < ev["bits_per_byte"] < 8 and ev["tokens"] == TINY_PARAMS["evaluate"]["max_tokens"]
    assert np.isclose(ev["bits_per_byte"], ev["val_loss"] / np.log(2) / ev["bytes_per_token"])
    # the baselines, on the same val targets: even 30 steps of training beat a unigram model
    assert ev["bits_per_byte"] < ev["unigram_bits_per_byte"]
    assert np.isfinite(ev["ngram_bits_per_byte"]) and ev["ngram_bits_per_byte"] < ev["unigram_bits_per_byte"]
    assert ev["ngram_order"] == BaselineParams().ngram_order
    assert ev["gain_over_ngram_bpb"] == ev["ngram_bits_per_byte"] - ev["bits_per_byte"]
    assert 0 < ev["compressor_bits_per_byte"] < ev["compressor_alone_bits_per_byte"]
    # the copy probe: each span shown twice, the repeat scored beside the first showing and the copy rule
    assert ev["copy_spans"] == EvaluateParams().copy_spans  # the stage takes the param
    assert ev["copy_span_tokens"] == TINY_PARAMS["pretrain"]["model"]["block_size"] // 2
    assert ev["copy_rule_top1"] > ev["copy_first_top1"]
    block = TINY_PARAMS["pretrain"]["model"]["block_size"]  # and the varied probe: spans of block/16 to block/2 - 1
    assert (ev["copy_varied_spans"], ev["copy_varied_min_tokens"], ev["copy_varied_max_tokens"]) == (
        EvaluateParams().copy_spans, block // 16, block // 2 - 1)
    samples = [json.loads(s) for s in (data / "samples" / "samples.jsonl").read_text().splitlines()]
    assert [s["prompt"] for s in samples] == TINY_PARAMS["sample"]["prompts"]
    assert all(0 < s["new_tokens"] <= 24 or s["stopped_at_eot"] for s in samples)
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(STAGES)


def test_each_stage_has_an_mlflow_run_with_lineage(repro_repo):
    repo, _ = repro_repo
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name("llmpipe-test")
    runs = client.search_runs([exp.experiment_id])
    by_stage = {r.data.tags["llmpipe.stage"]: r for r in runs}
    assert set(by_stage) == set(STAGES)
    head = run(["git", "rev-parse", "HEAD"], repo).stdout.strip()
    assert all(r.data.tags["git.commit"] == head for r in runs)
    assert all(r.info.status == "FINISHED" for r in runs)
    assert "dvc.dep.data/tokens" in by_stage["pretrain"].data.tags
    assert by_stage["pretrain"].data.params["pretrain.model.d_model"] == "64"
    assert len(client.get_metric_history(by_stage["pretrain"].info.run_id, "loss")) == 30 // 5
    assert "bits_per_byte" in by_stage["evaluate"].data.metrics
    assert {a.path for a in client.list_artifacts(by_stage["tokenizer"].info.run_id)} == {"tokenizer.json"}
    pretrain_id = by_stage["pretrain"].info.run_id
    assert {a.path for a in client.list_artifacts(pretrain_id, "model")} == {"model/model.safetensors",
                                                                             "model/config.json"}
    versions = client.search_model_versions("name='llmpipe-gpt'")
    assert [v.run_id for v in versions] == [pretrain_id]
    assert versions[0].tags["dvc.dep.data/tokens"] == by_stage["pretrain"].data.tags["dvc.dep.data/tokens"]
    # the finetuned model is a model of its own, whose version names its base
    chat = client.search_model_versions("name='llmpipe-gpt-chat'")
    assert [v.run_id for v in chat] == [by_stage["finetune"].info.run_id]
    assert chat[0].tags["base.model_version"] == "models:/llmpipe-gpt/1"
    assert chat[0].tags["base.dvc.out.data/model"] == versions[0].tags["dvc.out.data/model"]
    assert chat[0].tags["dvc.dep.data/model"] == versions[0].tags["dvc.out.data/model"]
    assert len(client.get_metric_history(by_stage["finetune"].info.run_id, "loss")) == 10 // 5
    # the reward stage's model too, whose version names the finetuned one (issue 26)
    rl = client.search_model_versions("name='llmpipe-gpt-rl'")
    assert [v.run_id for v in rl] == [by_stage["rl"].info.run_id]
    assert rl[0].tags["base.model_version"] == "models:/llmpipe-gpt-chat/1"
    assert rl[0].tags["base.dvc.out.data/finetune/model"] == chat[0].tags["dvc.out.data/finetune/model"]
    assert len(client.get_metric_history(by_stage["rl"].info.run_id, "mean_reward")) == TINY_PARAMS["rl"]["steps"]
    # each run lists the data it read as its datasets: the registry's inputs, by path, with dvc.lock's hashes
    locked = {o["path"]: o["md5"] for s in yaml.safe_load((repo / "dvc.lock").read_text())["stages"].values()
              for o in s.get("outs", []) if "md5" in o}
    for name, r in by_stage.items():
        spec = stage(name)
        logged = {(d.dataset.name, d.dataset.digest, {t.key: t.value for t in d.tags}["mlflow.data.context"])
                  for d in client.get_run(r.info.run_id).inputs.dataset_inputs}
        want = {(spec.inp(i).as_posix(), locked[spec.inp(i).as_posix()], i) for i in spec.inputs}
        assert logged == want, name


def test_the_chat_stages_report_what_they_did(repro_repo):
    repo, _ = repro_repo
    data = repo / "data"
    sft = json.loads((data / "metrics" / "sft-data.json").read_text())
    assert sft["train_conversations"] > 0 and sft["val_conversations"] > 0 and sft["train_target_tokens"] > 0
    ev = json.loads((data / "metrics" / "chat-eval.json").read_text())
    assert ev["n_val_items"] == sft["val_conversations"]
    # the headline is the gain over the best trivial rule, recomputed here from sft-data's items
    val, train = (read_conversations(data / "sft" / side) for side in ("val", "train"))
    base = baselines([case_of(c) for c in val], [case_of(c) for c in train])
    assert ev["best_baseline_acc"] == round(base.best_acc, 4)
    assert ev["gain_over_best_baseline"] == pytest.approx(ev["finetuned_acc"] - ev["best_baseline_acc"], abs=2e-4)
    assert ev["gain_ci_low"] <= ev["gain_over_best_baseline"] <= ev["gain_ci_high"]
    # the paired test recomputed from the items the model and the best rule each got alone
    assert ev["gain_p_value"] == pytest.approx(
        sign_test_p(ev["items_model_only_right"], ev["items_baseline_only_right"]), abs=1e-6)
    for task in {c["task"] for c in val}:
        assert ev[f"best_baseline_rule_{task}"] == base.best_rule[task]
        assert ev[f"gain_{task}"] == pytest.approx(ev[f"acc_{task}"] - ev[f"best_baseline_{task}"], abs=2e-4)
    samples = [json.loads(s) for s in (data / "chat_eval" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == TINY_PARAMS["chat_eval"]["samples"]
    assert {"base", "finetuned", "reference", "baseline", "baseline_rule"} <= set(samples[0])
    by_source = {c["source"]: c for c in val}  # each reply scored as chat-eval scores it (after a taught quote)
    assert [s["finetuned_ok"] for s in samples] == [check_of(by_source[s["source"]])(s["finetuned"]) for s in samples]
    assert all(s["answer"] == answer_of(by_source[s["source"]]) for s in samples)
    ft = json.loads((data / "metrics" / "finetune.json").read_text())
    assert ft["steps"] == TINY_PARAMS["finetune"]["max_steps"] and (data / "finetune" / "checkpoints" / "state.json").exists()
    # evaluate's copy probe on each model, over the whole val split (chat_eval.copy_spans)
    stream = TokenData(data / "tokens", "val").scored()[0]
    for name, folder in (("base", "model"), ("finetuned", "finetune/model"), ("rl", "rl/model")):
        model = load_model(data / folder)
        probe = copy_probe(model, stream, ChatEvalParams().copy_spans, 8)
        assert (ev[f"{name}_copy_repeat_top1"], ev[f"{name}_copy_first_top1"]) == (
            round(probe["copy_repeat_top1"], 4), round(probe["copy_first_top1"], 4)), name
        varied = varied_copy_probe(model, stream, ChatEvalParams().copy_spans, 8)  # copying by content
        assert (ev[f"{name}_copy_varied_repeat_top1"], ev[f"{name}_copy_varied_first_top1"]) == (
            round(varied["copy_varied_repeat_top1"], 4), round(varied["copy_varied_first_top1"], 4)), name
    assert ev["copy_spans"] == probe["copy_spans"] > 0
    # the mixed pretraining rows' loss, apart from the answers' (finetune.mix)
    logged = (data / "plots" / "finetune.tsv").read_text().splitlines()
    assert logged[0].split("\t")[:4] == ["step", "loss", "answer_loss", "text_loss"] and ft["final_text_loss"] > 0
    assert float(logged[-1].split("\t")[3]) == ft["final_text_loss"] != ft["final_answer_loss"]
    rl = json.loads((data / "metrics" / "rl.json").read_text())
    assert rl["steps"] == TINY_PARAMS["rl"]["steps"] and rl["stopped"] == "no" and rl["base_model_dvc_md5"] == ft["model_dvc_md5"]
    assert rl["questions"] == sum(1 for c in train if c.get("task"))  # the train items only
    assert {"rl", "rl_ok"} <= set(samples[0]) and "rl_acc" in ev
    assert [s["rl_ok"] for s in samples] == [check_of(by_source[s["source"]])(s["rl"]) for s in samples]
    assert ev["rl_gain_over_sft"] == pytest.approx(ev["rl_acc"] - ev["finetuned_acc"], abs=2e-4)
    assert ev["rl_gain_over_sft_p_value"] == pytest.approx(
        sign_test_p(ev["items_rl_only_right"], ev["items_sft_only_right"]), abs=1e-6)


def test_second_repro_does_nothing_quickly(repro_repo):
    repo, _ = repro_repo
    t0 = time.perf_counter()
    proc = run(["dvc", "repro"], repo)
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0
    assert "Running stage" not in proc.stdout
    assert elapsed < 15  # ~2 s on an idle machine; generous for a loaded CI box


def test_bad_params_stop_dvc_repro_with_the_key(repro_repo, tmp_path):
    repo, _ = repro_repo
    bad = {**TINY_PARAMS, "scrape": {"sources": [{"kind": "demo", "max_docs": 8}], "max_doc_bytez": 1}}
    (repo / "params.yaml").write_text(yaml.safe_dump(bad, sort_keys=False))
    try:
        before = (repo / "data" / "scrape" / "docs" / "part-00000.parquet").read_bytes()
        proc = run(["dvc", "repro", "scrape"], repo)
        assert proc.returncode != 0
        assert "scrape.max_doc_bytez: unknown key" in proc.stderr + proc.stdout
    finally:
        (repo / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS, sort_keys=False))
    # the old output was not touched: DVC restores it from its cache, and it is byte-identical
    run(["dvc", "checkout", "-q"], repo)
    assert (repo / "data" / "scrape" / "docs" / "part-00000.parquet").read_bytes() == before


def test_push_to_a_local_remote_and_pull_back(repro_repo, tmp_path):
    """dvc push / pull through a local-directory remote (object stores work by the same mechanism)."""
    import shutil

    repo, _ = repro_repo
    remote = tmp_path / "remote"
    assert run(["dvc", "remote", "add", "-d", "--local", "backup", str(remote)], repo).returncode == 0
    proc = run(["dvc", "push"], repo)
    assert proc.returncode == 0, proc.stderr[-2000:]
    model = repo / "data" / "model" / "model.safetensors"
    before = model.read_bytes()
    shutil.rmtree(repo / ".dvc" / "cache")
    shutil.rmtree(repo / "data" / "model")
    proc = run(["dvc", "pull"], repo)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert model.read_bytes() == before
    assert "Running stage" not in run(["dvc", "repro"], repo).stdout  # everything is current again


def test_pretrain_params_rerun_only_pretrain_and_downstream(repro_repo):
    """Runs last in this module: it leaves the copy at other params."""
    repo, _ = repro_repo
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["pretrain"]["lr"] = 0.004
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = run(["dvc", "repro"], repo)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ran = [line.split("'")[1] for line in proc.stdout.splitlines() if line.startswith("Running stage")]
    assert ran[0] == "pretrain" and sorted(ran) == ["benchmark", "chat-eval", "evaluate", "finetune", "pretrain", "rl", "sample"]


def test_the_split_keeps_works_whole_and_val_clean(repro_repo):
    """Issue 25: both editions of a play on one side, and a val split that shares (almost) no 13-gram
    with train, measured by tokenize; sft-data says how many held-out items it dropped as contaminated."""
    import pandas as pd

    repo, _ = repro_repo
    data = repo / "data"
    sides = pd.read_parquet(data / "split" / "assignments.parquet")
    report = json.loads((data / "split" / "report.json").read_text())
    assert (sides.groupby("group")["side"].nunique() == 1).all() and sides["group"].nunique() < len(sides)
    assert report["docs"]["val"] == (sides["side"] == "val").sum() > 0 and report["groups_from_id"] == 0
    tokens = json.loads((data / "metrics" / "tokenize.json").read_text())
    assert tokens["val_docs"] == report["docs"]["val"] and tokens["val_overlap_13gram"] <= 0.01
    sft = json.loads((data / "sft" / "report.json").read_text())
    assert sft["val_contaminated"] == len(sft["val_contaminated_dropped"])
