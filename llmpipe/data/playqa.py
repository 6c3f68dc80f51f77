"""A checkable instruction set made from the plays of the demo corpus itself (there is none to download).

A play is read into speeches (speaker, lines), in both layouts of the corpus: the modern one (the
speaker's name alone on a line, "Hor.", then the speech) and the Folio one ("  Hor. Haile to your
Lordship", continuation lines below). A passage is 1..max_speeches consecutive speeches, each cut to
its first lines, written as "Speaker: line" (continuation lines below, unprefixed; who-says passages
with speaker_tags: "line (Speaker)" on every line); each item asks one
question whose answer can be read off the passage and is checked by exact match (see `normalize`):

- speaker: who says a quoted line of the passage (a name from the passage, 2 or more speak; with
  speaker_tags the reply is the quoted line and its tag);
- next: which line follows a quoted line (a line of the passage; 3 or more lines);
- count: how many characters speak in the passage (a number, 1..max_speeches).

The set is balanced so that no rule that ignores the question beats chance (issue 26): each item
carries a stratum (group, cell) and `balanced` keeps the cells of a group equally many in every
prefix of its order. count: one group, the cell is the answer, so every count is equally likely and a
constant answer scores 1/#counts. speaker: the group is the order of the turns ("ABA": c = 2
characters), the cell the asked character's rank by first appearance, so the first, the last or any
speaker chosen from the turns alone is right 1/c of the time. next: the group is the number of lines L, the cell the answer's position, so the first, last or
any fixed line is right at most 1/(L-1) of the time. Chance is defined alike in llmpipe.evals.trivial.

The answers are copied or counted from the prompt, so a small model can learn the skill rather than
the plays. With quote_first (`reply_of`), the reply to a question that quotes a line first repeats
that line, then gives the answer on the next line: a small model finds a line by its content only by
continuing a copy, and at a plain reply's first token it has nothing to continue (docs/assistant.md).
The answer is what follows the repeat (`answer_in_reply`), as GSM8K scores the number after the
working. A who-says answer sits before its line, where no copy runs on to; with speaker_tags its
question writes every line "line (Speaker)" (`tagged_line`), and its reply is the quoted line so, scored
on the tag. Items are made per document: the caller splits documents, so held-out items come from plays
the model never finetuned on.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

TASKS = ("speaker", "next", "count")
QUOTING = ("next", "speaker")  # the tasks whose reply repeats the quoted line first, with quote_first
# "Hor." or "First Witch." alone on a line (modern layout); "  Hor. Haile ..." (Folio layout).
_ALONE = re.compile(r"^([A-Z][A-Za-z'\-]*(?: [A-Z][A-Za-z'\-]*){0,2})\.$")
_FOLIO = re.compile(r"^ {1,6}([A-Z][A-Za-z'\-]*(?: [A-Z][A-Za-z'\-]*){0,2})\. (\S.*)$")
_NOT_NAMES = re.compile(r"^(ACT|Act|SCENE|Scene|Actus|Scena|Scoena|THE|The|Enter|Exit|Exeunt|FINIS|Finis|"
                        r"Epilogue|EPILOGUE|Prologue|PROLOGUE)\b")
_DIRECTION = re.compile(r"^(\[|Enter\b|Exit\b|Exeunt\b|Re-enter\b|Manet\b|Flourish\b|Alarum)")
_DONE = object()  # the end of a stream
MIN_QUOTED_CHARS = 8  # a quoted line shorter than this ("Ay.") is too often not unique in spirit


@dataclass
class Speech:
    speaker: str
    lines: list[str]


def speeches(text: str) -> list[Speech]:
    """The speeches of a play in order (stage directions left out)."""
    out: list[Speech] = []
    current: Speech | None = None
    for raw in text.splitlines():
        line = raw.rstrip()
        if not line.strip():
            current = None
            continue
        alone, folio = _ALONE.match(line), _FOLIO.match(line)
        if alone and len(line) <= 32 and not _NOT_NAMES.match(line):
            current = Speech(alone.group(1), [])
            out.append(current)
        elif folio and not _NOT_NAMES.match(folio.group(1)):
            current = Speech(folio.group(1), [folio.group(2).strip()])
            out.append(current)
        elif current is not None and not _DIRECTION.match(line.strip()):
            current.lines.append(line.strip())
    return [s for s in out if s.lines]


def normalize(answer: str) -> str:
    """What exact match compares: case folded, whitespace collapsed, trailing punctuation dropped."""
    return " ".join(answer.split()).casefold().rstrip(".,;:!?'\" ")


@dataclass
class Item:
    task: str
    question: str  # the user turn: passage and question
    answer: str
    passage: list[tuple[str, str]] = field(default_factory=list)  # its lines as (speaker, line)
    stratum: tuple[str, int] = ("", 0)  # (group, cell) that `balanced` evens out
    quote_row: int = -1  # the row of the quoted line (speaker, next)
    tagged: bool = False  # the question writes its passage with speaker tags (`tagged_line`)


def _rows(window: list[Speech], max_lines: int) -> list[tuple[str, str]]:
    return [(s.speaker, line) for s in window for line in s.lines[:max_lines]]


def passage_text(rows: list[tuple[str, str]], tagged: bool = False) -> str:
    """"Speaker: line" where a speech starts, its further lines below as they are (a speaker's two
    speeches in a row, a stage direction between them, read as one); tagged: every line followed by
    its speaker (`tagged_line`)."""
    write = tagged_line if tagged else rendered_line
    return "\n".join(write(rows, k) for k in range(len(rows)))


def speakers_in_order(rows: list[tuple[str, str]]) -> list[str]:
    """The passage's characters by first appearance."""
    return list(dict.fromkeys(spk for spk, _ in rows))


def turns(rows: list[tuple[str, str]]) -> str:
    """Who speaks when, as letters by first appearance: "ABA" for Ham, Hor, Ham (one letter a speech)."""
    rank = {name: chr(ord("A") + k) for k, name in enumerate(speakers_in_order(rows))}
    letters = [rank[spk] for spk, _ in rows]
    return "".join(a for k, a in enumerate(letters) if k == 0 or letters[k - 1] != a)


def _quotable(rows: list[tuple[str, str]], k: int) -> bool:
    line = rows[k][1]
    return len(line) >= MIN_QUOTED_CHARS and sum(r[1] == line for r in rows) == 1


def rendered_line(rows: list[tuple[str, str]], k: int) -> str:
    """Line k as `passage_text` writes it: "Speaker: line" where a speech starts."""
    speaker, line = rows[k]
    return f"{speaker}: {line}" if k == 0 or rows[k - 1][0] != speaker else line


def tagged_line(rows: list[tuple[str, str]], k: int) -> str:
    """Line k with its speaker after it, "line (Speaker)": a who-says passage with speaker_tags writes
    every line so, and its reply repeats the quoted line so, which puts the name where a copy of the
    line runs on to (docs/assistant.md: a name before the speech is read by no copy)."""
    speaker, line = rows[k]
    return f"{line} ({speaker})"


def reply_of(item: Item, quote_first: bool) -> str:
    """The assistant's reply to an item: its answer; with quote_first, for a task in QUOTING, the quoted
    line and the answer as the passage writes them: for next, the quoted line, a newline and the line
    it continues with; for speaker, when its passage is tagged, the quoted line with its tag."""
    if not quote_first or item.task not in QUOTING or (item.task == "speaker" and not item.tagged):
        return item.answer
    if item.task == "speaker":
        if not 0 <= item.quote_row < len(item.passage) or item.passage[item.quote_row][0] != item.answer:
            raise ValueError(f"a who-says item whose quote_row {item.quote_row} is not a line of {item.answer!r}")
        return tagged_line(item.passage, item.quote_row)
    pos = item.stratum[1]  # next: the answer's row; the quoted line is the one before it
    if not 1 <= pos < len(item.passage) or item.passage[pos][1] != item.answer:
        raise ValueError(f"a next-line item whose stratum {item.stratum} does not point at its answer {item.answer!r}")
    return f"{item.passage[pos - 1][1]}\n{rendered_line(item.passage, pos)}"


def answer_in_reply(reply: str, quoted: bool, names: list[str] | tuple[str, ...] = (), task: str = "next") -> str:
    """What a reply answers: all of it; for a reply that repeats the quoted line first (quoted), what
    follows its first line, less a leading "Speaker: " of a character in `names` (the passage writes a
    speech's first line so, and a line is right with or without it); for a who-says reply, the tag that
    ends it ("" when there is none: the name is scored only after the working)."""
    if not quoted:
        return reply
    if task == "speaker":  # one line that ends with the tag; a reply running on past it answers nothing
        line = reply.strip().rstrip(".,;:!? ")  # trailing punctuation aside, as `normalize` has it
        return line[line.rindex(" (") + 2 : -1] if line.endswith(")") and " (" in line and "\n" not in line else ""
    rest = reply.partition("\n")[2]
    for name in sorted(names, key=len, reverse=True):
        if rest.startswith(f"{name}: "):
            return rest[len(name) + 2 :]
    return rest


def make_item(rows: list[tuple[str, str]], task: str, rng: random.Random, speaker_tags: bool = False) -> Item | None:
    """The item of `task` on this passage, or None when the passage cannot carry it. The asked cell
    (the character's rank, the answer's position) is drawn uniformly; `balanced` then evens it out.
    speaker_tags: a who-says question writes its passage tagged (`tagged_line`)."""
    head = passage_text(rows, speaker_tags and task == "speaker") + "\n\n"
    names = speakers_in_order(rows)
    if task == "count":
        return Item(task, head + "How many characters speak?", str(len(names)), rows, ("count", len(names)))
    if task == "speaker":
        if len(names) < 2:
            return None
        rank = rng.randrange(len(names))
        lines = [k for k, (spk, _) in enumerate(rows) if spk == names[rank] and _quotable(rows, k)]
        if not lines:
            return None
        k = rng.choice(lines)
        return Item(task, head + f'Who says "{rows[k][1]}"?', names[rank], rows, (f"speaker:{turns(rows)}", rank),
                    k, speaker_tags)
    if len(rows) < 3:  # next: with two lines the answer is simply the other one
        return None
    pos = rng.randrange(1, len(rows))  # the answer's index; the quoted line is the one before it
    if not _quotable(rows, pos - 1):
        return None
    return Item(task, head + f'Which line follows "{rows[pos - 1][1]}"?', rows[pos][1], rows,
                (f"next:{len(rows)}", pos), pos - 1)


def items_of_play(text: str, seed: int, doc_id: str, max_speeches: int = 3, max_lines: int = 2,
                  max_chars: int = 320, speaker_tags: bool = False) -> list[Item]:
    """Candidate items of one play: a window of 1..max_speeches speeches at every speech (speeches
    dropped from its end until the passage has at most max_chars characters), one task each, taken in
    turn. Unbalanced: pass the pooled candidates through `balanced`. Deterministic in (seed, doc_id)."""
    rng = random.Random(f"{seed}:{doc_id}")
    play = speeches(text)
    out = []
    for start in range(len(play)):
        window = play[start : start + rng.randint(1, max_speeches)]
        rows = _rows(window, max_lines)
        while len(window) > 1 and len(passage_text(rows)) > max_chars:
            window = window[:-1]
            rows = _rows(window, max_lines)
        if len(passage_text(rows)) > max_chars:
            continue
        if (item := make_item(rows, TASKS[start % len(TASKS)], rng, speaker_tags)) is not None:
            out.append(item)
    return out


def balanced(items: list, rng: random.Random, key=lambda x: x, keep=lambda x: True) -> Iterator:
    """The items in an order whose every prefix is balanced, lazily: each group yields rounds of one
    item per cell (the next that `keep` accepts: `keep` is asked only of the items reached), and ends
    when a cell has no item left, so a prefix holds each cell of a group as often as the others, give
    or take one; the groups of a task, and the tasks, take turns item by item. A group missing a cell
    its shape implies (turns "ABC" lacking a rank) is left out. `key` maps an element to its Item
    (elements may carry more, e.g. their source)."""
    cells: dict[str, dict[str, dict[int, list]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for x in items:
        group, cell = key(x).stratum
        cells[key(x).task][group][cell].append(x)
    per_task = []
    for name in sorted(cells):
        groups = []
        for group, by_cell in sorted(cells[name].items()):
            expected = _expected_cells(group)
            if expected is not None and set(by_cell) != expected:
                continue
            for cell in sorted(by_cell):
                rng.shuffle(by_cell[cell])
            groups.append(_rounds([iter(by_cell[c]) for c in sorted(by_cell)], keep))
        per_task.append(_in_turn(groups))
    return _in_turn(per_task)


def _rounds(queues: list[Iterator], keep) -> Iterator:
    """One accepted item of each queue per round, until a queue has none left (its round is dropped)."""
    while True:
        batch = [next(filter(keep, q), _DONE) for q in queues]
        if any(x is _DONE for x in batch):
            return
        yield from batch


def _expected_cells(group: str) -> set[int] | None:
    """The cells a group must have: ranks 0..c-1 of the c characters of turns "ABA", positions 1..L-1
    of L lines; count's cells are the counts that occur."""
    kind, _, shape = group.partition(":")
    if kind == "speaker":
        return set(range(len(set(shape))))
    if kind == "next":
        return set(range(1, int(shape)))
    return None


def _in_turn(streams: list[Iterator]) -> Iterator:
    """One item from each stream in turn; a stream that ends drops out of the turn."""
    live = list(streams)
    while live:
        still = []
        for stream in live:
            x = next(stream, _DONE)
            if x is not _DONE:
                still.append(stream)
                yield x
        live = still
