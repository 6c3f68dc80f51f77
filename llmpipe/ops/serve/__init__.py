"""`llmpipe serve`: the trained model behind an OpenAI-compatible HTTP API, with a web chat at `/`.

engine (admission, the bounded queue, the relay to the generation process), generator (that process:
the models, one generation at a time), app (the FastAPI routes), protocol (OpenAI's request and response
shapes), logprobs (their log-probability fields), template (the chat template: the
chat format, or plain text for older tokenizers), chat.html (the page).

Which models: the newest chat model (llmpipe.ops.models) as the default id, and the base model beside it.
Who may call: anyone on this machine by default (127.0.0.1); with --api-key (or LLMPIPE_API_KEY) only
holders of the key; binding another address needs the key, or --insecure."""

from __future__ import annotations

import ipaddress
import logging
import os
import sys
from pathlib import Path

from llmpipe.config.base import ParamsError
from llmpipe.ops.models import base_model, chat_model
from llmpipe.stages.registry import stage
from llmpipe.util.io import InputError

log = logging.getLogger("llmpipe")

KEY_ENV = "LLMPIPE_API_KEY"


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the server to this machine (a name other than localhost: assume not)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, api_key: str | None, insecure: bool) -> None:
    """A server reachable from other machines needs a key, or --insecure said out loud."""
    if is_loopback(host) or api_key:
        return
    if not insecure:
        raise InputError(f"--host {host} makes the server reachable from other machines, and it has no API key: "
                         f"give one (--api-key KEY or the environment variable {KEY_ENV}), or pass --insecure to "
                         "serve anyone who can reach this port")
    print(f"llmpipe serve: WARNING: serving on {host} without an API key (--insecure): anyone who can reach "
          "this port can use the model", file=sys.stderr, flush=True)


def served_models(args) -> dict[str, Path]:
    """{model id: folder}: --model-dir alone, else the newest chat model (the default, under
    --model-name) and the base model (<name>-base); the base model alone when there is no chat model."""
    if args.model_dir:
        return {args.model_name: args.model_dir}
    chat, base = chat_model(args.root), base_model(args.root)
    return {args.model_name: chat, f"{args.model_name}-base": base} if chat else {args.model_name: base}


def load_tracer(args):
    """The trace index for /v1/trace and the web chat's marked spans, or None and why (the server runs
    without it: tracing is an addition, not a condition of serving)."""
    from llmpipe.ops.trace import make_tracer

    try:
        return make_tracer(args.root, args.params), ""
    except (InputError, ParamsError, OSError) as err:
        log.warning("no tracing: %s", err)
        return None, f"no trace index: {err}"


def command(args) -> None:
    import uvicorn

    from llmpipe.ops.serve.app import create_app
    from llmpipe.ops.serve.engine import Engine

    api_key = args.api_key or os.environ.get(KEY_ENV) or None
    check_exposure(args.host, api_key, args.insecure)
    models = served_models(args)
    tokenizer = args.tokenizer or args.root / stage("sample").inp("tokenizer")
    for path, made_by in [*((m / "model.safetensors", "pretrain") for m in models.values()), (tokenizer, "tokenizer")]:
        if not path.exists():
            raise InputError(f"missing {path} (made by the {made_by} stage: run `dvc repro {made_by}`, or pass "
                             "--model-dir / --tokenizer)")
    for name in ("max_queue", "max_tokens_limit", "max_body_bytes", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1")
    engine = Engine(models, tokenizer, max_queue=args.max_queue, max_tokens_limit=args.max_tokens_limit,
                    compile=args.compile, threads=args.threads or max(1, (os.cpu_count() or 2) // 2))
    tracer, missing = load_tracer(args)
    app = create_app(engine, max_body_bytes=args.max_body_bytes, api_key=api_key, tracer=tracer,
                     trace_missing=missing)
    for name, path in models.items():
        log.info("model %s: %s (context %d tokens)", name, path, engine.context(name))
    log.info("serving on http://%s:%d/ (web chat at /, API at /v1%s)", args.host, args.port,
             ", API key required" if api_key else "")
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning" if not args.verbose else "info",
                    timeout_graceful_shutdown=5)
    finally:
        engine.close()
