"""The scorer: log-likelihoods with the shared context computed once equal one full forward pass per
choice, and equal transformers' on the Hugging Face export; the built-in tasks read the package's data
with lm-eval's own preprocessing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llmpipe.config.tokens import TokenizerParams
from llmpipe.evals.builtin import BUILTIN, load_builtin
from llmpipe.evals.score import encode_pair, requests, score_items
from llmpipe.evals.suite import task_metrics
from llmpipe.evals.tasks import Item
from llmpipe.model.gpt import GPT, GPTConfig
from llmpipe.tokens.bpe import train_tokenizer

WORDS = ("the cat sat on a mat while the dog ran to the park and a man is sitting on a roof he starts "
         "pulling up roofing tiles then climbs down the ladder slowly").split()


@pytest.fixture(scope="module")
def tok():
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, 30)) + "." for _ in range(300)]
    return train_tokenizer(texts, TokenizerParams(vocab_size=300, min_frequency=2))


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=tok.get_vocab_size(), n_layer=2, n_head=4, n_kv_head=2, d_model=32,
                         block_size=32)).eval()


def items_for_test():
    rng = np.random.default_rng(1)
    sent = lambda n: " ".join(rng.choice(WORDS, n))  # noqa: E731
    mc = [Item("mc", str(i), "multiple_choice", [sent(3 + 7 * i)], [" " + sent(1 + j) for j in range(4)], i % 4)
          for i in range(6)]  # the last contexts exceed the 32-token window: truncated from the left
    schema = [Item("wino", "0", "schema", [sent(5), sent(8)], [" " + sent(4)], 1)]
    lm = [Item("lm", "0", "language_modeling", [sent(6) + " "], [sent(2)], 0)]  # trailing space moves
    return mc + schema + lm


def full_forward(model, item, tok):
    out = []
    for _, _, prefix, cont in requests([item], tok, 0, model.cfg.block_size):
        x = torch.tensor([list(prefix) + cont[:-1]])
        with torch.no_grad():
            lp = F.log_softmax(model(x)[0].float(), -1)[0]
        pos = torch.arange(len(prefix) - 1, len(prefix) - 1 + len(cont))
        out.append(float(lp[pos, torch.tensor(cont)].sum()))
    return out


@pytest.mark.parametrize("max_rows", [1, 5, 64])
def test_shared_context_scoring_equals_one_full_pass_per_choice(model, tok, max_rows):
    items = items_for_test()
    scores = score_items(model, tok, items, 0, max_rows=max_rows)
    for item, s in zip(items, scores):
        assert s.loglik == pytest.approx(full_forward(model, item, tok), abs=1e-4)
        assert len(s.loglik) == item.n_choices


def test_gold_bpb_is_the_right_continuations_bits_over_its_bytes(model, tok):
    """By hand: -log2 p(gold continuation) from one full forward pass per choice, over the UTF-8 bytes of
    the text those tokens spell (the language-modeling item's context space moves onto its continuation)."""
    items = items_for_test()
    mc, lm = items[:6], items[-1:]
    bits = sum(-full_forward(model, i, tok)[i.gold] / math.log(2) for i in mc)
    n_bytes = sum(len(i.continuations[i.gold].encode("utf-8")) for i in mc)
    assert task_metrics(mc, score_items(model, tok, mc, 0))["gold_bpb"] == pytest.approx(bits / n_bytes, rel=1e-5)
    (ctx, cont), = lm[0].pairs()
    assert ctx.endswith(" ") and not cont.startswith(" ")
    expected = -full_forward(model, lm[0], tok)[0] / math.log(2) / len((" " + cont).encode("utf-8"))
    assert task_metrics(lm, score_items(model, tok, lm, 0))["gold_bpb"] == pytest.approx(expected, rel=1e-5)


def test_pairs_are_encoded_as_lm_eval_does(tok):
    ctx, cont = encode_pair(tok, "the cat sat ", "on a mat", 0)
    assert cont == tok.encode(" on a mat").ids[-len(cont):]  # the trailing space joins the continuation
    assert ctx + cont == tok.encode("the cat sat on a mat").ids
    assert encode_pair(tok, "", "the cat", 0)[0] == [0]


def test_loglikelihoods_equal_transformers_on_the_hf_export(model, tok, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmpipe.ops.export import export_hf

    tok.save(str(tmp_path / "tokenizer.json"))
    export_hf(model, tmp_path / "tokenizer.json", tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    items = items_for_test()[:4]
    for item, s in zip(items, score_items(model, tok, items, 0)):
        for (ctx, cont), ll in zip(item.pairs(), s.loglik):
            c = hf_tok(ctx)["input_ids"]
            whole = hf_tok(ctx + cont)["input_ids"]
            k = whole[len(c):]
            whole = whole[-(model.cfg.block_size + 1):]
            with torch.no_grad():
                lp = F.log_softmax(hf(torch.tensor([whole[:-1]])).logits.float(), -1)[0]
            ref = float(lp[torch.arange(len(whole) - 1 - len(k), len(whole) - 1), torch.tensor(k)].sum())
            assert ll == pytest.approx(ref, abs=1e-3)


def test_builtin_hellaswag_matches_lm_evals_preprocessing():
    import datasets
    from lm_eval.tasks.hellaswag.utils import process_docs

    items = load_builtin("hellaswag")
    assert len(items) == 10_042
    from llmpipe.evals.builtin import read_rows

    rows = read_rows("hellaswag/none")[:300]
    theirs = process_docs(datasets.Dataset.from_list(rows))
    for item, doc in zip(items, theirs):
        assert item.contexts == [doc["query"]] and item.continuations == [" " + c for c in doc["choices"]]
        assert item.gold == doc["gold"]


@pytest.mark.parametrize("task", sorted(BUILTIN))
def test_builtin_items_are_the_requests_of_lm_evals_own_task_definition(task, tmp_path):
    """The same (context, continuation) strings and right answer as lm-eval 0.4's installed definition of
    the task builds from the same rows (COPA's two spaces, CommonsenseQA's letters, Winogrande's partial
    contexts ...); tests/integration/test_lm_eval_parity.py compares the log-likelihoods."""
    from llmpipe.evals.lm_eval_ref import lm_eval_requests, lm_eval_task, write_rows

    ref = lm_eval_task(task, write_rows(task, 50, tmp_path / f"{task}.arrow"), tmp_path / "cache")
    theirs = lm_eval_requests(ref)
    for item, doc in zip(load_builtin(task)[:50], ref.eval_docs, strict=True):
        assert item.pairs() == [inst.args for inst in theirs[int(item.id)]]
        gold = ref.doc_to_text(doc) if ref.multiple_input else ref.doc_to_target(doc)
        assert item.gold == (ref.doc_to_choice(doc).index(gold) if isinstance(gold, str) else gold)


@pytest.mark.parametrize("task", sorted(BUILTIN))
def test_every_builtin_task_loads(task):
    items = load_builtin(task)
    assert len(items) >= 100 and all(0 <= i.gold < i.n_choices for i in items)
    assert all(c.strip() for i in items for _, c in i.pairs())
