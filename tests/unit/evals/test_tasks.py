"""Task files: the documented JSONL shapes, bad records named by file and line, fixed subsets, shots,
and the metrics (acc, acc_norm as lm-eval defines it, centered accuracy)."""

from __future__ import annotations

import json

import pytest

from llmpipe.evals.score import Scored
from llmpipe.evals.suite import item_metrics, task_metrics
from llmpipe.evals.tasks import Item, choose, load_jsonl_task, read_items, with_shots, write_items
from llmpipe.util.io import InputError


def write(tmp_path, lines, name="t.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(x) if not isinstance(x, str) else x for x in lines) + "\n")
    return path


def test_the_three_shapes(tmp_path):
    mc = load_jsonl_task(write(tmp_path, [{"query": "The sky is", "choices": ["blue", "green"], "gold": 0}]),
                         "multiple_choice", "mc")
    assert mc[0].pairs() == [("The sky is", " blue"), ("The sky is", " green")]
    assert mc[0].choice_chars() == [4, 5]
    schema = load_jsonl_task(write(tmp_path, [{"context_options": ["Ann ran", "Bo ran"], "continuation": "home.",
                                               "gold": 1}]), "schema", "wino")
    assert schema[0].pairs() == [("Ann ran", " home."), ("Bo ran", " home.")] and schema[0].gold == 1
    lm = load_jsonl_task(write(tmp_path, ["", {"context": "To be, or not to", "continuation": "be"}]),
                         "language_modeling", "lm", delimiter=" ")
    assert lm[0].pairs() == [("To be, or not to", " be")] and lm[0].text() == "To be, or not to be"


@pytest.mark.parametrize("bad, message", [
    ('{"query": "q", "choices": ["a", "b"], "gold": 0', "malformed JSON"),
    ({"query": "q", "choices": ["a", "b"]}, "missing field 'gold'"),
    ({"query": "q", "choices": ["a", "b"], "gold": 2}, "answer index gold=2 out of range"),
    ({"query": "q", "choices": ["a", "b"], "gold": -1}, "out of range"),
    ({"query": "q", "choices": ["a"], "gold": 0}, "at least 2 strings"),
    ({"query": "q", "choices": ["a", "b"], "gold": "0"}, "must be int"),
    ({"query": "q", "choices": ["a", "b"], "gold": True}, "must be int"),
    ([1, 2], "must be a JSON object"),
])
def test_a_bad_record_names_file_and_line(tmp_path, bad, message):
    path = write(tmp_path, [{"query": "ok", "choices": ["a", "b"], "gold": 1}, bad])
    with pytest.raises(InputError, match=message) as err:
        load_jsonl_task(path, "multiple_choice", "mc")
    assert f"{path}:2:" in str(err.value)


def test_an_empty_task_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="has no items"):
        load_jsonl_task(write(tmp_path, ["", "  "]), "multiple_choice", "mc")
    with pytest.raises(InputError, match="task file not found"):
        load_jsonl_task(tmp_path / "absent.jsonl", "multiple_choice", "mc")


def test_subsets_are_fixed_by_the_seed_and_items_round_trip(tmp_path):
    pool = [Item("t", str(i), "multiple_choice", [f"q{i}"], [" a", " b"], i % 2) for i in range(50)]
    a, b, c = choose(pool, 10, 7), choose(pool, 10, 7), choose(pool, 10, 8)
    assert [i.id for i in a] == [i.id for i in b] != [i.id for i in c]
    assert choose(pool, None, 7) == pool
    write_items(tmp_path / "x.jsonl", a)
    assert read_items(tmp_path / "x.jsonl") == a


def test_shots_come_from_the_rest_of_the_task_with_a_fixed_seed():
    pool = [Item("t", str(i), "multiple_choice", [f"Q{i}:"], [" a", " b"], 1) for i in range(20)]
    shot = with_shots(pool[:3], pool, 2, seed=1)
    again = with_shots(pool[:3], pool, 2, seed=1)
    assert shot == again
    for item, orig in zip(shot, pool[:3]):
        prefix = item.contexts[0][: -len(orig.contexts[0])]
        assert prefix.count("\n\n") == 2 and f"Q{orig.id}:" not in prefix and prefix.count(" b\n\n") == 2
    assert with_shots(pool[:3], pool, 0, seed=1) == pool[:3]


def test_acc_and_acc_norm_as_lm_eval_defines_them():
    item = Item("t", "0", "multiple_choice", ["q"], [" aaaaaaaaaa", " b"], 0)
    # raw: choice 1 (-3 > -10); per character: choice 0 (-1.0 > -3.0)
    assert item_metrics(item, Scored([-10.0, -3.0], [False, False], item.choice_chars())) == (0.0, 1.0)
    tie = Item("t", "1", "multiple_choice", ["q"], [" a", " b"], 1)
    assert item_metrics(tie, Scored([-1.0, -1.0], [False, False], [1, 1])) == (0.0, 0.0)  # first on ties
    lm = Item("t", "2", "language_modeling", ["q"], [" a"], 0)
    assert item_metrics(lm, Scored([-0.1], [True], [1])) == (1.0, 1.0)


def test_centered_accuracy_and_contaminated_items():
    items = [Item("t", str(i), "multiple_choice", ["q"], [" a", " b", " c", " d"], 0) for i in range(4)]
    right, wrong = Scored([0.0, -1, -1, -1], [False] * 4, [1] * 4), Scored([-1, 0.0, -1, -1], [False] * 4, [1] * 4)
    m = task_metrics(items, [right, right, wrong, wrong], contaminated={"0"})
    assert m["acc_norm"] == 0.5 and m["random"] == 0.25 and m["centered"] == pytest.approx(1 / 3)
    assert m["contaminated"] == 1 and m["acc_norm_clean"] == pytest.approx(1 / 3)
