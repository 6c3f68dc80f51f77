"""bench/scale.py's corpus: the demo corpus's plays cut into edited, shuffled documents, with exact and
near copies and some HTML pages (the corpus is described in bench/scale.py's docstring)."""

from __future__ import annotations

import html
import random
import time
from pathlib import Path

from llmpipe.data.sources.demo import DemoSource, iter_demo

FILES_PER_SHARD = 256
EXACT_SHARE, NEAR_SHARE, HTML_EVERY = 0.08, 0.08, 12


# --- the corpus ------------------------------------------------------------------------------------

def plays() -> list[tuple[str, str, list[str]]]:
    """(work, title, paragraphs) of every play of the demo corpus (both editions of a play: one work)."""
    return [(d["group"], d["title"], [p for p in d["text"].split("\n\n") if p.strip()])
            for d in iter_demo(DemoSource())]


def edited(paragraphs: list[str], every: int, rng: random.Random, vocab: list[str]) -> list[str]:
    """One word in `every` (on average) replaced by a word of the corpus, paragraph by paragraph."""
    out = []
    for para in paragraphs:
        words = para.split(" ")
        for _ in range(len(words) // every + (rng.random() < (len(words) % every) / every)):
            words[rng.randrange(len(words))] = rng.choice(vocab)
        out.append(" ".join(words))
    return out


def page(title: str, text: str) -> str:
    body = "".join(f"<p>{html.escape(p)}</p>\n" for p in text.split("\n\n"))
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title></head>"
            f"<body><nav><a href=\"/\">Home</a> | <a href=\"/plays\">Plays</a></nav><article><h1>"
            f"{html.escape(title)}</h1>\n{body}</article><footer>Public domain text.</footer></body></html>")


def build_corpus(dest: Path, gb: float, seed: int) -> dict:
    """Write documents under dest/ until gb GB are on disk; returns counts."""
    rng = random.Random(seed)
    source = plays()
    vocab = sorted({w for _, _, paras in source for p in paras for w in p.split() if w.isalpha()})
    target = int(gb * 1e9)
    written, docs, kinds = 0, [], {"unique": 0, "exact": 0, "near": 0, "html": 0}
    t0 = time.perf_counter()
    n = -1
    while written < target:
        n += 1  # the document's number (not len(docs): the pool of recent documents is capped)
        roll = rng.random()
        if docs and roll < EXACT_SHARE:
            work, title, text = docs[rng.randrange(len(docs))]
            kinds["exact"] += 1
        elif docs and roll < EXACT_SHARE + NEAR_SHARE:
            work, title, text = docs[rng.randrange(len(docs))]
            text = "\n\n".join(edited(text.split("\n\n"), rng.randint(100, 400), rng, vocab))
            kinds["near"] += 1
        else:
            work, title, paras = source[rng.randrange(len(source))]
            words_wanted, start = rng.randint(1500, 9000), rng.randrange(len(paras))
            window, count = [], 0
            for p in paras[start:] + paras[:start]:
                window.append(p)
                count += p.count(" ") + 1
                if count >= words_wanted:
                    break
            rng.shuffle(window)
            text = "\n\n".join(edited(window, rng.randint(8, 20), rng, vocab))
            title = f"{title}, variation {n}"
            kinds["unique"] += 1
        docs.append((work, title, text))
        if len(docs) > 4000:  # copies come from the recent documents: memory stays bounded
            docs.pop(rng.randrange(len(docs) - 1))
        folder = dest / f"{n // FILES_PER_SHARD:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{work}--doc{n:07d}"  # the work in the name: split.group keeps a play's variations together
        if n % HTML_EVERY == 0:
            data = page(title, text).encode("utf-8")
            (folder / f"{name}.html").write_bytes(data)
            kinds["html"] += 1
        else:
            data = text.encode("utf-8")
            (folder / f"{name}.txt").write_bytes(data)
        written += len(data)
    return {"files": sum(kinds[k] for k in ("unique", "exact", "near")), "bytes": written, **kinds,
            "seconds": round(time.perf_counter() - t0, 1)}
