"""The model behind the server: one worker thread generates for one request at a time (CPU-bound
work gains nothing from interleaving on a few cores), fed by a queue of bounded length. A request
beyond the queue's limit is refused at once (429) rather than held, so memory stays bounded under any
load: at most max_queue + 1 requests exist, each with at most max_tokens_limit tokens of output.

Text is streamed as it is decoded, held back while it could still be the start of a stop string or
ends in an incomplete multi-byte character, so a client never sees text that is later taken back.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import Tokenizer

from llmpipe.model.weights import load_model
from llmpipe.ops.serve.protocol import ServeError
from llmpipe.ops.serve.template import ChatTemplate
from llmpipe.stages.sample import cut_at_stop
from llmpipe.tokens.bpe import EOT
from llmpipe.training.generate import generate_batch

log = logging.getLogger(__name__)


@dataclass
class Job:
    """One generation. Its events go to the request's event loop: ("text", delta), then
    ("done", finish_reason, completion_tokens) or ("error", message)."""

    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stops: list[str] = field(default_factory=list)
    stop_ids: frozenset = frozenset()  # token ids that end the reply (the chat format's <|end|>)
    loop: asyncio.AbstractEventLoop | None = None
    events: asyncio.Queue | None = None
    cancelled: bool = False  # the client went away: stop at the next token

    def emit(self, *event) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


def held_back(text: str, stops: list[str]) -> int:
    """How many characters at the end of text could be the start of a stop string."""
    return max((k for s in stops for k in range(min(len(s) - 1, len(text)), 0, -1) if s.startswith(text[-k:])),
               default=0)


class Engine:
    def __init__(self, model_dir: Path, tokenizer_path: Path, model_id: str = "llmpipe", max_queue: int = 16,
                 max_tokens_limit: int = 1024, default_max_tokens: int = 256, compile: bool = False,
                 threads: int | None = None):
        if threads:
            # torch's threads spin while they wait: more of them than the cores left free by the HTTP side
            # and other work makes each token many times slower (20x measured on a busy 2-core machine)
            torch.set_num_threads(threads)
        self.model = load_model(model_dir)
        self.tok = Tokenizer.from_file(str(tokenizer_path))
        self.eot = self.tok.token_to_id(EOT)
        self.template = ChatTemplate(self.tok)
        self.model_id, self.max_queue, self.compile = model_id, max_queue, compile
        self.max_tokens_limit = max_tokens_limit
        self.default_max_tokens = min(default_max_tokens, max_tokens_limit)
        self.context = self.model.cfg.block_size
        self.created = int(Path(model_dir, "model.safetensors").stat().st_mtime)
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self.waiting = 0  # admitted, not yet started
        self.running = False
        self.served = 0
        self._worker = threading.Thread(target=self._work, name="llmpipe-serve-worker", daemon=True)
        self._worker.start()

    # -- admission (called on the event loop) --
    def encode(self, text: str | list[int], param: str) -> list[int]:
        """A prompt's ids (of a text, or ids already); one that does not fit the context is a 400 (it
        would be cut silently)."""
        ids = self.tok.encode(text).ids if isinstance(text, str) else text
        if len(ids) >= self.context:
            raise ServeError(400, f"the prompt is {len(ids)} tokens, but this model's context is {self.context} "
                             f"tokens, so a prompt may have at most {self.context - 1}; shorten the {param}",
                             param=param, code="context_length_exceeded")
        return ids

    def check_max_tokens(self, value: int | None, param: str = "max_tokens") -> int:
        if value is None:
            return self.default_max_tokens
        if value > self.max_tokens_limit:
            raise ServeError(400, f"{param} is {value}, above this server's limit of {self.max_tokens_limit} "
                             "(llmpipe serve --max-tokens-limit)", param=param)
        return value

    def submit(self, job: Job) -> None:
        """Queue a job, or refuse it with a 429 when the queue is full."""
        with self._lock:
            if self.waiting >= self.max_queue:
                raise ServeError(429, f"the server is busy: {self.waiting} requests are waiting (limit "
                                 f"{self.max_queue}, llmpipe serve --max-queue); retry later",
                                 type_="server_overloaded", code="queue_full", headers={"Retry-After": "1"})
            self.waiting += 1
        job.loop, job.events = asyncio.get_running_loop(), asyncio.Queue()
        self._jobs.put(job)

    def close(self) -> None:
        self._jobs.put(None)

    # -- the worker thread --
    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            with self._lock:
                self.waiting -= 1
                self.running = True
            try:
                if not job.cancelled:
                    self._generate(job)
            except Exception as err:  # noqa: BLE001 - one bad generation must not stop the server
                log.exception("generation failed")
                job.emit("error", f"generation failed: {err.__class__.__name__}: {err}")
            finally:
                with self._lock:
                    self.running = False
                    self.served += 1

    def _generate(self, job: Job) -> None:
        sent, stopped = "", False

        def on_step(_row: int, ids: list[int]) -> bool:
            nonlocal sent, stopped
            text, stopped = cut_at_stop(self.tok.decode(ids), job.stops)
            stopped = stopped or (bool(ids) and ids[-1] in job.stop_ids)
            if not stopped:
                if text.endswith("\ufffd"):  # wait until a multi-byte character is complete
                    return job.cancelled
                text = text[: len(text) - held_back(text, job.stops)]
            if len(text) > len(sent):
                job.emit("text", text[len(sent):])
                sent = text
            return stopped or job.cancelled

        # no seed: a fresh one (torch.Generator's default seed is a constant, every reply would be the same)
        seed = job.seed if job.seed is not None else random.getrandbits(62)
        t0 = time.perf_counter()
        out = generate_batch(self.model, [job.prompt_ids], job.max_tokens, eot_id=self.eot,
                             temperature=job.temperature, top_k=0, top_p=job.top_p, seed=seed,
                             stop_fn=on_step, compile=self.compile)[0]
        text, stopped = cut_at_stop(self.tok.decode(out), job.stops)
        stopped = stopped or (bool(out) and out[-1] in job.stop_ids)
        if len(text) > len(sent):  # what was held back, once nothing more can follow it
            job.emit("text", text[len(sent):])
        finish = "length" if len(out) >= job.max_tokens and not stopped else "stop"
        log.debug("%d tokens in %.2f s (%s)", len(out), time.perf_counter() - t0, finish)
        job.emit("done", finish, len(out))
