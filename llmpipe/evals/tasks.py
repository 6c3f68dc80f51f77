"""Benchmark items: one record shape for every task, the documented JSONL shapes users bring, and the
fixed choice of items and few-shot examples.

An item is a list of (context, continuation) pairs, one per choice, and the index of the right one:
- multiple choice (HellaSwag, ARC, PIQA ...): one context, one continuation per choice;
- schema (Winograd-style): one context per choice, one shared continuation;
- language modeling: one pair; right when greedy decoding reproduces the continuation exactly.
The JSONL shapes follow the ICL task files of DCLM and llm-foundry, which the CORE score uses:

    {"query": "The sky is", "choices": ["blue", "green"], "gold": 0}                   # multiple_choice
    {"context_options": ["Ann thanked Bo because Ann", "... Bo"], "continuation": "was kind.", "gold": 1}
    {"context": "To be, or not to", "continuation": "be"}                               # language_modeling

A choice or continuation is joined to its context with the task's delimiter (a space by default), as
lm-eval's target_delimiter does.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from llmpipe.util.io import InputError, atomic_path

KINDS = ("multiple_choice", "schema", "language_modeling")


@dataclass
class Item:
    task: str
    id: str
    kind: str  # one of KINDS
    contexts: list[str]  # one for multiple_choice and language_modeling, one per choice for schema
    continuations: list[str]  # one per choice for multiple_choice, one otherwise
    gold: int = 0
    delimiter: str = " "  # joins a choice to its context; not counted in acc_norm's length

    def pairs(self) -> list[tuple[str, str]]:
        """(context, continuation) per choice."""
        if self.kind == "schema":
            return [(c, self.continuations[0]) for c in self.contexts]
        return [(self.contexts[0], c) for c in self.continuations]

    @property
    def n_choices(self) -> int:
        return len(self.pairs())

    def text(self) -> str:
        """The item's text with its right answer (what the contamination check looks for)."""
        ctx, cont = self.pairs()[self.gold]
        return ctx + cont

    def choice_chars(self) -> list[int]:
        """Characters of each choice's continuation without the delimiter: lm-eval's acc_norm divides
        the log-likelihood by the length of the choice string."""
        return [len(c) - (len(self.delimiter) if c.startswith(self.delimiter) else 0) for _, c in self.pairs()]


def _need(rec: dict, key: str, kind: type, where: str):
    if key not in rec:
        raise InputError(f"{where}: missing field {key!r}")
    value = rec[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise InputError(f"{where}: field {key!r} must be {kind.__name__}, got {type(value).__name__}")
    return value


def _strings(rec: dict, key: str, where: str) -> list[str]:
    values = _need(rec, key, list, where)
    if len(values) < 2 or not all(isinstance(v, str) for v in values):
        raise InputError(f"{where}: field {key!r} must be a list of at least 2 strings")
    return values


def parse_record(rec, kind: str, task: str, index: int, where: str, delimiter: str = " ") -> Item:
    """One JSONL record of a user task as an Item; InputError naming `where` (file:line) when invalid."""
    if not isinstance(rec, dict):
        raise InputError(f"{where}: a record must be a JSON object, got {type(rec).__name__}")
    if kind == "multiple_choice":
        query, choices = _need(rec, "query", str, where), _strings(rec, "choices", where)
        item = Item(task, str(index), kind, [query], [delimiter + c for c in choices], _need(rec, "gold", int, where), delimiter)
    elif kind == "schema":
        options = _strings(rec, "context_options", where)
        item = Item(task, str(index), kind, options, [delimiter + _need(rec, "continuation", str, where)],
                    _need(rec, "gold", int, where), delimiter)
    elif kind == "language_modeling":
        cont = _need(rec, "continuation", str, where)
        if not cont.strip():
            raise InputError(f"{where}: field 'continuation' is empty")
        item = Item(task, str(index), kind, [_need(rec, "context", str, where)], [delimiter + cont], 0, delimiter)
    else:
        raise InputError(f"{where}: unknown task kind {kind!r} (one of {', '.join(KINDS)})")
    if not 0 <= item.gold < item.n_choices:
        raise InputError(f"{where}: answer index gold={item.gold} out of range for {item.n_choices} choices")
    return item


def load_jsonl_task(path: Path, kind: str, task: str, delimiter: str = " ") -> list[Item]:
    """A user task file: one JSON record a line (blank lines allowed). A bad record stops with an error
    naming the file and line: a benchmark scored on a silently shortened task would mislead."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise InputError(f"{path}: task file not found") from None
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    items = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{where}: malformed JSON ({err.msg}, column {err.colno})") from None
        items.append(parse_record(rec, kind, task, len(items), where, delimiter))
    if not items:
        raise InputError(f"{path}: task {task!r} has no items (an empty task cannot be scored)")
    return items


def write_items(path: Path, items: list[Item]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(asdict(i), ensure_ascii=False) + "\n" for i in items), encoding="utf-8")


def read_items(path: Path) -> list[Item]:
    """Items written by write_items (the tasks stage's output)."""
    out = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        try:
            out.append(Item(**json.loads(line)))
        except (json.JSONDecodeError, TypeError) as err:
            raise InputError(f"{path}:{n}: not an item record ({err})") from None
    return out


def choose(items: list[Item], n: int | None, seed: int) -> list[Item]:
    """A fixed subset: n items drawn with the seed (all, in order, when n is None or covers the task)."""
    if n is None or n >= len(items):
        return list(items)
    picked = sorted(random.Random(f"{seed}:{items[0].task}").sample(range(len(items)), n))
    return [items[i] for i in picked]


def with_shots(items: list[Item], pool: list[Item], k: int, seed: int) -> list[Item]:
    """Each item's contexts behind k solved examples from the task's pool (never the item itself), drawn
    with a seed per task and item, each written as context + right continuation, joined by blank lines."""
    if k <= 0:
        return items
    out = []
    for item in items:
        rng = random.Random(f"{seed}:{item.task}:{item.id}")
        others = [p for p in pool if p.id != item.id]
        shots = rng.sample(others, min(k, len(others)))
        prefix = "".join(s.text() + "\n\n" for s in shots)
        out.append(Item(item.task, item.id, item.kind, [prefix + c for c in item.contexts], item.continuations,
                        item.gold, item.delimiter))
    return out
