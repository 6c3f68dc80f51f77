"""The chat-eval baselines (issue 25): planted models whose gain over the best trivial rule is known,
the paired statistics, and the balance of the demo set (issue 26): no trivial rule beats chance by
more than 0.05 on any item type."""

import itertools
import random
from types import SimpleNamespace

import numpy as np
import pytest

from llmpipe.config.sft import DemoInstructions
from llmpipe.data.playqa import balanced, items_of_play, normalize, passage_text
from llmpipe.evals.trivial import RULES, Case, baselines, case_of, chance, check_of, paired_gain, sign_test_p
from llmpipe.stages.chat_eval import baseline_metrics

PASSAGE2 = [("Ham", "To be, or not to be"), ("Hor", "That is the question")]
PASSAGE4 = [("Ham", "line one of four"), ("Hor", "line two of four"), ("Ham", "line three of four"),
            ("Hor", "line four of four")]


def _conv(task: str, answer: str, passage) -> dict:
    return {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": answer}],
            "task": task, "passage": [list(r) for r in passage]}


def planted_set():
    """100 held-out items whose best rule per type is known by construction, with `rule_right` per item:
    count, majority "2" right on 20 of 40; speaker, first_speaker right on 30 of 40; next, last_line right
    on 10 of 20: the best baseline is right on 60 of 100 items."""
    val, rule_right = [], []
    for k in range(40):
        answer = "2" if k < 20 else ("1" if k < 30 else "3")
        val.append(_conv("count", answer, PASSAGE2))
        rule_right.append(answer == "2")
    for k in range(40):
        val.append(_conv("speaker", "Ham" if k < 30 else "Hor", PASSAGE2))
        rule_right.append(k < 30)
    for k in range(20):
        val.append(_conv("next", PASSAGE4[3][1] if k < 10 else PASSAGE4[1][1], PASSAGE4))
        rule_right.append(k < 10)
    order = random.Random(0).sample(range(100), 100)  # types interleaved, as in a real set
    train = [_conv("count", a, PASSAGE2) for a in "2223311"] + [_conv("speaker", "Ophelia", PASSAGE2)]
    return [val[i] for i in order], train, [rule_right[i] for i in order]


def test_the_best_rule_per_type_is_found_and_combined_over_types():
    val, train, rule_right = planted_set()
    base = baselines([_case(c) for c in val], [_case(c) for c in train], seed=0)
    assert base.best_rule == {"count": "majority", "speaker": "first_speaker", "next": "last_line"}
    assert base.best_right == rule_right and base.best_acc == 0.6
    assert base.acc["speaker"]["majority"] == 0.0  # train's majority "Ophelia" is in no passage


def test_a_model_that_always_gives_the_majority_answer_gains_exactly_nothing():
    val, train, _ = planted_set()
    count = [c for c in val if c["task"] == "count"] + [_conv("files", "Hail.", []) for _ in range(10)]
    train = train + [_conv("files", "Hail.", [])]
    majority = {"count": "2", "files": "Hail."}
    right = [normalize(majority[c["task"]]) == normalize(c["messages"][-1]["content"]) for c in count]
    m, base, gain = baseline_metrics(count, train, right)
    assert m["gain_over_best_baseline"] == 0.0 and m["gain_p_value"] == 1.0
    assert m["gain_ci_low"] == 0.0 == m["gain_ci_high"]
    assert m["best_baseline_rule_count"] == "majority" and m["best_baseline_count"] == m["acc_count"] == 0.5
    assert m["best_baseline_acc"] == m["majority_acc"] == (20 + 10) / 50
    assert m["min_type_gain"] == 0.0 and m["chance_count"] == round(1 / 3, 4)
    # per type too: no gain, no evidence of one
    for task in ("count", "files"):
        assert m[f"gain_{task}"] == 0.0 and m[f"gain_p_value_{task}"] == 1.0
        assert m[f"gain_ci_low_{task}"] == 0.0 == m[f"gain_ci_high_{task}"]


def test_a_model_right_on_half_the_items_shows_its_true_gain():
    val, train, rule_right = planted_set()
    # right (a copy of the answer) on the even items, the baseline's answer on the odd ones
    right = [k % 2 == 0 or rule_right[k] for k in range(100)]
    expected = (50 + sum(rule_right[1::2])) / 100 - 0.6
    m, _, gain = baseline_metrics(val, train, right, seed=3)
    assert m["gain_over_best_baseline"] == pytest.approx(expected, abs=1e-4)
    assert gain.model_only == sum(not r for r in rule_right[0::2]) and gain.baseline_only == 0
    assert gain.p_value == pytest.approx(2 * 0.5 ** gain.model_only)
    diff = np.array(right, dtype=float) - np.array(rule_right, dtype=float)
    se = diff.std() / np.sqrt(len(diff))
    assert gain.ci_low < expected < gain.ci_high
    assert 0.8 * 2 * 1.96 * se < gain.ci_high - gain.ci_low < 1.2 * 2 * 1.96 * se
    for task, gold_share in (("count", 0.5), ("speaker", 0.75), ("next", 0.5)):
        assert m[f"gain_{task}"] == pytest.approx(m[f"acc_{task}"] - gold_share, abs=1e-4)
    assert m["min_type_gain"] == min(m[f"gain_{t}"] for t in ("count", "speaker", "next"))
    cases = [c["task"] for c in val]
    for task in ("count", "speaker", "next"):  # each type's interval holds its own gain, its test is exact
        assert m[f"gain_ci_low_{task}"] <= m[f"gain_{task}"] <= m[f"gain_ci_high_{task}"]
        wins = sum(r and not b for t, r, b in zip(cases, right, rule_right) if t == task)
        losses = sum(b and not r for t, r, b in zip(cases, right, rule_right) if t == task)
        assert m[f"gain_p_value_{task}"] == pytest.approx(sign_test_p(wins, losses), abs=1e-6)
    # a model right everywhere: +0.4, beyond doubt
    m, _, gain = baseline_metrics(val, train, [True] * 100)
    assert m["gain_over_best_baseline"] == 0.4 and gain.ci_low > 0.25 and gain.p_value < 1e-10
    assert 0 < m["gain_p_value"] == pytest.approx(gain.p_value, rel=1e-5)  # significant digits, not a rounded 0


def test_the_sign_test_is_the_exact_binomial_by_enumeration():
    for wins, losses in [(0, 0), (5, 5), (7, 2), (0, 9), (10, 1)]:
        n = wins + losses
        extreme = abs(wins - n / 2)
        outcomes = [sum(bits) for bits in itertools.product((0, 1), repeat=n)]
        by_enumeration = sum(abs(w - n / 2) >= extreme for w in outcomes) / len(outcomes)
        assert sign_test_p(wins, losses) == pytest.approx(by_enumeration)
    with pytest.raises(ValueError):
        paired_gain([True], [True, False])


def _case(c: dict) -> Case:
    return Case(c["task"], c["messages"][-1]["content"], [tuple(r) for r in c["passage"]])


def _expected_random_line(cases: list[Case]) -> float:
    """What the random line rule scores on average (its seeded draw is this plus sampling noise)."""
    return float(np.mean([sum(normalize(line) == normalize(c.answer) for _, line in c.passage) / len(c.passage)
                          for c in cases]))


def assert_no_trivial_rule_beats_chance(train: list, val: list, types=("count", "speaker", "next")):
    """Every rule as measured, and the random line's expected score too, at most chance + 0.05."""
    cases, train_cases = [Case(i.task, i.answer, i.passage) for i in val], [Case(i.task, i.answer, i.passage) for i in train]
    base, odds = baselines(cases, train_cases, seed=0), chance(cases)
    assert set(base.acc) == set(types)
    for task in types:
        for rule in RULES:
            assert base.acc[task][rule] <= odds[task] + 0.05, f"{task}: {rule} scores {base.acc[task][rule]:.3f}, chance {odds[task]:.3f}"
        expected = _expected_random_line([c for c in cases if c.task == task])
        assert expected <= odds[task] + 0.05, f"{task}: a random line scores {expected:.3f} on average, chance {odds[task]:.3f}"
    return base, odds


def test_the_demo_set_from_the_corpus_is_balanced():
    """The real demo corpus (downloaded once per test session), split by work as the split stage does (its
    default grouping: both editions of a play on one side), at the default sizes: 4,000 train items, 300
    held-out ones."""
    from llmpipe.data.sources.demo import DemoSource, iter_demo
    from llmpipe.tokens.split import side_of_groups

    docs = [d for d in iter_demo(DemoSource())]
    held_out = side_of_groups([f"group:{d['group']}" for d in docs], 0.1, 0)
    cfg = DemoInstructions()
    pools = ([], [])
    for doc, val in zip(docs, held_out):
        pools[int(val)].extend(items_of_play(doc["text"], 0, doc["id"], cfg.max_speeches, cfg.max_lines, cfg.max_chars))
    rng = random.Random(0)
    train, val = (list(itertools.islice(balanced(pool, rng), n)) for pool, n in zip(pools, (cfg.train_items, cfg.val_items)))
    assert len(val) == 300 and {t: sum(i.task == t for i in val) for t in ("count", "speaker", "next")} == \
        {"count": 100, "speaker": 100, "next": 100}
    base, odds = assert_no_trivial_rule_beats_chance(train, val)
    assert odds["count"] == pytest.approx(1 / 3)  # counts 1, 2, 3 equally often


def synthetic_play(seed: int, speeches: int = 3000) -> str:
    rng = random.Random(seed)
    cast = ["Ham", "Hor", "Oph", "King", "Queen"]
    out = []
    for k in range(speeches):
        who = rng.choice(cast[:2]) if rng.random() < 0.7 else rng.choice(cast)  # two leads, as in a scene
        lines = [f"speech {k} says line {j} of {rng.randint(1000, 9999)}" for j in range(rng.randint(1, 3))]
        out.append(f"{who}.\n" + "\n".join(lines))
    return "\n\n".join(out)


def assert_balanced_prefixes(items: list, sizes=(60, 150, 301)):
    for n in sizes:
        strata, tasks = {}, {}
        for i in items[:n]:
            strata.setdefault(i.stratum[0], []).append(i.stratum[1])
            tasks[i.task] = tasks.get(i.task, 0) + 1
        for group, cells in strata.items():  # every cell of a group equally often, give or take one
            counts = [cells.count(c) for c in set(cells)]
            assert max(counts) - min(counts) <= 1, (n, group, counts)
        assert max(tasks.values()) - min(tasks.values()) <= 1, (n, tasks)


def test_a_synthetic_play_gives_a_balanced_set_in_every_prefix():
    items = items_of_play(synthetic_play(1), seed=0, doc_id="synthetic")
    train, val = items[: len(items) // 2], list(balanced(items[len(items) // 2 :], random.Random(0)))
    assert_balanced_prefixes(val)
    for n in (60, 150, 301):
        assert_no_trivial_rule_beats_chance(train, val[:n])
    # items passed over (too long for the context) are replaced from their own cell: still balanced
    asked = []
    short = list(itertools.islice(balanced(items, random.Random(0), keep=lambda i: asked.append(i) or len(i.question) < 240), 301))
    assert len(short) == 301 and all(len(i.question) < 240 for i in short)
    assert sum(len(i.question) >= 240 for i in asked) > 50 and len(asked) < len(items) / 2  # asked lazily
    assert_balanced_prefixes(short)


def test_sft_data_keeps_the_demo_items_balanced_and_their_passages(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from llmpipe.config.sft import SftDataParams
    from llmpipe.config.tokens import SplitParams, TokenizerParams
    from llmpipe.stages import sft_data
    from llmpipe.stages import split as split_stage
    from llmpipe.tokens.bpe import train_tokenizer
    from llmpipe.tokens.examples import read_conversations

    plays = [synthetic_play(seed, 1500) for seed in range(4)]
    (tmp_path / "data/dedup").mkdir(parents=True)
    pq.write_table(pa.table({"id": [f"play{k}" for k in range(4)], "text": plays}), tmp_path / "data/dedup/docs.parquet")
    (tmp_path / "data/tokenizer").mkdir(parents=True)
    train_tokenizer(iter(plays), TokenizerParams(vocab_size=400)).save(str(tmp_path / "data/tokenizer/tokenizer.json"))
    demo = {"train_items": 300, "val_items": 90}
    params = SimpleNamespace(sft_data=SftDataParams(block_size=112, demo=demo), split=SplitParams(val_fraction=0.5))
    split_stage.run(params, tmp_path)
    metrics = sft_data.run(params, tmp_path).metrics
    assert metrics["val_contaminated"] == 0
    assert metrics["demo_passed_over_too_long"] > 0  # block_size 112 leaves out the longest passages
    val = read_conversations(tmp_path / "data/sft/val")
    train = read_conversations(tmp_path / "data/sft/train")
    assert (len(train), len(val)) == (300, 90) and {c["source"].split("#")[0] for c in val}.isdisjoint(
        {c["source"].split("#")[0] for c in train})
    items = [SimpleNamespace(task=c["task"], stratum=tuple(c["stratum"])) for c in val]
    assert_balanced_prefixes(items, sizes=(30, 90))
    tags = params.sft_data.demo.speaker_tags
    for c in val:  # the passage kept beside each item is the one in its question (who says: tagged lines)
        tagged = tags and c["task"] == "speaker"
        assert c["messages"][0]["content"].startswith(passage_text([tuple(r) for r in c["passage"]], tagged) + "\n\n")
    for c in val:  # a quoting reply repeats the quote; the record keeps the answer it is scored on
        reply = c["messages"][-1]["content"]
        if c["task"] == "next" or (tags and c["task"] == "speaker"):
            assert c["quoted"] and reply.split("\n")[0] in c["messages"][0]["content"] and reply != c["answer"]
            assert check_of(c)(reply) and not check_of(c)(c["answer"])  # the bare answer lacks the working
        else:
            assert "answer" not in c and check_of(c)(reply)


def test_a_quoted_reply_is_scored_on_what_follows_the_quote_and_the_rules_on_the_answer():
    passage = [("Ham", "To be, or not to be"), ("Hor", "That is the question"), ("Hor", "Whether tis nobler")]
    conversation = {"task": "next", "passage": passage, "answer": "That is the question", "quoted": True,
                    "messages": [{"role": "user", "content": "..."},
                                 {"role": "assistant", "content": "To be, or not to be\nHor: That is the question"}]}
    check = check_of(conversation)
    assert check("To be, or not to be\nHor: That is the question")
    assert check("anything\nthat is the question.")  # the working is not scored, the answer is
    assert not check("That is the question")  # no working line: the answer is what follows it
    assert not check("To be, or not to be\nHam: Whether tis nobler")
    assert not check("To be, or not to be\nThat is the question\nWhether tis nobler")
    assert not check("To be, or not to be\nOsr: That is the question")  # not a character of the passage
    assert case_of(conversation).answer == "That is the question"
    base = baselines([case_of(conversation)], [case_of(conversation)])
    assert base.acc["next"]["majority"] == 1.0  # the rules answer the answer, not the reply
    plain = {**conversation, "messages": conversation["messages"][:1] + [{"role": "assistant", "content": "2"}]}
    del plain["answer"], plain["quoted"]
    assert check_of(plain)("2") and not check_of(plain)("x\n2")


def test_a_tagged_who_says_reply_is_scored_on_its_tag():
    passage = [("Ham", "To be, or not to be"), ("Hor", "That is the question (aside)")]
    conversation = {"task": "speaker", "passage": passage, "answer": "Hor", "quoted": True,
                    "messages": [{"role": "user", "content": "..."},
                                 {"role": "assistant", "content": "That is the question (aside) (Hor)"}]}
    check = check_of(conversation)
    assert check("That is the question (aside) (Hor)") and check("anything (hor) ")  # the working is not scored
    assert not check("Hor")  # no working, no tag
    assert not check("That is the question (aside) (Ham)") and not check("That is the question (aside)")
    assert not check("That is the question (Hor)\nTo be, or not to be (Ham)")  # running on past the tag
    assert case_of(conversation).answer == "Hor"
    assert baselines([case_of(conversation)], [case_of(conversation)]).acc["speaker"]["majority"] == 1.0


def test_a_quoted_record_without_its_answer_is_refused_by_source():
    from llmpipe.util.io import InputError

    broken = {"task": "next", "quoted": True, "source": "demo:play1#4",
              "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a\nb"}]}
    for answer in (None, "", 3):
        record = broken if answer is None else {**broken, "answer": answer}
        with pytest.raises(InputError, match="demo:play1#4"):
            check_of(record)


def test_a_reply_budget_that_would_cut_a_taught_reply_is_refused_by_key():
    from tokenizers import Tokenizer, models, pre_tokenizers

    from llmpipe.tokens.bpe import CHAT_TOKENS, EOT
    from llmpipe.tokens.chat import ChatFormat, check_reply_budget
    from llmpipe.util.io import InputError

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[UNK]", "a", "b"])}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens([EOT, *CHAT_TOKENS])
    fmt = ChatFormat(tok)
    items = [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "a b a"}]}]
    check_reply_budget(items, fmt, 3, "chat_eval.max_new_tokens")  # 3 tokens: whole before its <|end|>
    with pytest.raises(InputError, match=r"chat_eval.max_new_tokens: 2 new tokens .* \(3 tokens\)"):
        check_reply_budget(items, fmt, 2, "chat_eval.max_new_tokens")
