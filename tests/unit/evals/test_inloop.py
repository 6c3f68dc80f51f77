"""In-loop evaluation: pretraining scores fixed items at every evaluation, and accuracy rises as the
model learns (on the toy language of arithmetic sequences, whose next terms are easy to tell apart)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from llmpipe.config.pretrain import PretrainParams
from llmpipe.evals.suite import inloop_evaluator
from llmpipe.evals.tasks import Item
from llmpipe.model.gpt import GPT, GPTConfig
from llmpipe.training.loop import train

from tests.toy_tokens import write_toy_tokens

VOCAB = 64


class ToyTokenizer:
    """Text "t5 t7 t9" is tokens [5, 7, 9]: the toy language written out."""

    def encode(self, text: str, add_special_tokens: bool = False):
        return SimpleNamespace(ids=[int(w[1:]) for w in text.split()])


def toy_items(n: int = 24) -> list[Item]:
    rng = np.random.default_rng(3)
    items = []
    for i in range(n):
        start, step = int(rng.integers(1, VOCAB)), int(rng.integers(1, 4))
        seq = [(start + step * j) % (VOCAB - 1) + 1 for j in range(12)]
        true = " " + " ".join(f"t{t}" for t in seq[8:])
        wrong = [" " + " ".join(f"t{int(t)}" for t in rng.integers(1, VOCAB, 4)) for _ in range(3)]
        gold = i % 4
        choices = wrong[:gold] + [true] + wrong[gold:]
        items.append(Item("toy", str(i), "multiple_choice", [" ".join(f"t{t}" for t in seq[:8])], choices, gold))
    return items


def test_pretraining_scores_the_items_at_every_evaluation_and_accuracy_rises(tmp_path):
    token_dir = write_toy_tokens(tmp_path / "tokens", VOCAB)
    cfg = PretrainParams.model_validate(dict(
        model={"n_layer": 2, "n_head": 2, "d_model": 32, "block_size": 32}, micro_batch_size=8, max_steps=20,
        warmup_steps=4, lr=0.01, eval_interval=10, eval_batches=1, log_interval=10, checkpoint_interval=20,
        threads=1))
    evaluate = inloop_evaluator(toy_items(), ToyTokenizer(), eot_id=0)
    torch.manual_seed(0)
    untrained = evaluate(GPT(GPTConfig(vocab_size=VOCAB, **cfg.model.model_dump())), torch.float32)
    sunk = []
    res = train(cfg, token_dir, tmp_path / "ckpt", VOCAB, {"id": 1}, sink=lambda m, s: sunk.append((s, m)),
                on_eval=evaluate)
    bench = res.history["bench"]
    assert [r["step"] for r in bench] == [10, 20]
    assert set(bench[0]) == {"step", "tokens", "toy_acc_norm", "toy_gold_bpb", "acc_norm", "gold_bpb"}
    assert untrained["acc_norm"] < 0.6 and bench[-1]["acc_norm"] >= 0.9  # chance is 0.25
    # the right continuation's bits per byte fall at every evaluation: a uniform guess over 64 tokens
    # costs 6 bits a token, about 1.5 bits per byte of " t37"
    assert untrained["gold_bpb"] > 1.2
    assert bench[-1]["gold_bpb"] < bench[0]["gold_bpb"] < 0.75 * untrained["gold_bpb"]
    assert any("inloop_acc_norm" in m for _, m in sunk)
