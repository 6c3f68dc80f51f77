"""Each quality rule on a document that passes it and one that fails it, at the published defaults."""

import random

import pytest

from llmpipe.config.filter import QualityParams
from llmpipe.data.quality import RULES, DocView, first_failure

P = QualityParams()
rng = random.Random(0)
WORDS = ("the of and to in that have with river market harvest morning letter window garden friend "
         "evening journey quiet summer village story answer promise season mountain").split()


def prose(n_sentences=12):
    out = []
    for _ in range(n_sentences):
        out.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 14))).capitalize() + ".")
    return "\n".join(" ".join(out[i : i + 3]) for i in range(0, len(out), 3))


GOOD = prose()

FAILING = {
    "gopher_word_count": "Too short to be a page.",
    "gopher_mean_word_length": " ".join(["a b c d e of"] * 20),
    "gopher_symbol_ratio": GOOD + " #tag" * 40,
    "gopher_bullet_lines": "\n".join(f"- item {rng.choice(WORDS)} {i} the of and" for i in range(60)),
    "gopher_ellipsis_lines": "\n".join(f"{prose(1)[:-1]}..." for _ in range(20)),
    "gopher_alpha_words": GOOD + " " + " ".join(str(i) for i in range(400)),
    "gopher_stop_words": " ".join(rng.choice(["river", "market", "garden", "window"]) for _ in range(80)),
    "gopher_repetition": "\n".join(["The same line said again and again by the speaker."] * 10 + [GOOD]),
    "c4_lorem_ipsum": GOOD + "\nLorem ipsum dolor sit amet.",
    "c4_curly_bracket": GOOD + "\nfunction f() { return 1; }",
    "c4_boilerplate_lines": GOOD + "\nThis site uses cookies to improve your experience.",
    "fineweb_line_punct": "\n".join(" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(20)),
    "fineweb_short_lines": GOOD + "\n" + "\n".join(f"short {i}." for i in range(40)),
    "fineweb_dup_line_chars": GOOD + ("\nA longer repeated line that appears twice, and adds characters." * 3),
    "fineweb_list_ratio": "\n".join(f"{rng.choice(WORDS)} {rng.choice(WORDS)}." for _ in range(80)),
}


def test_every_rule_has_a_failing_example():
    assert set(FAILING) == set(RULES)


@pytest.mark.parametrize("name", sorted(RULES))
def test_rule_passes_prose_and_fails_its_example(name):
    rule, params = RULES[name], getattr(P, name)
    assert rule(DocView(GOOD), params) is None, name
    assert rule(DocView(FAILING[name]), params) is not None, name


def test_rules_can_be_switched_off_and_tuned():
    text = FAILING["c4_lorem_ipsum"]
    assert first_failure(text, P)[0] == "c4_lorem_ipsum"
    off = QualityParams.model_validate({"c4_lorem_ipsum": {"enabled": False}})
    assert first_failure(text, off) is None
    strict = QualityParams.model_validate({"gopher_word_count": {"min_words": 10_000}})
    assert first_failure(GOOD, strict)[0] == "gopher_word_count"


def test_one_split_shared_by_all_rules():
    view = DocView(GOOD)
    for name, rule in RULES.items():
        rule(view, getattr(P, name))
    assert "lower_words" in view.__dict__ and "lines" in view.__dict__  # computed once, cached on the view


def naive_dup_ngram_fraction(words, n):
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    covered = [False] * len(words)
    for i, g in enumerate(grams):
        if grams.count(g) > 1:
            covered[i : i + n] = [True] * n
    return sum(len(w) for w, c in zip(words, covered) if c) / sum(len(w) for w in words)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_vectorised_ngram_statistics_match_a_naive_count(seed):
    from llmpipe.data.quality import _dup_ngram_char_fraction, _top_ngram_char_fraction

    r = random.Random(seed)
    words = [r.choice(WORDS[:8]) for _ in range(300)]
    view = DocView(" ".join(words))
    for n in (2, 5, 8):
        assert _dup_ngram_char_fraction(view, n) == pytest.approx(naive_dup_ngram_fraction(words, n))
    grams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    top = max(set(grams), key=lambda g: (grams.count(g), sum(map(len, g))))
    expected = grams.count(top) * sum(map(len, top)) / sum(map(len, words))
    assert _top_ngram_char_fraction(view, 3) == pytest.approx(expected)
