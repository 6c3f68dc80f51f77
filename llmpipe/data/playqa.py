"""A checkable instruction set made from the plays of the demo corpus itself (there is none to download).

A play is read into speeches (speaker, lines), in both layouts of the corpus: the modern one (the
speaker's name alone on a line, "Hor.", then the speech) and the Folio one ("  Hor. Haile to your
Lordship", continuation lines below). A passage is a few consecutive speeches, each cut to its first
lines, written as "Speaker: line"; each item asks one question whose answer can be read off the
passage and is checked by exact match (see `normalize`):

- speaker: who says a given line of the passage (a name from the passage);
- next: which line follows a given line (a line from the passage);
- count: how many characters speak in the passage (a number).

The answers are copied or counted from the prompt, so a small model can learn the skill rather than
the plays. Items are made per document: the caller splits documents, so held-out items come from
plays the model never finetuned on.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

TASKS = ("speaker", "next", "count")
# "Hor." or "First Witch." alone on a line (modern layout); "  Hor. Haile ..." (Folio layout).
_ALONE = re.compile(r"^([A-Z][A-Za-z'\-]*(?: [A-Z][A-Za-z'\-]*){0,2})\.$")
_FOLIO = re.compile(r"^ {1,6}([A-Z][A-Za-z'\-]*(?: [A-Z][A-Za-z'\-]*){0,2})\. (\S.*)$")
_NOT_NAMES = re.compile(r"^(ACT|Act|SCENE|Scene|Actus|Scena|Scoena|THE|The|Enter|Exit|Exeunt|FINIS|Finis|"
                        r"Epilogue|EPILOGUE|Prologue|PROLOGUE)\b")
_DIRECTION = re.compile(r"^(\[|Enter\b|Exit\b|Exeunt\b|Re-enter\b|Manet\b|Flourish\b|Alarum)")


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


def _passage(window: list[Speech], max_lines: int) -> tuple[str, list[tuple[str, str]]]:
    """The passage text and its lines as (speaker, line)."""
    rows: list[tuple[str, str]] = []
    text = []
    for s in window:
        for k, line in enumerate(s.lines[:max_lines]):
            rows.append((s.speaker, line))
            text.append(f"{s.speaker}: {line}" if k == 0 else line)
    return "\n".join(text), rows


def make_item(window: list[Speech], rng: random.Random, max_lines: int) -> Item | None:
    passage, rows = _passage(window, max_lines)
    counts: dict[str, int] = {}
    for _, line in rows:
        counts[line] = counts.get(line, 0) + 1
    unique = [k for k, (_, line) in enumerate(rows) if counts[line] == 1 and len(line) >= 8]
    task = rng.choice(TASKS)
    head = f"{passage}\n\n"
    if task == "count":
        n = len({s.speaker for s in window})
        return Item(task, head + "How many characters speak?", str(n))
    if task == "next":
        unique = [k for k in unique if k + 1 < len(rows)]
        if not unique:
            return None
        k = rng.choice(unique)
        return Item(task, head + f'Which line follows "{rows[k][1]}"?', rows[k + 1][1])
    if not unique:
        return None
    k = rng.choice(unique)
    return Item(task, head + f'Who says "{rows[k][1]}"?', rows[k][0])


def items_of_play(text: str, seed: int, doc_id: str, max_speeches: int = 4, max_lines: int = 2,
                  max_chars: int = 400) -> list[Item]:
    """Items from one play: one per window of 2..max_speeches consecutive speeches (windows step by
    two speeches), each passage at most max_chars characters. Deterministic in (seed, doc_id)."""
    rng = random.Random(f"{seed}:{doc_id}")
    play = speeches(text)
    out = []
    for start in range(0, max(len(play) - 1, 0), 2):
        window = play[start : start + rng.randint(2, max_speeches)]
        if len(window) < 2:
            continue
        while len(window) > 2 and len(_passage(window, max_lines)[0]) > max_chars:
            window = window[:-1]
        if len(_passage(window, max_lines)[0]) > max_chars:
            continue
        if (item := make_item(window, rng, max_lines)) is not None:
            out.append(item)
    return out
