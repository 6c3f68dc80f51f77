"""The pieces the copy benches' figures rest on (docs/assistant.md): bench/_root.py's swap of training rows
for periodic ones and its commonest-ids alphabet, and bench/copy_curriculum.py's phase parser."""

import importlib.util
import sys

import numpy as np
import pytest

from llmpipe.tokens.loader import TokenData
from tests.conftest import REPO
from tests.unit.tokens.test_tokens import make_shards


def bench_module(name: str):
    """A bench script imported as its own module (each imports `_root` first, as when run)."""
    if name != "_root":
        bench_module("_root")
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


def rows_of(data: TokenData, step: int, stream: int = 0, rows: int = 8, block: int = 40) -> np.ndarray:
    x, y = data.random_batch(step, 0, rows=rows, block=block, seed=5, stream=stream)
    assert (x[:, 1:] == y[:, :-1]).all()  # still inputs and targets of one row, shifted by one
    return np.concatenate([x.numpy(), y.numpy()[:, -1:]], axis=1)


def period(row: np.ndarray, low: int, high: int) -> int | None:
    return next((p for p in range(low, high + 1) if (row[p:] == row[:-p]).all()), None)


@pytest.fixture
def data(tmp_path):
    rng = np.random.default_rng(0)  # text with no period: random ids 1..399
    make_shards(tmp_path, [rng.integers(1, 400, size=3000).tolist()], [rng.integers(1, 400, size=600).tolist()],
                shard_tokens=1000)
    return TokenData(tmp_path, "train")


def test_periodic_rows_repeat_a_random_sequence_of_the_alphabet_and_the_rest_stay_text(data):
    alphabet = np.arange(500, 520)
    plain = rows_of(data, 3)
    with bench_module("_root").swapped_rows({"periodic": 0.5}, alphabet, 4, 9):
        swapped, again, later = rows_of(data, 3), rows_of(data, 3), rows_of(data, 4)
    assert (swapped == again).all() and not (swapped == later).all()  # a function of the step alone
    periodic = [r for r in range(8) if np.isin(swapped[r], alphabet).all()]
    assert len(periodic) == 4  # half of 8 rows
    assert all(period(swapped[r], 4, 9) is not None for r in periodic)
    assert len({swapped[r].tobytes() for r in periodic}) == 4  # each row its own draw
    others = [r for r in range(8) if r not in periodic]
    assert (swapped[others] == plain[others]).all()
    assert (rows_of(data, 3) == plain).all()  # the patch is undone on exit


def test_text_periodic_rows_repeat_their_own_first_tokens_and_val_batches_are_untouched(data):
    plain, plain_val = rows_of(data, 2), rows_of(data, 2, stream=1)
    with bench_module("_root").swapped_rows({"text_periodic": 0.25}, np.arange(500, 520), 8, 16):
        swapped, val = rows_of(data, 2), rows_of(data, 2, stream=1)
    changed = [r for r in range(8) if not (swapped[r] == plain[r]).all()]
    assert len(changed) == 2
    for r in changed:
        p = period(swapped[r], 8, 16)
        assert p is not None and (swapped[r][:p] == plain[r][:p]).all()
    assert (val == plain_val).all()


def test_the_alphabet_is_the_commonest_ids_less_the_excluded_ones(tmp_path):
    make_shards(tmp_path, [[7] * 30 + [3] * 20 + [9] * 10 + [0] * 40 + [5]], [[1, 2, 0]], shard_tokens=200)
    commonest = bench_module("_root").commonest_ids
    assert commonest(tmp_path, 1000, 3, excluded=[0]).tolist() == [7, 3, 9]
    assert commonest(tmp_path, 1000, 2, excluded=[0, 7]).tolist() == [3, 9]
    with pytest.raises(ValueError, match="4 distinct ids"):
        commonest(tmp_path, 1000, 5, excluded=[0])


def test_phases_parse_and_a_bad_piece_is_named():
    parse = bench_module("copy_curriculum").parse_phases
    assert parse("900:periodic=1,decay=0.05; 300:periodic=0.25,text_periodic=0.75;1447:") == [
        (900, {"periodic": 1.0, "decay": 0.05}), (300, {"periodic": 0.25, "text_periodic": 0.75}), (1447, {})]
    for spec, why in [("0:periodic=1", "positive whole number"), ("x:periodic=1", "positive whole number"),
                      ("10:shuffle=1", "unknown key 'shuffle'"), ("10:periodic=half", "takes a number"),
                      ("10:periodic=1.5", "from 0 to 1"), ("10:decay=0", "above 0"),
                      ("10:periodic=0.6,text_periodic=0.6", "at most 1 together"), (" ; ", "names no phase"),
                      ("10:block=0.5", "positive whole number"), ("10:rows=0", "positive whole number")]:
        with pytest.raises(ValueError, match=why):
            parse(spec)
    # a cheaper phase: its own row length (whole numbers, not shares) and rows, no longer than the bench's block
    assert parse("700:periodic=1,block=128,rows=4;10:", 256) == [(700, {"periodic": 1.0, "block": 128, "rows": 4}), (10, {})]
    with pytest.raises(ValueError, match="exceeds --block 256"):
        parse("700:block=512", 256)


@pytest.mark.parametrize("speaker_tags", [True, False])
def test_sft_variants_random_passages_keep_the_records_layout_and_reply_format(speaker_tags):
    """bench/sft_variants.py's --random-passages rebuilds an item on random lines and names: a tagged who-says
    record stays tagged and quoted (its reply the quoted line with its tag), an untagged one stays plain."""
    import random

    from llmpipe.data import playqa
    from llmpipe.evals.trivial import check_of

    variants = bench_module("sft_variants")
    rows = [("Ham", "To be, or not to be, that is the question"), ("Hor", "Whether tis nobler in the mind"),
            ("Ham", "The slings and arrowes of outragious fortune")]
    item = next(i for s in range(50) if (i := playqa.make_item(rows, "speaker", random.Random(s), speaker_tags)))
    reply = playqa.reply_of(item, True)
    record = {"task": "speaker", "passage": item.passage, "stratum": item.stratum, "source": "demo:x#0",
              "messages": [{"role": "user", "content": item.question}, {"role": "assistant", "content": reply}],
              **({"answer": item.answer, "quoted": True} if reply != item.answer else {})}
    lines = [f"a line of the train text, number {k}" for k in range(20)]
    new = variants.randomized(record, lines, ["Alpha", "Beta", "Gamma", "Delta"], random.Random(1))
    assert new["passage"] != record["passage"]
    rows = [tuple(r) for r in new["passage"]]
    assert new["messages"][0]["content"].startswith(playqa.passage_text(rows, speaker_tags) + "\n\n")
    assert bool(new.get("quoted")) == speaker_tags and check_of(new)(new["messages"][-1]["content"])
