"""Every built-in task scored by llmpipe equals lm-evaluation-harness 0.4 scoring it with its own task
definition (installed YAML and utils.py, pointed at the same rows) on the Hugging Face export of the same
model: per-choice log-likelihoods within 1e-4 on the first 100 items of each task, both sides in float64;
and in float32, the production path, within 1e-4 or, past |loglik| ~ 250, 4 float32 steps of the value
(match_tolerance: both sides sum float32 log-probabilities, coarser than 1e-4 there)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmpipe.config.tokens import TokenizerParams
from llmpipe.evals.builtin import BUILTIN, load_builtin
from llmpipe.evals.lm_eval_ref import LM_EVAL_YAML, lm_eval_scores, lm_eval_task, match_tolerance, write_rows
from llmpipe.evals.score import score_items
from llmpipe.evals.suite import item_metrics
from llmpipe.model.gpt import GPT, GPTConfig
from llmpipe.ops.export import export_hf
from llmpipe.tokens.bpe import train_tokenizer

pytestmark = pytest.mark.integration
N_ITEMS = 100
BLOCK = 256  # SciQ's and BoolQ's longest passages exceed it: truncation from the left is compared too


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A BPE trained on the tasks' own text and a random 2-layer GPT whose weights are scaled up so that
    its predictions depend on the context (a small init gives near-uniform ones, blind to a lost space);
    llmpipe's model and lm-eval's HFLM on its export."""
    from lm_eval.models.huggingface import HFLM

    work = tmp_path_factory.mktemp("lm-eval-parity")
    items = {task: load_builtin(task)[:N_ITEMS] for task in BUILTIN}
    texts = [ctx + cont for its in items.values() for it in its for ctx, cont in it.pairs()]
    tok = train_tokenizer(texts, TokenizerParams(vocab_size=2048, min_frequency=2))
    tok.save(str(work / "tokenizer.json"))
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.get_vocab_size(), n_layer=2, n_head=2, n_kv_head=1, d_model=32,
                          block_size=BLOCK)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(2.0)
    export_hf(model, work / "tokenizer.json", work / "hf")
    double = GPT(model.cfg).eval()
    double.load_state_dict(model.state_dict())
    models = {"float32": (model, HFLM(pretrained=str(work / "hf"), dtype="float32", device="cpu", batch_size=32)),
              "float64": (double.double(), HFLM(pretrained=str(work / "hf"), dtype="float64", device="cpu",
                                                batch_size=32))}
    return work, items, tok, models


def test_the_reference_covers_every_builtin_task():
    assert set(LM_EVAL_YAML) == set(BUILTIN)


@pytest.mark.parametrize("precision", ["float64", "float32"])
@pytest.mark.parametrize("task", sorted(BUILTIN))
def test_loglikelihoods_equal_lm_evals_own_task_definition(setup, task, precision):
    work, items, tok, models = setup
    model, lm = models[precision]
    ref = lm_eval_task(task, write_rows(task, N_ITEMS, work / "rows" / f"{task}.arrow"), work / "hf-cache")
    theirs, metrics, _ = lm_eval_scores(lm, ref)
    ours = score_items(model, tok, items[task], tok.token_to_id("<|endoftext|>"), dtype=getattr(torch, precision))
    assert len(theirs) == len(ours) == N_ITEMS
    assert [len(t) for t in theirs] == [len(s.loglik) for s in ours]  # the same choices per item
    ref_ll = np.concatenate([np.array(t) for t in theirs])
    diff = np.abs(np.concatenate([np.array(s.loglik) for s in ours]) - ref_ll)
    print(f"{task}: max |loglik diff| {diff.max():.2e} over {diff.size} choices; largest |loglik| {np.abs(ref_ll).max():.1f}")
    tolerance = 1e-4 if precision == "float64" else match_tolerance(ref_ll)
    assert np.all(diff <= tolerance), [(d, r) for d, r in zip(diff, ref_ll) if d > 1e-4][:3]
    # the same right answer: accuracy item by item equals lm-eval's (and acc_norm where it reports it)
    for item, s, m in zip(items[task], ours, metrics):
        acc, acc_norm = item_metrics(item, s)
        assert acc == m["acc"] and acc_norm == m.get("acc_norm", acc_norm), item.id
    # the model tells the formats apart: one space more before every choice moves the scores far more
    shifted = [type(it)(it.task, it.id, it.kind, it.contexts, [" " + c for c in it.continuations], it.gold)
               for it in items[task][:5]]
    moved = [abs(a - b) for s, t in zip(score_items(model, tok, shifted, 0, dtype=getattr(torch, precision)), ours)
             for a, b in zip(s.loglik, t.loglik)]
    assert min(moved) > 1e-2
