"""OpenAI's wire format: the request bodies we accept (validated), and the responses, stream chunks
and error bodies we send."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmpipe.ops.serve.template import ROLES


class ServeError(Exception):
    """A request we refuse: the HTTP status and OpenAI's error fields."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool | None = False


class _Common(BaseModel):
    # Fields of OpenAI's API that we do not implement (user, ...) are ignored, as clients send them.
    model_config = ConfigDict(extra="ignore")
    model: str
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    seed: int | None = None
    stop: str | Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=4)] | None = None
    n: Annotated[int, Field(ge=1)] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) and self.stop else list(self.stop or [])

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def check(self) -> None:
        """What one field's type cannot say (OpenAI's answers to the same requests)."""
        if self.stream_options is not None and not self.stream:
            raise ServeError(400, "stream_options is only allowed when stream is true", param="stream_options")


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal[tuple(ROLES)]  # type: ignore[valid-type]
    content: str | list[dict] | None = None


class ChatRequest(_Common):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None  # the newer name of max_tokens
    logprobs: bool | None = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None

    def check(self) -> None:
        super().check()
        if self.top_logprobs is not None and not self.logprobs:
            raise ServeError(400, "top_logprobs needs logprobs: true", param="top_logprobs")

    def logprobs_k(self) -> int | None:
        """None: no log-probabilities; k: each token's and the k most likely."""
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(_Common):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]
    echo: bool | None = False
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None  # the legacy API's: the top k per token (at most 5)

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def check(self) -> None:
        super().check()
        # log-probabilities of the prompt's own tokens (what lm-eval's local-completions asks with
        # echo, logprobs and max_tokens 0) are not computed: say so rather than answer without them
        if self.echo and self.logprobs is not None:
            raise ServeError(400, "echo with logprobs: log-probabilities of the prompt's tokens are not "
                             "supported by this server (only of generated tokens)", param="echo")


def parse(model: type[BaseModel], data) -> BaseModel:
    """Validate a decoded JSON body; the first problem becomes a 400 naming the field."""
    if not isinstance(data, dict):
        raise ServeError(400, "the request body must be a JSON object")
    try:
        req = model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or None
        raise ServeError(400, f"invalid request: {where}: {first['msg']}", param=where) from None
    if hasattr(req, "check"):
        req.check()
    return req


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_response(rid: str, model: str, text: str, finish: str, use: dict, logprobs: dict | None = None) -> dict:
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
                         "finish_reason": finish}], "usage": use}


def chat_chunk(rid: str, model: str, delta: dict, finish: str | None = None, logprobs: dict | None = None) -> dict:
    return {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]}


def completion_response(rid: str, model: str, text: str, finish: str | None, use: dict | None = None,
                        logprobs: dict | None = None) -> dict:
    """A whole completion, or (use=None) one chunk of a streamed one: OpenAI sends both as text_completion."""
    out = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
           "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}]}
    if use is not None:
        out["usage"] = use
    return out


def usage_chunk(first: dict, use: dict) -> dict:
    """stream_options.include_usage: the stream's last chunk, no choices, the whole request's usage."""
    return {**first, "choices": [], "usage": use}


def models_list(created: dict[str, int]) -> dict:
    return {"object": "list", "data": [model_card(name, at) for name, at in created.items()]}


def model_card(model_id: str, created: int) -> dict:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "llmpipe"}
