"""The generation process: the served models run in a process of their own, one generation at a time.

Why a process and not a thread: the forward pass is a Python loop over layers, and each torch call
lets go of the GIL and takes it back. In the server's own process every one of those takes waits on
whatever else holds the GIL (reading, parsing and refusing a 1 MB request body), so one large prompt
stalled every other client's stream (docs/serving.md). Here the GIL is the generation's alone; the
server process only relays finished text.

The protocol over the pipe (pickled tuples):
- parent -> child: a job spec (dict), or None to stop;
- child -> parent, once at start: ("ready", {model id: context}) or ("failed", kind, message);
- per job, each message led by the job's sequence number: (seq, "text", delta, records, tokens so far)
  when there is text to send, else (seq, "tokens", tokens so far); then (seq, "done", finish_reason,
  completion tokens) or (seq, "error", message, tokens so far).
A job is cancelled when the shared `cancel` value holds its sequence number (checked at every token).

Text is decoded here, held back while it could still be the start of a stop string or ends in an
incomplete multi-byte character, so a client never sees text that is later taken back.
"""

from __future__ import annotations

import logging
import random
import signal
import time

log = logging.getLogger(__name__)


def generate_job(model, tok, eot: int, spec: dict, send, cancelled, compile: bool = False) -> None:
    """One generation for `spec` (prompt_ids, max_tokens, temperature, top_p, seed, stops, stop_ids,
    logprobs), its events handed to send(); cancelled() is checked at every token."""
    from llmpipe.ops.serve.logprobs import record
    from llmpipe.stages.sample import cut_at_stop, held_back
    from llmpipe.training.generate import generate_batch

    stops, stop_ids, k = spec["stops"], spec["stop_ids"], spec["logprobs"]
    sent, stopped = "", False
    records: list = []  # TokenLogprob per generated token, when asked for
    ends: list[int | None] = []  # per token: the length of the text decoded up to it (None: mid-character)
    given = 0  # records handed out so far
    steps = 0

    def hand_out(upto: int) -> list | None:
        """The records of tokens [given, upto) that carry text (not <|end|>), once each."""
        nonlocal given
        if k is None:
            return None
        out = [r for r in records[given:upto] if r.id not in stop_ids]
        given = max(given, upto)
        return out

    def covered(chars: int) -> int:
        """How many tokens' text lies within the first `chars` characters."""
        n = given
        for i in range(given, len(ends)):
            if ends[i] is not None and ends[i] <= chars:
                n = i + 1
            elif ends[i] is not None:
                break
        return n

    def on_step(_row: int, ids: list[int]) -> bool:
        nonlocal sent, stopped, steps
        steps += 1
        full = tok.decode(ids)
        ends.append(None if full.endswith("\ufffd") else len(full))
        text, stopped = cut_at_stop(full, stops)
        stopped = stopped or (bool(ids) and ids[-1] in stop_ids)
        if not stopped:
            if text.endswith("\ufffd"):  # wait until a multi-byte character is complete
                send(("tokens", steps))
                return cancelled()
            text = text[: len(text) - held_back(text, stops)]
        if len(text) > len(sent):
            send(("text", text[len(sent):], hand_out(covered(len(text))), steps))
            sent = text
        else:
            send(("tokens", steps))
        return stopped or cancelled()

    def on_logprobs(_row: int, token: int, logprobs) -> None:
        records.append(record(token, logprobs, k))

    # no seed: a fresh one (torch.Generator's default seed is a constant, every reply would be the same)
    seed = spec["seed"] if spec["seed"] is not None else random.getrandbits(62)
    t0 = time.perf_counter()
    out = generate_batch(model, [spec["prompt_ids"]], spec["max_tokens"], eot_id=eot,
                         temperature=spec["temperature"], top_k=0, top_p=spec["top_p"], seed=seed,
                         stop_fn=on_step, compile=compile, on_logprobs=on_logprobs if k is not None else None)[0]
    full = tok.decode(out)
    text, stopped = cut_at_stop(full, stops)
    stopped = stopped or (bool(out) and out[-1] in stop_ids)
    rest = hand_out(len(out) if text == full else covered(len(text)))
    if len(text) > len(sent) or rest:  # what was held back, once nothing more can follow it
        send(("text", text[len(sent):], rest, len(out)))
    finish = "length" if len(out) >= spec["max_tokens"] and not stopped else "stop"
    log.debug("%d tokens in %.2f s (%s)", len(out), time.perf_counter() - t0, finish)
    send(("done", finish, len(out)))


def run(conn, cancel, models: dict, tokenizer_path: str, compile: bool, threads: int | None,
        log_level: int = logging.WARNING) -> None:
    """The child's main: load the models, say ready, then generate each job the parent sends."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the server stops us with None
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        import torch
        from tokenizers import Tokenizer

        from llmpipe.model.weights import load_model
        from llmpipe.tokens.bpe import EOT
        from llmpipe.util.io import InputError

        if threads:
            # torch's threads spin while they wait: more of them than the cores left free by the HTTP side
            # and other work makes each token many times slower (20x measured on a busy 2-core machine)
            torch.set_num_threads(threads)
        loaded = {name: load_model(path) for name, path in models.items()}
        tok = Tokenizer.from_file(tokenizer_path)
        eot = tok.token_to_id(EOT)
    except Exception as err:  # noqa: BLE001 - the parent reports it; InputError stays a user's error
        kind = "input" if isinstance(err, InputError) else "other"
        if kind == "other":
            log.exception("the generation process could not load the models")
        conn.send(("failed", kind, f"{err.__class__.__name__}: {err}" if kind == "other" else str(err)))
        return
    conn.send(("ready", {name: m.cfg.block_size for name, m in loaded.items()}))
    while True:
        try:
            spec = conn.recv()
        except (EOFError, OSError):  # the server is gone
            return
        if spec is None:
            return
        seq = spec["seq"]
        steps = [0]

        def send(event, _steps=steps, _seq=seq):
            if event[0] in ("text", "tokens"):
                _steps[0] = event[-1]
            conn.send((_seq, *event))

        try:
            generate_job(loaded[spec["model_id"]], tok, eot, spec, send, lambda: cancel.value == seq, compile)
        except Exception as err:  # noqa: BLE001 - one bad generation must not stop the server
            log.exception("generation failed")
            conn.send((seq, "error", f"generation failed: {err.__class__.__name__}: {err}", steps[0]))
