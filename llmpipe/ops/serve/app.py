"""The HTTP side: `create_app(engine)` is a FastAPI app with OpenAI's `/v1/chat/completions`,
`/v1/completions` (both also streamed as server-sent events), `/v1/models`, `/health`, and the web chat
at `/`. Every refusal is OpenAI's error JSON; nothing a client sends can crash the server."""

from __future__ import annotations

import html
import json
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

import llmpipe.ops.serve.protocol as p
from llmpipe.ops.serve.engine import Engine, Job
from llmpipe.ops.serve.tracing import add_trace_route

CHAT_PAGE = Path(__file__).with_name("chat.html")


async def read_json(request: Request, max_body_bytes: int):
    """The body as JSON, read no further than the size limit."""
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
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise p.ServeError(400, f"the request body is not valid JSON: {err}") from None


def create_app(engine: Engine, max_body_bytes: int = 1_000_000, tracer=None,
               trace_missing: str = "this server has no trace index") -> FastAPI:
    app = FastAPI(title="llmpipe serve", docs_url=None, redoc_url=None, openapi_url=None)
    add_trace_route(app, tracer, trace_missing, lambda request: read_json(request, max_body_bytes))
    page = CHAT_PAGE.read_text().replace("{{MODEL_ID}}", html.escape(engine.model_id))

    @app.exception_handler(p.ServeError)
    async def refused(_request, err: p.ServeError):
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, err: StarletteHTTPException):  # unknown paths and methods, in OpenAI's shape
        return JSONResponse(p.error_body(str(err.detail)), status_code=err.status_code)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": engine.model_id, "waiting": engine.waiting, "running": engine.running,
                "served": engine.served}

    @app.get("/", response_class=HTMLResponse)
    async def chat_page():
        return page

    @app.get("/v1/models")
    async def models():
        return p.models_list(engine.model_id, engine.created)

    @app.get("/v1/models/{model_id}")
    async def model(model_id: str):
        check_model(model_id)
        return p.model_card(engine.model_id, engine.created)

    def check_model(name: str) -> None:
        if name != engine.model_id:
            raise p.ServeError(404, f"the model {name!r} does not exist; this server serves {engine.model_id!r}",
                               param="model", code="model_not_found")

    def job_for(req, prompt: str | list[int], param: str, stops: list[str], max_tokens: int | None, mt_param: str,
                stop_ids: frozenset = frozenset()) -> Job:
        check_model(req.model)
        if (req.n or 1) != 1:
            raise p.ServeError(400, f"n={req.n}: this server makes one choice per request (n=1)", param="n")
        return Job(prompt_ids=engine.encode(prompt, param),
                   max_tokens=engine.check_max_tokens(max_tokens, mt_param),
                   temperature=1.0 if req.temperature is None else req.temperature,
                   top_p=1.0 if req.top_p is None else req.top_p, seed=req.seed, stops=stops, stop_ids=stop_ids)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        req = p.parse(p.ChatRequest, await read_json(request, max_body_bytes))
        messages = [m.model_dump() for m in req.messages]
        limit, name = ((req.max_completion_tokens, "max_completion_tokens") if req.max_completion_tokens
                       else (req.max_tokens, "max_tokens"))
        template = engine.template  # the chat format, or plain text for a tokenizer without its markers
        job = job_for(req, template.prompt_ids(messages), "messages", template.stops + req.stops(), limit, name,
                      template.stop_ids)
        rid = p.new_id("chatcmpl")
        engine.submit(job)
        if req.stream:
            first = p.chat_chunk(rid, req.model, {"role": "assistant", "content": ""})
            return sse(job, first, lambda text: p.chat_chunk(rid, req.model, {"content": text}),
                       lambda finish: p.chat_chunk(rid, req.model, {}, finish))
        text, finish, n_out = await collect(job)
        return p.chat_response(rid, req.model, text, finish, p.usage(len(job.prompt_ids), n_out))

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = p.parse(p.CompletionRequest, await read_json(request, max_body_bytes))
        job = job_for(req, req.text(), "prompt", req.stops(), req.max_tokens, "max_tokens")
        rid = p.new_id("cmpl")
        engine.submit(job)
        echo = req.text() if req.echo else ""
        if req.stream:
            first = p.completion_response(rid, req.model, echo, None) if echo else None
            return sse(job, first, lambda text: p.completion_response(rid, req.model, text, None),
                       lambda finish: p.completion_response(rid, req.model, "", finish))
        text, finish, n_out = await collect(job)
        return p.completion_response(rid, req.model, echo + text, finish, p.usage(len(job.prompt_ids), n_out))

    return app


async def collect(job: Job) -> tuple[str, str, int]:
    parts = []
    try:
        while True:
            event = await job.events.get()
            if event[0] == "text":
                parts.append(event[1])
            elif event[0] == "done":
                return "".join(parts), event[1], event[2]
            else:
                raise p.ServeError(500, event[1], type_="server_error")
    finally:
        job.cancelled = True  # a no-op when done; stops the generation when the request was dropped


def sse(job: Job, first: dict | None, chunk, last) -> StreamingResponse:
    """The job's text as OpenAI's stream: `data: {chunk}` events, then `data: [DONE]`."""

    async def events():
        try:
            if first is not None:
                yield f"data: {json.dumps(first)}\n\n"
            while True:
                event = await job.events.get()
                if event[0] == "text":
                    yield f"data: {json.dumps(chunk(event[1]))}\n\n"
                elif event[0] == "done":
                    yield f"data: {json.dumps(last(event[1]))}\n\n"
                    break
                else:  # headers are sent already: the error goes in the stream, as OpenAI does
                    yield f"data: {json.dumps(p.error_body(event[1], 'server_error'))}\n\n"
                    break
            yield "data: [DONE]\n\n"
        finally:
            job.cancelled = True  # the client went away, or the stream ended: free the worker

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
