"""Instruction records in the common shapes, each bad one named by reason with its line; the demo's
checkable items made from plays."""

import gzip
import json
import random

import pytest

from llmpipe.data.instructions import BadRecord, read_records, to_conversation
from llmpipe.data.playqa import answer_in_reply, items_of_play, make_item, normalize, passage_text, reply_of, speeches

ALPACA = {"instruction": "Name the speaker.", "input": "Ham. To be.", "output": "Hamlet"}
SHAREGPT = {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
                              {"from": "gpt", "value": "Hail."}, {"from": "human", "value": "Bye"},
                              {"from": "gpt", "value": "Farewell."}]}
OPENAI = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hello"}]},
                       {"role": "assistant", "content": " Good morrow. "}]}


def test_the_three_shapes_become_one_conversation_shape():
    assert to_conversation(ALPACA) == [{"role": "user", "content": "Name the speaker.\n\nHam. To be."},
                                       {"role": "assistant", "content": "Hamlet"}]
    assert [m["role"] for m in to_conversation(SHAREGPT)] == ["system", "user", "assistant", "user", "assistant"]
    assert to_conversation(OPENAI) == [{"role": "user", "content": "Hello"},
                                       {"role": "assistant", "content": "Good morrow."}]
    assert to_conversation({"instruction": "Say hi", "input": "", "output": "hi"})[0]["content"] == "Say hi"


@pytest.mark.parametrize("record, reason", [
    ({"instruction": "no output"}, "missing_fields"),
    ({"prompt": "x", "completion": "y"}, "missing_fields"),
    ({"messages": []}, "missing_fields"),
    ({"messages": [{"role": "user"}]}, "missing_fields"),
    ([1, 2], "not_an_object"),
    ({"instruction": "x", "output": "   "}, "empty_turn"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}]}, "empty_turn"),
    ({"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]}, "roles_out_of_order"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}, "roles_out_of_order"),
    ({"messages": [{"role": "user", "content": "a"}]}, "roles_out_of_order"),
    ({"conversations": [{"from": "human", "value": "a"}, {"from": "robot", "value": "b"}]}, "unknown_role"),
])
def test_bad_records_are_refused_by_reason(record, reason):
    with pytest.raises(BadRecord) as err:
        to_conversation(record)
    assert err.value.reason == reason


def test_jsonl_lines_and_json_arrays_give_each_record_its_line(tmp_path):
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text(json.dumps(ALPACA) + "\n\n{broken\n" + json.dumps(OPENAI) + "\n")
    got = list(read_records(jsonl))
    assert [line for line, _ in got] == [1, 3, 4]
    assert isinstance(got[1][1], BadRecord) and got[1][1].reason == "broken_json"
    array = tmp_path / "b.json"
    array.write_text("[\n  " + json.dumps(ALPACA) + ",\n  " + json.dumps(SHAREGPT, indent=1) + ",\n  {oops\n]")
    got = list(read_records(array))
    assert [line for line, _ in got][:2] == [2, 3] and got[2][1].reason == "broken_json"
    gz = tmp_path / "c.jsonl.gz"
    gz.write_bytes(gzip.compress((json.dumps(SHAREGPT) + "\n").encode()))
    assert [to_conversation(r)[1]["content"] for _, r in read_records(gz)] == ["Hi"]


MODERN = """ACT I. SCENE I.

Hor.
Do, if it will not stand.

Ber.
'Tis here!

[Exit Ghost.]

Mar.
It faded on the crowing of the cock.
Some say that ever 'gainst that season comes

Hor.
So have I heard, and do in part believe it.
"""

FOLIO = """Enter Horatio and Marcellus.

  Hor. Haile to your Lordship

   Ham. I am glad to see you well:
Horatio, or I do forget my selfe

   Hor. The same my Lord,
And your poore Seruant euer
"""


def test_both_layouts_of_the_plays_read_into_speeches():
    assert [(s.speaker, len(s.lines)) for s in speeches(MODERN)] == [("Hor", 1), ("Ber", 1), ("Mar", 2), ("Hor", 1)]
    assert [s.speaker for s in speeches(FOLIO)] == ["Hor", "Ham", "Hor"]
    assert speeches(FOLIO)[1].lines == ["I am glad to see you well:", "Horatio, or I do forget my selfe"]


def test_items_are_answerable_from_their_passage_and_deterministic():
    play = (MODERN + "\n") * 30
    items = items_of_play(play, seed=0, doc_id="d")
    assert items and items == items_of_play(play, seed=0, doc_id="d")
    assert {i.task for i in items} == {"speaker", "next", "count"}
    for item in items:
        passage, question = item.question.rsplit("\n\n", 1)
        assert passage == passage_text(item.passage)
        labels = [line.split(": ")[0] for line in passage.splitlines() if ": " in line]
        if item.task == "count":
            assert int(item.answer) == len(set(labels)) == item.stratum[1]
        elif item.task == "speaker":  # the asked line sits under the answer's label
            quoted = question.split('"')[1]
            lines = passage.splitlines()
            at = next(k for k, line in enumerate(lines) if line.endswith(quoted))
            assert next(line.split(": ")[0] for line in reversed(lines[: at + 1]) if ": " in line) == item.answer
        else:
            quoted = question.split('"')[1]
            rows = [line for _, line in item.passage]
            assert rows[rows.index(quoted) + 1] == item.answer
            # quote_first: the quote, then the answer's line as the passage writes it, "Speaker: " and all
            reply = reply_of(item, quote_first=True)
            head, written = reply.split("\n")
            assert head == quoted and written in passage.splitlines() and written.endswith(item.answer)
            names = [spk for spk, _ in item.passage]
            assert answer_in_reply(reply, True, names) == item.answer
        assert reply_of(item, quote_first=False) == item.answer
        if item.task != "next":
            assert reply_of(item, quote_first=True) == item.answer
    # both forms occur: an answer line that starts a speech ("Speaker: line") and one that goes on a speech
    written = [reply_of(i, True).split("\n")[1] for i in items if i.task == "next"]
    assert any(w != i.answer for w, i in zip(written, [i for i in items if i.task == "next"]))
    assert any(w == i.answer for w, i in zip(written, [i for i in items if i.task == "next"]))


def test_tagged_who_says_items_write_each_speaker_after_its_line_and_reply_with_the_tag():
    play = (MODERN + "\n") * 30
    items = [i for i in items_of_play(play, seed=0, doc_id="d", speaker_tags=True) if i.task == "speaker"]
    plain = [i for i in items_of_play(play, seed=0, doc_id="d") if i.task == "speaker"]
    assert items and [(i.answer, i.passage, i.stratum) for i in items] == [(i.answer, i.passage, i.stratum) for i in plain]
    for item, untagged in zip(items, plain):
        passage, question = item.question.rsplit("\n\n", 1)
        assert passage == passage_text(item.passage, tagged=True) != untagged.question.rsplit("\n\n", 1)[0]
        assert passage.splitlines() == [f"{line} ({spk})" for spk, line in item.passage]
        quoted = question.split('"')[1]
        reply = reply_of(item, quote_first=True)
        assert reply in passage.splitlines() and reply == f"{quoted} ({item.answer})"  # a copy of its passage line
        names = [spk for spk, _ in item.passage]
        assert answer_in_reply(reply, True, names, "speaker") == item.answer
        assert answer_in_reply(item.answer, True, names, "speaker") == ""  # no working, nothing scored
        assert reply_of(item, quote_first=False) == item.answer
        assert reply_of(untagged, quote_first=True) == untagged.answer  # no tags: the bare name, as before
    # the other tasks keep their layout
    assert all(i.question.startswith(passage_text(i.passage) + "\n\n")
               for i in items_of_play(play, seed=0, doc_id="d", speaker_tags=True) if i.task != "speaker")


def test_a_who_says_item_whose_quoted_row_is_another_speakers_is_refused():
    rows = [("Macb", "Sleepe no more, Macbeth does murther Sleepe"), ("Lady", "What doe you meane?")]
    item = make_item(rows, "speaker", random.Random(0), speaker_tags=True)
    broken = type(item)(**{**item.__dict__, "quote_row": 1 - item.quote_row})
    with pytest.raises(ValueError, match="quote_row"):
        reply_of(broken, True)


def test_a_quoted_line_with_double_quotes_is_repeated_whole():
    rows = [("Macb", 'Sleepe no more: Macbeth does murther Sleepe,"--the innocent Sleepe'),
            ("Macb", "Sleepe that knits vp the rauel'd Sleeue of Care"), ("Lady", "What doe you meane?")]
    # the draw whose quoted line is the one with the double quote in it
    item = next(i for seed in range(50) if (i := make_item(rows, "next", random.Random(seed))) and i.stratum[1] == 1)
    assert '"--the innocent' in item.question
    assert reply_of(item, True) == rows[0][1] + "\n" + rows[1][1]
    assert answer_in_reply(reply_of(item, True), True, ["Macb", "Lady"]) == item.answer == rows[1][1]
    assert normalize("  Good  morrow. ") == normalize("good morrow") == "good morrow"
