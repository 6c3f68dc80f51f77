"""The model behind the server: a generation process (generator.py) runs one request at a time
(CPU-bound work gains nothing from interleaving on a few cores), fed by a queue of bounded length. A
request beyond the queue's limit is refused at once (429) rather than held, so memory stays bounded under
any load: at most max_queue + 1 requests exist, each with at most max_tokens_limit tokens of output.

This process keeps the admission (tokenizing prompts, off the event loop), the queue and the counters;
a relay thread hands each job to the generation process and its events to the request's event loop. A
generation process that dies fails its request (500) and is started again for the next one.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import Tokenizer

import llmpipe.ops.serve.generator as generator
from llmpipe.ops.serve.logprobs import TokenBytes
from llmpipe.ops.serve.protocol import ServeError
from llmpipe.ops.serve.template import ChatTemplate
from llmpipe.tokens.bpe import EOT
from llmpipe.util.io import InputError

log = logging.getLogger(__name__)

# How often the relay looks at a job's cancelled flag while no event arrives (seconds): a token takes a
# few ms, so this only matters for a stalled generation; a shorter wait wakes the server's process more.
CANCEL_POLL_S = 0.02
# A cancelled generation that sends nothing for this long is taken as hung: its process is killed
# (and started again for the next request), so a client's leaving always frees the server.
HUNG_AFTER_CANCEL_S = 10.0


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
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is closed (the server is stopping): nobody is listening
            pass


class Engine:
    """models: {model id: model folder}, the first being the default; all share one tokenizer (a
    finetune keeps its base model's ids) and one generation process."""

    def __init__(self, models: dict[str, Path], tokenizer_path: Path, max_queue: int = 16,
                 max_tokens_limit: int = 1024, default_max_tokens: int = 256, compile: bool = False,
                 threads: int | None = None):
        self.paths = dict(models)
        self.created = {name: int(Path(path, "model.safetensors").stat().st_mtime) for name, path in models.items()}
        self.model_id = next(iter(models))  # the default
        self.tokenizer_path = Path(tokenizer_path)
        self.tok = Tokenizer.from_file(str(tokenizer_path))
        self.token_bytes = TokenBytes(self.tok)
        # no token spells more characters than the longest vocabulary entry: a prompt longer than the
        # context times that cannot fit, and is refused before any tokenizing
        self.max_token_chars = max(len(t) for t in self.tok.get_vocab())
        self.eot = self.tok.token_to_id(EOT)
        self.template = ChatTemplate(self.tok)
        self.max_queue, self.compile, self.threads = max_queue, compile, threads
        self.max_tokens_limit = max_tokens_limit
        self.default_max_tokens = min(default_max_tokens, max_tokens_limit)
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self.waiting = 0  # admitted, not yet started
        self.running = False
        self.served = 0
        self.generated_tokens = 0  # every token any generation produced (what a dropped client cost)
        self.abandoned = 0  # generations stopped early because their client went away
        self.restarts = 0  # generation processes started again after one died
        self._seq = 0
        self._closing = False
        self._current: Job | None = None
        self._mp = multiprocessing.get_context("spawn")  # no fork of a process with threads (and torch's)
        # the sequence number of the job to stop; no lock: one writer (the relay), an aligned int64
        self._cancel = self._mp.Value("q", -1, lock=False)
        self._proc, self._conn, self.contexts = None, None, {}
        self._start_generator()
        self._worker = threading.Thread(target=self._work, name="llmpipe-serve-relay", daemon=True)
        self._worker.start()

    def _start_generator(self) -> None:
        """Start the generation process and wait until its models are loaded (or it fails)."""
        parent, child = self._mp.Pipe()
        proc = self._mp.Process(target=generator.run, name="llmpipe-generate", daemon=True,
                                args=(child, self._cancel, {k: str(v) for k, v in self.paths.items()},
                                      str(self.tokenizer_path), self.compile, self.threads,
                                      logging.getLogger("llmpipe").getEffectiveLevel()))
        proc.start()
        child.close()  # ours is the parent end: EOF on it means the child is gone
        try:
            while not parent.poll(0.1) and proc.is_alive():
                pass
            message = parent.recv()  # EOFError when it died first
        except EOFError:
            proc.join(5)
            raise RuntimeError(f"the generation process exited (code {proc.exitcode}) before loading the models") \
                from None
        if message[0] == "failed":
            proc.join(5)
            raise (InputError if message[1] == "input" else RuntimeError)(message[2])
        self._proc, self._conn, self.contexts = proc, parent, message[1]

    def context(self, model_id: str) -> int:
        return self.contexts[model_id]

    def check_model(self, name: str) -> None:
        if name not in self.paths:
            raise ServeError(404, f"the model {name!r} does not exist; this server serves "
                             f"{', '.join(map(repr, self.paths))}", param="model", code="model_not_found")

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
        """Stop: the running generation is cancelled, the waiting ones are dropped, the process ends."""
        self._closing = True
        job = self._current  # read once: the relay may clear it meanwhile
        if job is not None:
            job.cancelled = True
        self._jobs.put(None)
        # longer than the relay's own wait for a hung generation, so the two never act on it at once
        self._worker.join(timeout=self._hung_after() + 10)
        if self._worker.is_alive():  # the relay is stuck: only kill (its pipe is the relay's to use)
            proc = self._proc
            if proc is not None:
                proc.kill()
        # (when the relay has ended, it stopped the generation process on its way out)

    def _hung_after(self) -> float:
        """Seconds a cancelled generation may stay silent: a first torch.compile takes minutes."""
        return HUNG_AFTER_CANCEL_S * (30 if self.compile else 1)

    # -- the relay thread --
    def _work(self) -> None:
        try:
            while (job := self._jobs.get()) is not None:
                with self._lock:
                    self.waiting -= 1
                    self.running = True
                self._current = job
                try:
                    if job.cancelled or self._closing:
                        self.abandoned += 1
                    else:
                        self._relay(job)
                except Exception as err:  # noqa: BLE001 - one bad generation must not stop the server
                    if isinstance(err, RuntimeError):  # ours: the message says it all
                        log.error("generation failed: %s", err)
                    else:
                        log.exception("generation failed")
                    self.abandoned += job.cancelled
                    job.emit("error", f"generation failed: {err.__class__.__name__}: {err}")
                finally:
                    self._current = None
                    with self._lock:
                        self.running = False
                        self.served += 1
        finally:
            self._stop_generator()

    def _stop_generator(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.is_alive():
            try:
                self._conn.send(None)
            except OSError:
                pass
            proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join(5)

    def _kill_generator(self) -> int | None:
        """Kill the generation process (dead or hung); the next job starts a new one. Its exit code."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.join(5)
        return proc.exitcode if proc is not None else None

    def _send(self, spec: dict) -> None:
        """Hand a job to the generation process, starting one first when there is none (or it died
        since the last job: then the job is sent to the new one)."""
        for _ in range(2):
            if self._proc is None or not self._proc.is_alive():
                self._kill_generator()  # reaps a dead one (a no-op when there is none)
                if self._closing:
                    raise RuntimeError("the server is stopping")
                self._start_generator()  # the first one started with the server: this one is a restart
                self.restarts += 1
                if self._closing:  # close() came during the load
                    self._stop_generator()
                    raise RuntimeError("the server is stopping")
            try:
                self._conn.send(spec)
                return
            except OSError:  # it died between the check and the send
                self._kill_generator()
        raise RuntimeError("the generation process could not be started")

    def _relay(self, job: Job) -> None:
        """Run one job in the generation process, its events to the job's event loop as they come. Every
        message carries its job's sequence number: one from an earlier job (cut short) is dropped."""
        self._seq += 1
        seq, base = self._seq, self.generated_tokens
        spec = {"seq": seq, "prompt_ids": job.prompt_ids, "max_tokens": job.max_tokens, "temperature": job.temperature,
                "top_p": job.top_p, "seed": job.seed, "stops": job.stops, "stop_ids": job.stop_ids,
                "model_id": job.model_id or self.model_id, "logprobs": job.logprobs}
        self._send(spec)
        started = False  # a message of this job arrived: the process took it
        quiet_since = None  # when the job was seen cancelled with no message since
        while True:
            if job.cancelled:
                self._cancel.value = seq
            if not self._conn.poll(CANCEL_POLL_S):
                if job.cancelled:
                    quiet_since = quiet_since or time.monotonic()
                    if time.monotonic() - quiet_since > self._hung_after():
                        self._kill_generator()
                        raise RuntimeError(f"the generation process sent nothing for {self._hung_after():.0f} s "
                                           "after its client left; it was killed and is started again")
                continue
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                code = self._kill_generator()
                if not started:
                    # it died before taking the job: killed while idle, the kill landed as the job was
                    # sent (is_alive still said yes): the job is whole, give it to a new process once
                    started = True
                    self._send(spec)
                    continue
                raise RuntimeError(f"the generation process died (exit code {code}); it is started again for the "
                                   "next request") from None
            if message[0] != seq:
                continue
            started, quiet_since = True, None
            kind, event = message[1], message[1:]
            if kind in ("text", "tokens"):
                self.generated_tokens = base + event[-1]
                if kind == "text":
                    job.emit("text", event[1], event[2])
            elif kind == "done":
                self.generated_tokens = base + event[2]
                self.abandoned += job.cancelled
                job.emit("done", event[1], event[2])
                return
            else:  # ("error", message, tokens so far)
                self.generated_tokens = base + event[2]
                self.abandoned += job.cancelled
                job.emit("error", event[1])
                return
