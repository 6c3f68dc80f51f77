"""Baselines beside every benchmark figure: Wilson intervals, the majority rule, significance over the best
trivial rule, and the signal-to-noise ratio of a task's in-loop curve."""

from __future__ import annotations

import numpy as np
import pytest

from llmpipe.evals.taskstats import majority, scored_bytes, wilson
from llmpipe.evals.snr import SNR_CAP, read_curves, snr, task_snr
from llmpipe.evals.suite import uncertainty
from llmpipe.evals.tasks import Item
from llmpipe.stages.benchmark import add_snr, table
from llmpipe.util.io import write_tsv


@pytest.mark.parametrize("k, n, lo, hi", [
    (0, 10, 0.0, 0.277533),  # closed form at 0 successes: z^2 / (n + z^2)
    (10, 10, 0.722467, 1.0),  # and at n: n / (n + z^2)
    (5, 10, 0.236593, 0.763407),
    (25, 100, 0.175452, 0.343045),  # a 4-choice task at chance over 100 items: about +-0.08
])
def test_wilson_interval_known_values(k, n, lo, hi):
    assert wilson(k, n) == pytest.approx((lo, hi), abs=1e-6)


def test_wilson_interval_equals_scipys():
    from scipy.stats import binomtest

    for k, n in [(3, 7), (41, 200), (199, 200), (1, 5153)]:
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert wilson(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)


def mc(gold: int, i: int = 0, choices: int = 4) -> Item:
    return Item("t", str(i), "multiple_choice", ["q"], [f" c{j}" for j in range(choices)], gold)


def test_majority_is_the_most_frequent_gold_answer_of_the_items():
    assert majority([mc(g, i) for i, g in enumerate([0, 0, 0, 1, 2])]) == pytest.approx(0.6)
    assert majority([mc(g, i) for i, g in enumerate([0, 1, 2, 3])]) == pytest.approx(0.25)
    lm = [Item("lm", str(i), "language_modeling", ["ctx"], [w], 0) for i, w in enumerate([" the", " cat", " the"])]
    assert majority(lm) == pytest.approx(2 / 3)  # a language-modeling task's constant rule repeats one word


def test_significance_needs_the_interval_above_the_best_trivial_rule():
    skewed = [mc(0, i) for i in range(70)] + [mc(1 + i % 3, 70 + i) for i in range(30)]  # majority 0.7
    m = uncertainty(skewed, acc=0.75, acc_norm=0.9, random_acc=0.25)
    assert m["majority"] == pytest.approx(0.7) and m["trivial"] == pytest.approx(0.7)
    assert m["acc_ci"] == pytest.approx(list(wilson(75, 100)))
    assert not m["significant"]  # 0.75 beats chance by far, but not always answering "A" (0.7)
    assert m["significant_norm"]  # 0.9: lower bound 0.826 > 0.7
    balanced = [mc(i % 4, i) for i in range(100)]
    assert uncertainty(balanced, 0.36, 0.3, 0.25)["significant"]  # lower bound 0.27 > 0.25
    assert not uncertainty(balanced, 0.3, 0.3, 0.25)["significant"]  # lower bound 0.22


def test_scored_bytes_count_the_context_space_the_scorer_moves():
    assert scored_bytes("The sky is ", "blue") == len(" blue")
    assert scored_bytes("The sky is", " blue") == len(" blue")
    assert scored_bytes("naïve", " café") == 6  # UTF-8 bytes, not characters


def test_snr_of_a_flat_noisy_curve_is_below_one_and_of_a_rising_one_above():
    rng = np.random.default_rng(0)
    flat = 0.25 + rng.normal(0, 0.03, 20)  # an accuracy at chance that only jitters
    rising = np.linspace(0.25, 0.6, 20) + rng.normal(0, 0.01, 20)
    falling_bpb = np.linspace(3.0, 2.0, 20) + rng.normal(0, 0.01, 20)
    assert snr(list(flat), 5) < 1.0
    # the last window's own trend counts as noise (as in the paper, whose final checkpoints sit where the
    # curve has flattened), so a straight line's SNR is bounded: here about 9 and 20
    assert snr(list(rising), 5) > 5.0
    assert snr(list(falling_bpb), 5) > 5.0
    # over many seeds a flat curve's SNR is about 0.5 (|early - late| ~ noise * sqrt(2 / k)), and passes
    # the SNR > 1 filter about one time in four with k = 5 (measured: 23% of 4,000 seeds)
    flats = np.array([snr(list(0.25 + np.random.default_rng(s).normal(0, 0.03, 20)), 5) for s in range(400)])
    assert 0.4 < np.median(flats) < 0.65 and 0.15 < np.mean(flats > 1) < 0.3


def test_snr_hand_computed_and_undefined_cases():
    values = [0.2, 0.3, 0.2, 0.5, 0.6, 0.4]  # k = 3 (half of 6)
    early, late = np.mean(values[:3]), np.mean(values[3:])
    expected = (abs(late - early) / ((early + late) / 2)) / (np.std(values[3:]) / late)
    assert snr(values, 5) == pytest.approx(expected)
    assert snr([0.3, 0.4, 0.5], 5) is None  # fewer than 4 evaluations: no window of 2
    assert snr([0.0] * 10, 5) is None  # exact match of a model that never gets one right
    assert snr([0.1] * 5 + [0.5] * 5, 5) == SNR_CAP  # moved, then no jitter at all
    assert snr([0.3] * 10, 5) == 0.0


def test_an_accuracy_over_few_items_counts_their_binomial_noise():
    one_item_up = [0.2] * 5 + [0.3] * 5  # 10 items: one more right, and no jitter at all
    assert snr(one_item_up, 5) == SNR_CAP  # jitter alone: the change looks like pure signal
    expected = (0.1 / 0.25) / (np.sqrt(0.3 * 0.7 / 10) / 0.3)
    assert snr(one_item_up, 5, n_items=10) == pytest.approx(expected) and expected < 1
    climb = [0.25] * 5 + [0.75] * 5  # half the items more right: signal over any item draw
    assert snr(climb, 5, n_items=100) > 5


def test_benchmark_reads_the_curves_and_filters_the_core_mean_by_snr(tmp_path):
    rows = [{"step": 10 * (i + 1), "tokens": 100 * i, "good_acc_norm": 0.3 + 0.04 * i + 0.005 * (-1) ** i,
             "good_gold_bpb": 3.0 - 0.1 * i, "chance_acc_norm": 0.25 + 0.03 * (-1) ** i,
             "chance_gold_bpb": 3.0 - 0.1 * i + 0.001 * (-1) ** i} for i in range(10)]
    write_tsv(tmp_path / "bench.tsv", rows, list(rows[0]))
    curves = read_curves(tmp_path / "bench.tsv")
    assert curves["good_acc_norm"] == pytest.approx([r["good_acc_norm"] for r in rows])
    assert task_snr(curves, "absent", 5, None) == {"snr": None, "snr_bpb": None, "snr_evaluations": 0,
                                                   "snr_items": None}
    base = {"n": 100, "acc": 0.3, "acc_norm": 0.3, "random": 0.25, "majority": 0.3, "significant": False,
            "significant_norm": False, "acc_ci": [0.2, 0.4], "acc_norm_ci": [0.2, 0.4], "gold_bpb": 2.5,
            "contaminated": 0}
    result = {"tasks": {"good": {**base, "centered": 0.4}, "chance": {**base, "centered": -0.02},
                        "lm": {**base, "centered": 0.1}}, "core": 0.16, "items": 300, "seconds": 1.0,
              "items_per_s": 300.0}
    add_snr(result, curves, 5, {"good": 1000, "chance": 1000})
    good, chance = result["tasks"]["good"], result["tasks"]["chance"]
    assert good["snr"] > 1 and chance["snr"] < 1 and chance["snr_bpb"] > 1  # bpb falls where accuracy does not
    assert result["tasks"]["lm"]["snr"] is None and result["tasks"]["lm"]["snr_evaluations"] == 0
    assert result["core_snr_tasks"] == ["good"] and result["core_snr_mean"] == pytest.approx(0.4)
    text = table(result)
    assert "95% Wilson" in text and "acc_norm SNR > 1" in text and ": +0.4000 over 1 task: good" in text
    add_snr(result, {}, 5, {})  # no in-loop evaluation: no SNR, no filtered mean
    assert result["core_snr_mean"] is None and "n/a over 0 tasks" in table(result)
