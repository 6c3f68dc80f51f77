"""`/v1/trace`: the spans of a text found verbatim in the training documents (llmpipe/tokens/trace.py),
for API clients and for the web chat, which marks the traced spans of each reply. Tracing runs in a
worker thread: a long text never stalls the event loop's other clients."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI, Request

import llmpipe.ops.serve.protocol as p
from llmpipe.tokens.trace import Tracer

MAX_TRACE_CHARS = 100_000


def add_trace_route(app: FastAPI, tracer: Tracer | None, missing: str, read_body) -> None:
    """POST /v1/trace {"text": ..., "min_tokens"?: int} -> {"spans": [...], ...}. Without an index the
    route answers 503 naming the stage that makes it."""

    @app.post("/v1/trace")
    async def trace(request: Request):
        body = await read_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("text"), str):
            raise p.ServeError(400, "the body must be a JSON object with a string field 'text'", param="text")
        if len(body["text"]) > MAX_TRACE_CHARS:
            raise p.ServeError(400, f"'text' is over {MAX_TRACE_CHARS} characters", param="text")
        min_tokens = body.get("min_tokens")
        if min_tokens is not None and (not isinstance(min_tokens, int) or isinstance(min_tokens, bool)
                                       or min_tokens < 1):
            raise p.ServeError(400, "'min_tokens' must be a positive integer", param="min_tokens")
        if tracer is None:
            raise p.ServeError(503, missing, type_="server_error", code="no_trace_index")
        return await asyncio.to_thread(tracer.trace, body["text"], min_tokens)
