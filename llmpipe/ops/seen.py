"""`llmpipe seen "some text"`: does the text occur in the training documents, and in which ones.

Reads the tasks stage's 13-gram index of the train split (data/evals/index). A text of 13 words or more
is looked up by its n-grams: each training document that shares some is listed with how many of the
text's n-grams it holds (all of them: the text occurs there, up to case and punctuation). A shorter text
has no n-gram; it is searched as a phrase of words in the train split's documents instead.
"""

from __future__ import annotations

import re

from llmpipe.evals.contamination import NgramIndex, words
from llmpipe.stages.registry import stage
from llmpipe.util.io import InputError


def phrase_search(args, ws: list[str]) -> dict[str, int]:
    from llmpipe.tokens.split import iter_split_docs

    pattern = re.compile(r"\b" + r"\W+".join(map(re.escape, ws)) + r"\b")
    hits = {}
    for doc_id, text in iter_split_docs(args.root / stage("tasks").inp("docs"), args.root / stage("tasks").inp("split"),
                                       want_val=False):
        n = len(pattern.findall(text.lower()))
        if n:
            hits[doc_id] = n
    return dict(sorted(hits.items(), key=lambda kv: -kv[1]))


def command(args) -> None:
    folder = args.root / stage("tasks").out("index")
    if not (folder / "meta.json").exists():
        raise InputError(f"missing input {folder} (made by the tasks stage: run `dvc repro tasks`)")
    index = NgramIndex.load(folder)
    ws = words(args.text)
    if not ws:
        raise InputError("seen: the text has no words")
    if len(ws) >= index.n:
        total, docs = index.matches(args.text)
        full = [d for d, c in docs.items() if c == total]
        print(f"{total} {index.n}-grams; {'seen' if full else 'partly seen' if docs else 'not seen'} in the "
              f"training documents ({len(full)} documents hold all of them, {len(docs) - len(full)} some)")
        for doc_id, count in list(docs.items())[: args.limit]:
            print(f"  {doc_id}\t{count}/{total} n-grams")
    else:
        docs = phrase_search(args, ws)
        print(f"{len(ws)} words (fewer than {index.n}: phrase search); "
              f"{'seen' if docs else 'not seen'} in {len(docs)} training documents")
        for doc_id, count in list(docs.items())[: args.limit]:
            print(f"  {doc_id}\t{count} times")
    args.found = bool(docs)
