"""`llmpipe trace "text"`: the spans of a text that occur verbatim in the training documents, with the
documents they occur in (the trace-index stage's suffix array; llmpipe/tokens/trace.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from llmpipe.config.sections import load_sections
from llmpipe.stages.registry import stage
from llmpipe.tokens.trace import Tracer


def make_tracer(root: Path, params_path: Path, min_tokens: int | None = None) -> Tracer:
    cfg = load_sections(params_path, ["trace"]).trace
    spec = stage("trace-index")
    return Tracer(root / spec.out("index"), root / spec.inp("tokenizer"),
                  min_tokens=min_tokens or cfg.min_tokens, max_docs=cfg.max_docs)


def format_trace(result: dict) -> str:
    if not result["spans"]:
        return f"no span of {result['min_tokens']}+ tokens occurs verbatim in the training documents"
    lines = []
    for s in result["spans"]:
        lines.append(f"[{s['start']}:{s['end']}] {s['tokens']} tokens, {s['count']} occurrence(s): {s['text']!r}")
        for d in s["docs"]:
            lines.append(f"    {d['id']}  {d['source']}  {d['location']}  token {d['token_offset']}")
    return "\n".join(lines)


def command(args) -> None:
    text = sys.stdin.read() if args.text == "-" else args.text
    result = make_tracer(args.root, args.params, args.min_tokens).trace(text)
    print(json.dumps(result, ensure_ascii=False, indent=1) if args.json else format_trace(result))
