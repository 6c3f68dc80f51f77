"""An Alpaca-shaped instruction file for tests, made on the spot (no data in git, no network).

Shaped like the files popular tutorials ship (alpaca_data.json and its kin): one JSON array, indented,
of records {"instruction", "input", "output"}; about half of the records have an input, the rest an
empty string; instructions of a few words to a paragraph; answers from one word to several hundred
(some longer than a small model's context); text in several scripts with accents, emoji, quotes,
newlines, lists, code blocks and numbers; a few records carry keys that the reader ignores ("text",
"category"). Seeded: the same seed writes the same bytes.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = ("the model data answer question time people water light city river music history science energy "
         "garden recipe travel market language story school health computer network planet ocean forest "
         "coffee winter summer friend family letter number system design problem idea method result").split()
UNICODE = ["café", "naïve", "Zürich", "São Paulo", "東京", "北京大学", "Ελληνικά", "Москва", "مرحبا", "שלום",
           "हिन्दी", "😀", "🚀", "✓", "∑ x²", "€12.50", "“quoted”", "—", "…", "Straße", "façade", "niño"]
ASKS = ["Give three tips for {t}.", "Explain {t} in simple terms.", "Write a short poem about {t}.",
        "What is the capital of {u}?", "List five facts about {t}.", "Describe a typical day of a {t} expert.",
        "Summarize the following text.", "Translate the following sentence into French.",
        "Classify the sentiment of this review as positive, negative or neutral.",
        "Rewrite the sentence in the passive voice.", "Extract the names mentioned in the text.",
        "Write a Python function that {c}.", "Solve the equation and show the steps.",
        "Generate a title for this article.", "Correct the grammar of the paragraph below.",
        "Answer the question using the context.", "Why is {t} important?", "Compare {t} and {t2}."]
NEEDS_INPUT = {"Summarize", "Translate", "Classify", "Rewrite", "Extract", "Generate", "Correct", "Answer",
               "Solve"}
CODE_TASKS = ["reverses a string", "counts the vowels in a word", "returns the n-th Fibonacci number",
              "checks whether a number is prime"]


def _sentence(rng: random.Random, n: int) -> str:
    words = [rng.choice(UNICODE) if rng.random() < 0.08 else rng.choice(WORDS) for _ in range(n)]
    return " ".join(words).capitalize() + rng.choice([".", ".", "!", "?"])


def _text(rng: random.Random, words: int) -> str:
    out, left = [], words
    while left > 0:
        n = min(left, rng.randint(4, 18))
        out.append(_sentence(rng, n))
        left -= n
    return " ".join(out)


def _output(rng: random.Random, ask: str) -> str:
    kind = rng.random()
    if ask.startswith("Write a Python"):
        return ("Here is one way:\n\n```python\ndef solve(x):\n    \"\"\"" + _sentence(rng, 6) + "\"\"\"\n"
                "    return x[::-1]\n```\n\n" + _sentence(rng, 8))
    if ask.startswith(("List", "Give three")):
        k = 5 if ask.startswith("List") else 3
        return "\n".join(f"{i}. {_sentence(rng, rng.randint(3, 14))}" for i in range(1, k + 1))
    if ask.startswith("Classify"):
        return rng.choice(["Positive", "Negative", "Neutral"])
    if ask.startswith("What is the capital"):
        return rng.choice(["Paris", "東京 (Tokyo)", "Brasília", "Αθήνα (Athens)"]) + "."
    if kind < 0.15:  # a one-line answer
        return _sentence(rng, rng.randint(1, 6))
    if kind < 0.9:
        return _text(rng, rng.randint(10, 120))
    return "\n\n".join(_text(rng, rng.randint(60, 140)) for _ in range(rng.randint(2, 4)))  # past a small context


def alpaca_records(n: int = 1000, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    records = []
    for i in range(n):
        ask = rng.choice(ASKS).format(t=rng.choice(WORDS), t2=rng.choice(WORDS), u=rng.choice(UNICODE),
                                      c=rng.choice(CODE_TASKS))
        if rng.random() < 0.1:  # a longer, chattier instruction
            ask = f"{_text(rng, rng.randint(15, 40))} {ask}"
        needs = ask.split()[0] in NEEDS_INPUT or rng.random() < 0.1
        record = {"instruction": ask, "input": _text(rng, rng.randint(5, 60)) if needs else "",
                  "output": _output(rng, ask)}
        if i % 97 == 0:
            record["category"] = rng.choice(["open_qa", "brainstorming", "classification"])
        if i % 131 == 0:  # some files carry the prompt already rendered as text; readers ignore it
            record["text"] = f"### Instruction:\n{record['instruction']}\n\n### Response:\n{record['output']}"
        records.append(record)
    return records


def write_alpaca(path: Path, n: int = 1000, seed: int = 0, bom: bool = False) -> list[dict]:
    """Write the records as one indented JSON array (UTF-8, unescaped; with a byte-order mark when `bom`,
    as Windows editors save it); returns them."""
    records = alpaca_records(n, seed)
    text = json.dumps(records, indent=4, ensure_ascii=False)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return records
