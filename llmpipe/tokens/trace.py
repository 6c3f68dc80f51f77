"""Tracing a text into the training data: the spans of it that occur verbatim in the training
documents, each with the documents it occurs in (id, source, location, offset).

A span is maximal: the longest stretch starting at its first token that the training tokens contain,
and not inside a longer such stretch that starts earlier (OLMoTrace's "maximal matching spans").
Only spans of at least `min_tokens` tokens count: shorter ones are common phrases.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
from tokenizers import Tokenizer

from llmpipe.tokens.shards import tokenizer_hash
from llmpipe.tokens.suffix import META_FILE, SuffixIndex
from llmpipe.util.io import InputError, read_json

DOCS_FILE = "docs.parquet"
CONTEXT_TOKENS = 24  # tokens of the document shown on each side of an occurrence


@dataclass
class DocTable:
    """The indexed documents in token order: each one's first token and provenance."""

    starts: np.ndarray
    frame: pd.DataFrame

    @classmethod
    def load(cls, path: Path, made_by: str = "trace-index") -> "DocTable":
        try:
            frame = pd.read_parquet(path)
        except FileNotFoundError:
            raise InputError(f"{path}: missing (re-run the {made_by} stage)") from None
        return cls(frame["start"].to_numpy(np.int64), frame)

    def _provenance(self, row: int) -> dict:
        doc = self.frame.iloc[row]
        return {"id": str(doc["id"]), "source": str(doc["source"]), "location": str(doc["location"]),
                "title": str(doc["title"])}

    def locate(self, position: int) -> dict:
        row = int(np.searchsorted(self.starts, position, side="right")) - 1
        return {**self._provenance(row), "token_offset": int(position - self.starts[row])}

    @cached_property
    def ends(self) -> np.ndarray:
        return self.starts + self.frame["tokens"].to_numpy(np.int64)

    def overlapping(self, lo: int, hi: int) -> list[dict]:
        """The documents that tokens [lo, hi) of the split touch, in order, each with the part covered:
        doc_start, doc_end (token offsets in the document) and row_start (offset from lo)."""
        ends = self.ends
        first = max(int(np.searchsorted(self.starts, lo, side="right")) - 1, 0)
        out = []
        for row in range(first, int(np.searchsorted(self.starts, hi, side="left"))):
            a, b = max(lo, int(self.starts[row])), min(hi, int(ends[row]))
            if a < b:
                start = int(self.starts[row])
                out.append({**self._provenance(row), "doc_start": a - start, "doc_end": b - start, "row_start": a - lo})
        return out


class Tracer:
    """Traces texts against one trace index (data/trace)."""

    def __init__(self, index_dir: Path | str, tokenizer_path: Path | str, min_tokens: int = 8,
                 max_docs: int = 3, max_query_tokens: int = 2048):
        index_dir = Path(index_dir)
        self.index = SuffixIndex.load(index_dir)
        meta = read_json(index_dir / META_FILE)
        want = meta.get("tokenizer_sha256")
        if want and want != tokenizer_hash(tokenizer_path):
            raise InputError(f"{index_dir}: indexed with tokenizer {want[:12]}, not {tokenizer_path}; "
                             "re-run the trace-index stage")
        self.docs = DocTable.load(index_dir / DOCS_FILE)
        self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        self.eot_id = self.tokenizer.token_to_id("<|endoftext|>")
        self.min_tokens, self.max_docs, self.max_query_tokens = min_tokens, max_docs, max_query_tokens

    def match_lengths(self, ids: np.ndarray) -> np.ndarray:
        """Per position, the length of the longest stretch starting there that the index contains.
        A stretch never runs over an end-of-text token (a literal `<|endoftext|>` in the text becomes
        one): across it, a match would join the end of one document to the start of another."""
        barrier = len(ids)
        ends = np.empty(len(ids), dtype=np.int64)
        for i in range(len(ids) - 1, -1, -1):
            if ids[i] == self.eot_id:
                barrier = i
            ends[i] = barrier
        return np.array([self.index.longest_prefix_length(ids[i : min(i + self.max_query_tokens, ends[i])])
                         if ends[i] > i else 0 for i in range(len(ids))], dtype=np.int64)

    def _occurrence(self, position: int, length: int) -> dict:
        doc = self.docs.locate(position)
        lo, hi = max(position - CONTEXT_TOKENS, position - doc["token_offset"]), position + length + CONTEXT_TOKENS
        window = np.asarray(self.index.tokens[lo:hi], dtype=np.int64)
        cut = position - lo
        doc["before"] = self.tokenizer.decode(window[:cut].tolist())
        doc["match"] = self.tokenizer.decode(window[cut : cut + length].tolist())
        doc["after"] = self.tokenizer.decode(window[cut + length :].tolist()).split("<|endoftext|>")[0]
        return doc

    def trace(self, text: str, min_tokens: int | None = None) -> dict:
        """{"text", "tokens", "spans": [{start, end (characters of text), text, tokens, count, docs}]}."""
        min_tokens = self.min_tokens if min_tokens is None else min_tokens
        enc = self.tokenizer.encode(text, add_special_tokens=False)
        ids = np.array(enc.ids, dtype=self.index.tokens.dtype)
        lengths = self.match_lengths(ids)
        spans, reach = [], 0
        for i, length in enumerate(lengths.tolist()):
            end = i + length
            if length < min_tokens or end <= reach:
                continue
            reach = end
            lo, hi = self.index.find(ids[i:end])
            start_char, end_char = enc.offsets[i][0], enc.offsets[end - 1][1]
            spans.append({
                "start": start_char, "end": end_char, "text": text[start_char:end_char],
                "token_start": i, "tokens": length, "count": hi - lo,
                "docs": [self._occurrence(int(p), length) for p in self.index.positions(lo, hi, self.max_docs)],
            })
        return {"text": text, "tokens": len(ids), "min_tokens": min_tokens, "spans": spans}


def coverage(result: dict) -> float:
    """The fraction of a traced text's characters inside some span."""
    covered = np.zeros(len(result["text"]), dtype=bool)
    for s in result["spans"]:
        covered[s["start"] : s["end"]] = True
    return float(covered.mean()) if len(covered) else 0.0
