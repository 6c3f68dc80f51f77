"""The copy probe tells a model that copies from its context from one that does not."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llmpipe.evals.copying import copy_probe, copy_rule, showing_masks, span_starts, varied_copy_probe, varied_lengths
from llmpipe.model.gpt import GPT, GPTConfig

VOCAB = 64


def tiny(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(n_layer=2, n_head=2, d_model=64, block_size=64, vocab_size=VOCAB))


def trained_to_copy(steps: int = 150) -> GPT:
    """A tiny model trained on random spans shown twice, always half the row apart: it learns to copy (from
    that distance at least), nothing else."""
    model, gen = tiny(), torch.Generator().manual_seed(1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        span = torch.randint(0, VOCAB, (16, 32), generator=gen)
        row = torch.cat([span, span], 1)
        logits, _ = model(row[:, :-1])
        F.cross_entropy(logits.transpose(1, 2), row[:, 1:]).backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


def test_copy_rule_reads_the_longest_earlier_match():
    row = np.array([1, 2, 3, 1, 4, 9, 1, 2, 3, 1, 4])
    guess = copy_rule(row, range(6, 11))
    # position 6 (token 1): the longest seen suffix is "1", last seen at 3 -> 4; position 9 ("1 2 3 1")
    # matched at 3 -> 4, not the latest "1" (at 6, followed by 2)
    assert guess[6] == 4 and guess[7] == 3 and guess[8] == 1 and guess[9] == 4
    assert guess[10] == 9  # "... 1 4" seen at 4, followed by 9
    assert (guess[:6] == -1).all()  # outside the asked positions nothing is guessed


def test_span_starts_are_spread_and_fit():
    starts = span_starts(1000, 100, 5)
    assert starts[0] == 0 and starts[-1] == 900 and len(starts) == 5
    assert span_starts(50, 100, 5) == [] and span_starts(1000, 100, 0) == []


def test_the_probe_separates_a_copier_from_a_model_that_does_not_copy():
    stream = np.random.default_rng(0).integers(0, VOCAB, 5000)
    before = copy_probe(tiny(), stream, 16)
    after = copy_probe(trained_to_copy(), stream, 16)
    assert before["copy_spans"] == after["copy_spans"] == 16 and after["copy_span_tokens"] == 32
    # random tokens: the first showing is unpredictable for both; only the copier reads the repeat
    assert abs(before["copy_repeat_top1"] - before["copy_first_top1"]) < 0.1
    assert after["copy_repeat_top1"] > after["copy_first_top1"] + 0.5
    assert after["copy_gain_nats"] > 1.0 > abs(before["copy_gain_nats"])
    assert before["copy_rule_top1"] > 0.9  # the spans are long enough for the rule to find its match
    # batches change nothing (within a flipped near-tie: another CPU's kernels may round differently)
    assert copy_probe(tiny(), stream, 16, batch_size=3) == pytest.approx(before, abs=5e-3)


class Oracle(torch.nn.Module):
    """Right about every next token of a span shown twice, except the repeat's first (which nothing in
    the span predicts): both showings' top-1 is 1.0 exactly only if neither counts that position."""

    def __init__(self):
        super().__init__()
        self.cfg = GPTConfig(n_layer=1, n_head=1, d_model=8, block_size=64, vocab_size=VOCAB)
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # a device to be on

    def forward(self, x):
        half = self.cfg.block_size // 2
        nxt = torch.cat([x[:, 1:], x[:, half - 1 : half]], 1)  # the last target is the span's last token
        nxt[:, half - 1] = (x[:, half - 1] + 1) % VOCAB  # wrong where the repeat starts
        return F.one_hot(nxt, VOCAB).float() * 10, None


def test_the_probe_scores_exactly_the_predictable_targets():
    out = copy_probe(Oracle(), np.random.default_rng(1).integers(0, VOCAB, 3000), 8)
    assert out["copy_first_top1"] == 1.0 and out["copy_repeat_top1"] == 1.0


def test_no_span_fits_no_figures():
    assert copy_probe(tiny(), np.arange(20) % VOCAB, 8) == {}  # a stream shorter than a span


class Copier(torch.nn.Module):
    """Predicts each next token by a rule over the row: `offset` copies the token that many positions back
    (a head that learned one distance); None reads the context as the copy rule does (by content)."""

    def __init__(self, offset: int | None):
        super().__init__()
        self.cfg = GPTConfig(n_layer=1, n_head=1, d_model=8, block_size=64, vocab_size=VOCAB)
        self.offset = offset
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        rows = x.numpy()
        if self.offset is None:
            nxt = np.stack([copy_rule(r, range(len(r))) for r in rows]).clip(min=0)
        else:  # target t + 1 read from t + 1 - offset
            nxt = np.zeros_like(rows)
            nxt[:, self.offset - 1 :] = rows[:, : rows.shape[1] - self.offset + 1]
        return F.one_hot(torch.from_numpy(nxt), VOCAB).float() * 10, None


def test_the_varied_probe_tells_a_one_distance_copier_from_one_that_matches_content():
    stream = np.random.default_rng(2).integers(0, VOCAB, 4000)
    lengths = varied_lengths(64, 16)
    assert lengths[0] == 4 and lengths[-1] == 31 and 32 not in lengths  # never the half context
    one_distance, content = Copier(offset=32), Copier(offset=None)
    assert copy_probe(one_distance, stream, 8)["copy_repeat_top1"] == 1.0  # the half-context probe is fooled
    fooled = varied_copy_probe(one_distance, stream, 16)
    assert fooled["copy_varied_repeat_top1"] < 0.1 and fooled["copy_varied_spans"] == 16
    reads = varied_copy_probe(content, stream, 16)
    assert reads["copy_varied_repeat_top1"] > 0.98  # the repeat by its match (random text may hold a longer one)
    assert reads["copy_varied_first_top1"] < 0.3 < reads["copy_varied_gain_nats"]  # random text: little to match
    assert (reads["copy_varied_min_tokens"], reads["copy_varied_max_tokens"]) == (4, 31)
    assert varied_copy_probe(content, np.arange(40) % VOCAB, 16) == {}  # a stream shorter than the rows
    # a stream too short for rows of the longest spans' text, long enough for the shortest's: still 16 rows
    assert varied_copy_probe(content, stream[:75], 16)["copy_varied_spans"] == 16


def test_the_varied_probe_scores_each_showing_after_its_first_token():
    first, repeat = showing_masks(8, [2, 3])  # target j is row[j + 1]
    # L = 2: first showing row[4:6] (its second token: j = 4), repeat row[6:8] (j = 6)
    assert first[0].tolist() == [False, False, False, False, True, False, False]
    assert repeat[0].tolist() == [False, False, False, False, False, False, True]
    # L = 3: first showing row[2:5] (j = 2, 3), repeat row[5:8] (j = 5, 6)
    assert first[1].tolist() == [False, False, True, True, False, False, False]
    assert repeat[1].tolist() == [False, False, False, False, False, True, True]
