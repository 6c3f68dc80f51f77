"""What a stage counts, in one shape that merges across shards: totals by key, and counts by reason in
named groups with a few examples per reason (scrape's skipped inputs, filter's removals per rule).

A shard builds its Tally and returns it (it pickles, for process pools and Dask); the stage merges the
shards' tallies in shard order, so the examples kept are the first ones of the corpus.
"""

from __future__ import annotations

from collections import Counter


class Tally:
    def __init__(self, max_examples: int = 5):
        self.max_examples = max_examples
        self.totals: Counter[str] = Counter()
        self.groups: dict[str, Counter[str]] = {}
        self.examples: dict[str, dict[str, list]] = {}

    def count(self, key: str, n: int = 1) -> None:
        self.totals[key] += n

    def note(self, group: str, reason: str, n: int = 1, example: dict | None = None) -> None:
        """Count `n` under `reason` in `group`, keeping `example` while the reason has fewer than
        max_examples."""
        self.groups.setdefault(group, Counter())[reason] += n
        if example is not None:
            kept = self.examples.setdefault(group, {}).setdefault(reason, [])
            if len(kept) < self.max_examples:
                kept.append(example)

    def group(self, name: str) -> Counter[str]:
        return self.groups.get(name, Counter())

    def merge(self, other: Tally) -> Tally:
        self.totals.update(other.totals)
        for name, counts in other.groups.items():
            self.groups.setdefault(name, Counter()).update(counts)
        for name, by_reason in other.examples.items():
            mine = self.examples.setdefault(name, {})
            for reason, examples in by_reason.items():
                kept = mine.setdefault(reason, [])
                kept.extend(examples[: self.max_examples - len(kept)])
        return self

    @classmethod
    def merged(cls, tallies, max_examples: int = 5) -> Tally:
        total = cls(max_examples)
        for t in tallies:
            total.merge(t)
        return total

    def to_dict(self) -> dict:
        """As plain JSON (a shard's completion record keeps it: llmpipe.util.resume)."""
        return {"max_examples": self.max_examples, "totals": dict(self.totals),
                "groups": {k: dict(v) for k, v in self.groups.items()}, "examples": self.examples}

    @classmethod
    def from_dict(cls, data: dict) -> Tally:
        tally = cls(data["max_examples"])
        tally.totals.update(data["totals"])
        tally.groups = {k: Counter(v) for k, v in data["groups"].items()}
        tally.examples = {k: {r: list(ex) for r, ex in v.items()} for k, v in data["examples"].items()}
        return tally
