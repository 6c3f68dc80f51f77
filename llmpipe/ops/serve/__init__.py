"""`llmpipe serve`: the trained model behind an OpenAI-compatible HTTP API, with a web chat at `/`.

engine (the model, one worker thread, the bounded queue), app (the FastAPI routes), protocol (OpenAI's
request and response shapes), template (the chat template: the chat format, or plain text for
older tokenizers), chat.html (the page)."""

from __future__ import annotations

import logging
import os

from llmpipe.config.base import ParamsError
from llmpipe.stages.registry import stage
from llmpipe.util.io import InputError

log = logging.getLogger("llmpipe")


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

    sample = stage("sample")
    model_dir = args.model_dir or args.root / sample.inp("model")
    tokenizer = args.tokenizer or args.root / sample.inp("tokenizer")
    for path, made_by in ((model_dir / "model.safetensors", "pretrain"), (tokenizer, "tokenizer")):
        if not path.exists():
            raise InputError(f"missing {path} (made by the {made_by} stage: run `dvc repro {made_by}`, or pass "
                             "--model-dir / --tokenizer)")
    for name in ("max_queue", "max_tokens_limit", "max_body_bytes", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1")
    engine = Engine(model_dir, tokenizer, model_id=args.model_name, max_queue=args.max_queue,
                    max_tokens_limit=args.max_tokens_limit, compile=args.compile,
                    threads=args.threads or max(1, (os.cpu_count() or 2) // 2))
    tracer, missing = load_tracer(args)
    app = create_app(engine, max_body_bytes=args.max_body_bytes, tracer=tracer, trace_missing=missing)
    log.info("serving %s (%s, context %d tokens) on http://%s:%d/ (web chat at /, API at /v1)",
             args.model_name, model_dir, engine.context, args.host, args.port)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning" if not args.verbose else "info",
                    timeout_graceful_shutdown=5)
    finally:
        engine.close()

