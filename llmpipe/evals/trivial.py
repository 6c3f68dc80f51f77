"""Trivial baselines for the held-out chat items: what a rule that never reads the question scores, and
whether a model beats the best such rule, item by item.

A figure without its baseline is not a result: a model that answers "2" to every count question
scores what the constant "2" scores. For each item type the rules are

- majority: the most common gold answer of that type among the TRAIN items (a constant);
- first_speaker / last_speaker: the speaker of the passage's first / last line;
- first_line / last_line: the passage's first / last line;
- random_line: one of the passage's lines, drawn with a fixed seed.

(No random speaker: on a balanced set its expected score is the first speaker's, and its draw would
only add noise, about 0.05 at 100 items, to the best rule's score.) The best rule of a type is chosen
on the held-out items themselves (optimistic for the baseline, so
a gain over it is conservative); `best_right` applies each type's best rule to that type's items.
The model's gain over it comes with a paired bootstrap interval over items and an exact sign test on
the items where the two disagree (McNemar's test).

Chance per type (the property the demo set is built to have, llmpipe.data.playqa): count, one over
the number of distinct gold answers (every count is equally likely); speaker, the mean over items of
one over the passage's number of characters; next, the mean of one over the passage's lines less the
quoted one. Items without a passage (instruction files) have no chance figure.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from llmpipe.data.playqa import answer_in_reply, normalize, speakers_in_order
from llmpipe.util.io import InputError

RULES = ("majority", "first_speaker", "last_speaker", "first_line", "last_line", "random_line")
FILES = "files"  # the type of conversations that are not demo items


@dataclass
class Case:
    task: str
    answer: str
    passage: list[tuple[str, str]] = field(default_factory=list)  # (speaker, line); empty for files


def case_of(conversation: dict) -> Case:
    """A held-out conversation (sft-data's conversations.jsonl record) as a case: its answer, which is its
    last reply unless the record says otherwise (a reply that repeats the quoted line first)."""
    return Case(conversation.get("task") or FILES, answer_of(conversation),
                [tuple(r) for r in conversation.get("passage") or []])


def answer_of(conversation: dict) -> str:
    """The answer a reply is scored against: the record's `answer` where its reply shows working (a quote
    first), else its last reply. A quoted record without a text answer is bad input, not a wrong reply."""
    if "answer" not in conversation and not conversation.get("quoted"):
        return conversation["messages"][-1]["content"]
    answer = conversation.get("answer")
    if not isinstance(answer, str) or not answer.strip():
        raise InputError(f"{conversation.get('source', 'a conversation')}: `quoted` reply without a text `answer` "
                         f"to score it against (got {answer!r}); rebuild it with `llmpipe sft-data`")
    return answer


@dataclass(frozen=True)
class Check:
    """Exact match of a reply against a conversation's answer, after the working a reply is taught to
    show (llmpipe.data.playqa.answer_in_reply): what chat-eval scores and rl rewards alike."""

    answer: str
    quoted: bool = False  # the reply repeats the quoted line first: its answer is what follows
    names: tuple[str, ...] = ()  # the passage's characters (a "Speaker: " before a line is allowed)
    task: str = "next"  # what the working leads to: the line after the quote, or (speaker) its tag

    def answer_in(self, reply: str) -> str:
        """The part of a reply that is scored (all of it unless the reply quotes first)."""
        return answer_in_reply(reply, self.quoted, self.names, self.task)

    def __call__(self, reply: str | None) -> bool:
        return reply is not None and is_right(self.answer_in(reply), self.answer)


def check_of(conversation: dict) -> Check:
    return Check(answer_of(conversation), bool(conversation.get("quoted")),
                 tuple(speakers_in_order([tuple(r) for r in conversation.get("passage") or []])),
                 conversation.get("task") or FILES)


def is_checkable(conversation: dict) -> bool:
    """Whether exact match can score the conversation's replies: the demo's typed items (their answers are
    read off the passage), not the free text of instruction files."""
    return (conversation.get("task") or FILES) != FILES and bool(answer_of(conversation).strip())


def is_right(reply: str | None, answer: str) -> bool:
    return reply is not None and normalize(reply) == normalize(answer)


def majority_answers(train: list[Case]) -> dict[str, str]:
    """The most common normalized gold answer per type (ties: the smallest string, so the order of the
    items does not matter)."""
    counts: dict[str, Counter] = {}
    for c in train:
        counts.setdefault(c.task, Counter())[normalize(c.answer)] += 1
    return {task: min(n.items(), key=lambda kv: (-kv[1], kv[0]))[0] for task, n in counts.items()}


def rule_answers(cases: list[Case], train: list[Case], seed: int) -> dict[str, list[str | None]]:
    """Each rule's answer to each case (None where the rule has nothing to say: no passage)."""
    majority = majority_answers(train)
    out: dict[str, list[str | None]] = {"majority": [majority.get(c.task) for c in cases]}
    pick = random.Random(f"{seed}:random_line")
    for rule in RULES[1:]:
        out[rule] = []
    for c in cases:
        lines = [line for _, line in c.passage]
        out["first_speaker"].append(c.passage[0][0] if c.passage else None)
        out["last_speaker"].append(c.passage[-1][0] if c.passage else None)
        out["first_line"].append(lines[0] if lines else None)
        out["last_line"].append(lines[-1] if lines else None)
        out["random_line"].append(pick.choice(lines) if lines else None)
    return out


@dataclass
class Baselines:
    acc: dict[str, dict[str, float]]  # type -> rule -> accuracy on that type's items
    best_rule: dict[str, str]  # type -> its best rule (the first in RULES among equals)
    best_right: list[bool]  # per case: its type's best rule is right
    best_answers: list[str | None]  # per case: its type's best rule's answer
    majority_right: list[bool]

    @property
    def best_acc(self) -> float:
        return sum(self.best_right) / len(self.best_right) if self.best_right else 0.0

    def best_acc_of(self, task: str) -> float:
        return self.acc[task][self.best_rule[task]]


def baselines(cases: list[Case], train: list[Case], seed: int = 0) -> Baselines:
    answers = rule_answers(cases, train, seed)
    right = {rule: [is_right(a, c.answer) for a, c in zip(answers[rule], cases)] for rule in RULES}
    acc: dict[str, dict[str, float]] = {}
    for task in sorted({c.task for c in cases}):
        idx = [i for i, c in enumerate(cases) if c.task == task]
        acc[task] = {rule: sum(right[rule][i] for i in idx) / len(idx) for rule in RULES}
    best = {task: max(RULES, key=lambda r, t=task: (acc[t][r], -RULES.index(r))) for task in acc}
    return Baselines(acc, best, [right[best[c.task]][i] for i, c in enumerate(cases)],
                     [answers[best[c.task]][i] for i, c in enumerate(cases)], right["majority"])


def chance(cases: list[Case]) -> dict[str, float]:
    """Chance per demo type (see the module's docstring for how each is counted)."""
    by_task: dict[str, list[Case]] = {}
    for c in cases:
        by_task.setdefault(c.task, []).append(c)
    out = {}
    if "count" in by_task:
        out["count"] = 1.0 / len({normalize(c.answer) for c in by_task["count"]})
    if "speaker" in by_task:
        out["speaker"] = float(np.mean([1.0 / len(speakers_in_order(c.passage)) for c in by_task["speaker"]]))
    if "next" in by_task:
        out["next"] = float(np.mean([1.0 / (len(c.passage) - 1) for c in by_task["next"]]))
    return out


@dataclass
class Gain:
    gain: float  # model accuracy minus baseline accuracy
    ci_low: float  # 95% paired bootstrap interval
    ci_high: float
    p_value: float  # exact two-sided sign test on the discordant items
    model_only: int  # items the model gets right and the baseline wrong
    baseline_only: int


def sign_test_p(wins: int, losses: int) -> float:
    """Exact two-sided binomial test of wins vs losses at p = 1/2 (McNemar's exact test); 1 with no
    discordant item."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(wins, losses) + 1))
    return min(1.0, 2 * tail / 2**n)


def paired_gain(model_right: list[bool], base_right: list[bool], seed: int = 0, resamples: int = 2000) -> Gain:
    """The model's gain over the baseline on the same items, with its interval and p-value."""
    if len(model_right) != len(base_right) or not model_right:
        raise ValueError(f"paired_gain: {len(model_right)} model results for {len(base_right)} baseline results")
    diff = np.asarray(model_right, dtype=np.int8) - np.asarray(base_right, dtype=np.int8)
    rng = np.random.default_rng(seed)
    chunk = max(1, 2**22 // len(diff))  # resamples drawn at once: memory stays bounded for any number of items
    means = np.concatenate([diff[rng.integers(0, len(diff), size=(min(chunk, resamples - s), len(diff)))].mean(axis=1)
                            for s in range(0, resamples, chunk)])
    low, high = np.percentile(means, [2.5, 97.5])
    wins, losses = int((diff > 0).sum()), int((diff < 0).sum())
    return Gain(float(diff.mean()), float(low), float(high), sign_test_p(wins, losses), wins, losses)
