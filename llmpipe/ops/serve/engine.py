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
from llmpipe.ops.serve.logprobs import TokenBytes, record
from llmpipe.ops.serve.protocol import ServeError
from llmpipe.ops.serve.template import ChatTemplate
from llmpipe.stages.sample import cut_at_stop
from llmpipe.tokens.bpe import EOT
from llmpipe.training.generate import generate_batch

log = logging.getLogger(__name__)


@dataclass
class Job:
    """One generation. Its events go to the request's event loop: ("text", delta, logprobs), then
    ("done", finish_reason, completion_tokens) or ("error", message); logprobs is None when not asked
    for, else the TokenLogprob records of the tokens whose text the delta completes."""

    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stops: list[str] = field(default_factory=list)
    stop_ids: frozenset = frozenset()  # token ids that end the reply (the chat format's <|end|>)
    model_id: str = ""  # which served model ("" : the default)
    logprobs: int | None = None  # None: none; k: each token's log-probability and the k most likely
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
    """models: {model id: model folder}, the first being the default; all share one tokenizer (a
    finetune keeps its base model's ids) and one worker."""

    def __init__(self, models: dict[str, Path], tokenizer_path: Path, max_queue: int = 16,
                 max_tokens_limit: int = 1024, default_max_tokens: int = 256, compile: bool = False,
                 threads: int | None = None):
        if threads:
            # torch's threads spin while they wait: more of them than the cores left free by the HTTP side
            # and other work makes each token many times slower (20x measured on a busy 2-core machine)
            torch.set_num_threads(threads)
        self.models = {name: load_model(path) for name, path in models.items()}
        self.paths = dict(models)
        self.created = {name: int(Path(path, "model.safetensors").stat().st_mtime) for name, path in models.items()}
        self.model_id = next(iter(models))  # the default
        self.tok = Tokenizer.from_file(str(tokenizer_path))
        self.token_bytes = TokenBytes(self.tok)
        # no token spells more characters than the longest vocabulary entry: a prompt longer than the
        # context times that cannot fit, and is refused before any tokenizing
        self.max_token_chars = max(len(t) for t in self.tok.get_vocab())
        self.eot = self.tok.token_to_id(EOT)
        self.template = ChatTemplate(self.tok)
        self.max_queue, self.compile = max_queue, compile
        self.max_tokens_limit = max_tokens_limit
        self.default_max_tokens = min(default_max_tokens, max_tokens_limit)
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self.waiting = 0  # admitted, not yet started
        self.running = False
        self.served = 0
        self.generated_tokens = 0  # every token any generation produced (what a dropped client cost)
        self.abandoned = 0  # generations stopped early because their client went away
        self._worker = threading.Thread(target=self._work, name="llmpipe-serve-worker", daemon=True)
        self._worker.start()

    def context(self, model_id: str) -> int:
        return self.models[model_id].cfg.block_size

    def check_model(self, name: str) -> None:
        if name not in self.models:
            raise ServeError(404, f"the model {name!r} does not exist; this server serves "
                             f"{', '.join(map(repr, self.models))}", param="model", code="model_not_found")

    # -- admission (called off the event loop: a 1 MB prompt takes a while to tokenize) --
    def encode(self, text, param: str, model_id: str, chars: int = 0) -> list[int]:
        """A prompt's ids, of a text, of ids already, or made by a function (the chat template); one that does
        not fit the context is a 400 (it would be cut silently). chars: the characters text holds."""
        context = self.context(model_id)
        chars = len(text) if isinstance(text, str) else chars
        if chars > (context - 1) * self.max_token_chars:
            raise ServeError(400, f"the prompt is {chars} characters, more than {context - 1} tokens can spell (at "
                             f"most {self.max_token_chars} characters each), but this model's context is {context} "
                             f"tokens; shorten the {param}",
                             param=param, code="context_length_exceeded")
        if callable(text):
            ids = text()
        else:  # the batch call lets go of the GIL: other requests go on while a long prompt is tokenized
            ids = self.tok.encode_batch([text])[0].ids if isinstance(text, str) else text
        if len(ids) >= context:
            raise ServeError(400, f"the prompt is {len(ids)} tokens, but this model's context is {context} "
                             f"tokens, so a prompt may have at most {context - 1}; shorten the {param}",
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
                else:
                    self.abandoned += 1
            except Exception as err:  # noqa: BLE001 - one bad generation must not stop the server
                log.exception("generation failed")
                job.emit("error", f"generation failed: {err.__class__.__name__}: {err}")
            finally:
                with self._lock:
                    self.running = False
                    self.served += 1

    def _generate(self, job: Job) -> None:
        sent, stopped = "", False
        records: list = []  # TokenLogprob per generated token, when asked for
        ends: list[int | None] = []  # per token: the length of the text decoded up to it (None: mid-character)
        given = 0  # records handed out so far

        def hand_out(upto: int) -> list | None:
            """The records of tokens [given, upto) that carry text (not <|end|>), once each."""
            nonlocal given
            if job.logprobs is None:
                return None
            out = [r for r in records[given:upto] if r.id not in job.stop_ids]
            given = max(given, upto)
            return out

        def covered(chars: int) -> int:
            """How many tokens' text lies within the first `chars` characters."""
            n = given
            for k in range(given, len(ends)):
                if ends[k] is not None and ends[k] <= chars:
                    n = k + 1
                elif ends[k] is not None:
                    break
            return n

        def on_step(_row: int, ids: list[int]) -> bool:
            nonlocal sent, stopped
            self.generated_tokens += 1
            full = self.tok.decode(ids)
            ends.append(None if full.endswith("\ufffd") else len(full))
            text, stopped = cut_at_stop(full, job.stops)
            stopped = stopped or (bool(ids) and ids[-1] in job.stop_ids)
            if not stopped:
                if text.endswith("\ufffd"):  # wait until a multi-byte character is complete
                    return job.cancelled
                text = text[: len(text) - held_back(text, job.stops)]
            if len(text) > len(sent):
                job.emit("text", text[len(sent):], hand_out(covered(len(text))))
                sent = text
            return stopped or job.cancelled

        def on_logprobs(_row: int, token: int, logprobs) -> None:
            records.append(record(token, logprobs, job.logprobs))

        # no seed: a fresh one (torch.Generator's default seed is a constant, every reply would be the same)
        seed = job.seed if job.seed is not None else random.getrandbits(62)
        t0 = time.perf_counter()
        out = generate_batch(self.models[job.model_id or self.model_id], [job.prompt_ids], job.max_tokens,
                             eot_id=self.eot, temperature=job.temperature, top_k=0, top_p=job.top_p, seed=seed,
                             stop_fn=on_step, compile=self.compile,
                             on_logprobs=on_logprobs if job.logprobs is not None else None)[0]
        full = self.tok.decode(out)
        text, stopped = cut_at_stop(full, job.stops)
        stopped = stopped or (bool(out) and out[-1] in job.stop_ids)
        rest = hand_out(len(out) if text == full else covered(len(text)))
        if len(text) > len(sent) or rest:  # what was held back, once nothing more can follow it
            job.emit("text", text[len(sent):], rest)
        if job.cancelled:
            self.abandoned += 1
        finish = "length" if len(out) >= job.max_tokens and not stopped else "stop"
        log.debug("%d tokens in %.2f s (%s)", len(out), time.perf_counter() - t0, finish)
        job.emit("done", finish, len(out))
