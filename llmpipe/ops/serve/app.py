"""The HTTP side: `create_app(engine)` is a FastAPI app with OpenAI's `/v1/chat/completions`,
`/v1/completions` (both also streamed as server-sent events), `/v1/models`, `/health`, and the web chat
at `/`. Every refusal is OpenAI's error JSON; nothing a client sends can crash the server.

With an API key every /v1 route wants `Authorization: Bearer <key>` (401 otherwise); `/health` and the
page at `/` stay open (the page holds no secret: its user types the key into it). Parsing and
tokenizing run in a thread, so a 1 MB prompt does not stall other clients' streams; a generation stops
when its client goes away, streamed or not."""

from __future__ import annotations

import asyncio
import hmac
import html
import json
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

import llmpipe.ops.serve.protocol as p
from llmpipe.ops.serve.engine import Engine, Job
from llmpipe.ops.serve.logprobs import chat_logprobs, completion_logprobs
from llmpipe.ops.serve.tracing import add_trace_route

CHAT_PAGE = Path(__file__).with_name("chat.html")


async def read_body(request: Request, max_body_bytes: int) -> bytes:
    """The body, read no further than the size limit."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_body_bytes:
        raise p.ServeError(413, f"the request body is {declared} bytes, above this server's limit of "
                           f"{max_body_bytes} (llmpipe serve --max-body-bytes)")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_body_bytes:
            raise p.ServeError(413, f"the request body is over this server's limit of {max_body_bytes} bytes "
                               "(llmpipe serve --max-body-bytes)")
    return bytes(body)


def decode_json(body: bytes):
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise p.ServeError(400, f"the request body is not valid JSON: {err}") from None


class RequireKey:
    """ASGI middleware: every /v1 request must carry `Authorization: Bearer <key>`, else a 401 in OpenAI's
    shape. Plain ASGI rather than Starlette's BaseHTTPMiddleware, which would sit between a streamed
    response and its client."""

    def __init__(self, app, key: str):
        self.app, self.key = app, key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            given = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, token = given.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
                why = "no API key given" if not given else "the API key is not valid"
                body = p.error_body(f"{why}: send the header `Authorization: Bearer <key>` with this server's key "
                                    "(llmpipe serve --api-key or LLMPIPE_API_KEY)", "invalid_request_error",
                                    code="invalid_api_key")
                response = JSONResponse(body, status_code=401, headers={"WWW-Authenticate": "Bearer"})
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)


def create_app(engine: Engine, max_body_bytes: int = 1_000_000, api_key: str | None = None, tracer=None,
               trace_missing: str = "this server has no trace index") -> FastAPI:
    app = FastAPI(title="llmpipe serve", docs_url=None, redoc_url=None, openapi_url=None)

    async def read_json(request: Request):
        return decode_json(await read_body(request, max_body_bytes))

    add_trace_route(app, tracer, trace_missing, read_json)
    page = (CHAT_PAGE.read_text().replace("{{MODEL_ID}}", html.escape(engine.model_id))
            .replace("{{NEEDS_KEY}}", "true" if api_key else "false"))
    if api_key:
        app.add_middleware(RequireKey, key=api_key)

    @app.exception_handler(p.ServeError)
    async def refused(_request, err: p.ServeError):
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, err: StarletteHTTPException):  # unknown paths and methods, in OpenAI's shape
        return JSONResponse(p.error_body(str(err.detail)), status_code=err.status_code)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": engine.model_id, "waiting": engine.waiting, "running": engine.running,
                "served": engine.served, "generated_tokens": engine.generated_tokens, "abandoned": engine.abandoned,
                "generator_restarts": engine.restarts}

    @app.get("/", response_class=HTMLResponse)
    async def chat_page():
        return page

    @app.get("/v1/models")
    async def models():
        return p.models_list(engine.created)

    @app.get("/v1/models/{model_id}")
    async def model(model_id: str):
        engine.check_model(model_id)
        return p.model_card(model_id, engine.created[model_id])

    def job_for(req, prompt, param: str, stops: list[str], max_tokens: int | None, mt_param: str,
                stop_ids: frozenset = frozenset(), logprobs: int | None = None, chars: int = 0) -> Job:
        """In a worker thread: the prompt's ids (tokenizing a long prompt takes a while)."""
        engine.check_model(req.model)
        if (req.n or 1) != 1:
            raise p.ServeError(400, f"n={req.n}: this server makes one choice per request (n=1)", param="n")
        return Job(prompt_ids=engine.encode(prompt, param, req.model, chars),
                   max_tokens=engine.check_max_tokens(max_tokens, mt_param),
                   temperature=1.0 if req.temperature is None else req.temperature,
                   top_p=1.0 if req.top_p is None else req.top_p, seed=req.seed, stops=stops, stop_ids=stop_ids,
                   model_id=req.model, logprobs=logprobs)

    def chat_job(body: bytes):
        req = p.parse(p.ChatRequest, decode_json(body))
        messages = [m.model_dump() for m in req.messages]
        limit, name = ((req.max_completion_tokens, "max_completion_tokens") if req.max_completion_tokens
                       else (req.max_tokens, "max_tokens"))
        template = engine.template  # the chat format, or plain text for a tokenizer without its markers
        return req, job_for(req, lambda: template.prompt_ids(messages), "messages", template.stops + req.stops(),
                            limit, name, template.stop_ids, req.logprobs_k(), template.chars(messages))

    def completion_job(body: bytes):
        req = p.parse(p.CompletionRequest, decode_json(body))
        return req, job_for(req, req.text(), "prompt", req.stops(), req.max_tokens, "max_tokens", frozenset(),
                            req.logprobs)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        req, job = await asyncio.to_thread(chat_job, await read_body(request, max_body_bytes))
        rid, tb = p.new_id("chatcmpl"), engine.token_bytes
        engine.submit(job)

        def lp(records):
            return chat_logprobs(records, tb) if records is not None else None

        if req.stream:
            extra = {"usage": None} if req.include_usage() else {}
            first = {**p.chat_chunk(rid, req.model, {"role": "assistant", "content": ""}), **extra}
            return sse(request, job, req, first,
                       lambda text, records: {**p.chat_chunk(rid, req.model, {"content": text}, None, lp(records)),
                                              **extra},
                       lambda finish: {**p.chat_chunk(rid, req.model, {}, finish), **extra})
        text, records, finish, n_out = await collect(request, job)
        return p.chat_response(rid, req.model, text, finish, p.usage(len(job.prompt_ids), n_out), lp(records))

    @app.post("/v1/completions")
    async def completions(request: Request):
        req, job = await asyncio.to_thread(completion_job, await read_body(request, max_body_bytes))
        rid, tb = p.new_id("cmpl"), engine.token_bytes
        engine.submit(job)
        echo = req.text() if req.echo else ""
        if req.stream:
            offset = [len(echo)]  # text_offset continues across chunks

            def chunk(text, records):
                logprobs = None
                if records is not None:
                    logprobs = completion_logprobs(records, tb, offset[0])
                    offset[0] += sum(len(t) for t in logprobs["tokens"])
                return p.completion_response(rid, req.model, text, None, logprobs=logprobs)

            first = p.completion_response(rid, req.model, echo, None) if echo else None
            return sse(request, job, req, first, chunk, lambda finish: p.completion_response(rid, req.model, "", finish))
        text, records, finish, n_out = await collect(request, job)
        logprobs = completion_logprobs(records, tb, len(echo)) if records is not None else None
        return p.completion_response(rid, req.model, echo + text, finish, p.usage(len(job.prompt_ids), n_out),
                                     logprobs)

    return app


async def watch_disconnect(request: Request, job: Job, every: float = 0.05) -> None:
    """Cancel the job when its client goes away (uvicorn does not stop a handler for that)."""
    while not job.cancelled:
        if await request.is_disconnected():
            job.cancelled = True
            return
        await asyncio.sleep(every)


async def collect(request: Request, job: Job) -> tuple[str, list | None, str, int]:
    """A whole reply: (text, logprob records or None, finish reason, completion tokens)."""
    parts, records = [], None
    watcher = asyncio.create_task(watch_disconnect(request, job))
    try:
        while True:
            event = await job.events.get()
            if event[0] == "text":
                parts.append(event[1])
                if event[2] is not None:
                    records = (records or []) + event[2]
            elif event[0] == "done":
                return "".join(parts), records, event[1], event[2]
            else:
                raise p.ServeError(500, event[1], type_="server_error")
    finally:
        watcher.cancel()
        job.cancelled = True  # a no-op when done; stops the generation when the request was dropped


def sse(request: Request, job: Job, req, first: dict | None, chunk, last) -> StreamingResponse:
    """The job's text as OpenAI's stream: `data: {chunk}` events, then (stream_options.include_usage) a
    chunk with the usage and no choices, then `data: [DONE]`."""

    async def events():
        watcher = asyncio.create_task(watch_disconnect(request, job))
        try:
            if first is not None:
                yield f"data: {json.dumps(first)}\n\n"
            while True:
                event = await job.events.get()
                if event[0] == "text":
                    yield f"data: {json.dumps(chunk(event[1], event[2]))}\n\n"
                elif event[0] == "done":
                    final = last(event[1])
                    yield f"data: {json.dumps(final)}\n\n"
                    if req.include_usage():
                        yield f"data: {json.dumps(p.usage_chunk(final, p.usage(len(job.prompt_ids), event[2])))}\n\n"
                    break
                else:  # headers are sent already: the error goes in the stream, as OpenAI does
                    yield f"data: {json.dumps(p.error_body(event[1], 'server_error'))}\n\n"
                    break
            yield "data: [DONE]\n\n"
        finally:
            watcher.cancel()
            job.cancelled = True  # the client went away, or the stream ended: free the worker

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
