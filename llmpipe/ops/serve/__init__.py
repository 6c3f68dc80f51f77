"""`llmpipe serve`: the trained model behind an OpenAI-compatible HTTP API, with a web chat at `/`.

engine (the model, one worker thread, the bounded queue), app (the FastAPI routes), protocol (OpenAI's
request and response shapes), template (the chat template: the chat format, or plain text for
older tokenizers), chat.html (the page)."""

from __future__ import annotations

import logging
import os

from llmpipe.stages.registry import stage
from llmpipe.util.io import InputError

log = logging.getLogger("llmpipe")


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
    app = create_app(engine, max_body_bytes=args.max_body_bytes)
    log.info("serving %s (%s, context %d tokens) on http://%s:%d/ (web chat at /, API at /v1)",
             args.model_name, model_dir, engine.context, args.host, args.port)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning" if not args.verbose else "info",
                    timeout_graceful_shutdown=5)
    finally:
        engine.close()

