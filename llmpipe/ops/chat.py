"""`llmpipe chat`: a multi-turn conversation with the finetuned model in the terminal.

Replies stream as they are generated, in the chat format of llmpipe.tokens.chat, ending at `<|end|>`.
The conversation is kept within the model's context: when the next prompt would not leave room for a
reply, the oldest turns are dropped (the system prompt stays), and a note says so. `/reset` starts over,
`/exit` (or Ctrl-D) leaves; a line ending with a backslash continues the message on the next line
(a passage to ask about). Ctrl-C while a reply is generated stops it and returns to the prompt (the
reply so far stays in the conversation); Ctrl-C at the prompt leaves cleanly.
"""

from __future__ import annotations

import random
import signal
import sys

import torch
from tokenizers import Tokenizer

from llmpipe.model.weights import load_model
from llmpipe.ops.models import default_model
from llmpipe.stages.registry import stage
from llmpipe.tokens.chat import ChatFormat
from llmpipe.training.generate import generate_batch
from llmpipe.util.io import InputError

USER_PROMPT, MORE_PROMPT, REPLY_PREFIX = "you> ", "...> ", "assistant> "
HELP = "(a line ending with \\ continues the message; /reset starts over, /exit or Ctrl-D leaves; Ctrl-C stops a reply)"


class Chat:
    """The conversation and one model: `reply(text, out)` streams the answer to `out`."""

    def __init__(self, model, fmt: ChatFormat, system: str | None, max_new_tokens: int, temperature: float,
                 top_k: int, top_p: float, seed: int | None):
        self.model, self.fmt = model, fmt
        self.system = [{"role": "system", "content": system}] if system else []
        self.messages: list[dict] = list(self.system)
        self.sampling = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
        self.max_new_tokens = max_new_tokens
        self.rng = random.Random(seed)
        # room kept for the reply: the prompt may use the rest of the context
        block = model.cfg.block_size
        self.budget = block - max(8, min(max_new_tokens, block // 2))

    def reset(self) -> None:
        self.messages = list(self.system)

    def reply(self, text: str, out, notes=sys.stderr, prefix: str = "") -> str:
        self.messages.append({"role": "user", "content": text})
        kept, ids = self.fmt.fit(self.messages, self.budget)
        if len(kept) < len(self.messages):
            print(f"(context full: dropped the {len(self.messages) - len(kept)} oldest messages)", file=notes,
                  flush=True)
            self.messages = kept
        out.write(prefix)
        shown = ""

        def stream(_row: int, generated: list[int]) -> bool:
            nonlocal shown
            stop = generated[-1] in self.fmt.stop_ids
            text_now = self.fmt.tok.decode([t for t in generated if t not in self.fmt.stop_ids])
            if not text_now.endswith("\ufffd"):  # wait until a multi-byte character is complete
                out.write(text_now[len(shown):])
                out.flush()
                shown = text_now
            return stop

        try:
            generate_batch(self.model, [ids], self.max_new_tokens, eot_id=self.fmt.eot, stop_fn=stream,
                           seed=self.rng.getrandbits(62), **self.sampling)
        except KeyboardInterrupt:
            out.write(" [interrupted]")
        finally:
            out.write("\n")
            out.flush()
            self.messages.append({"role": "assistant", "content": shown})
        return shown


def command(args) -> None:
    model_dir = args.model_dir or default_model(args.root)
    tokenizer = args.tokenizer or args.root / stage("sft-data").inp("tokenizer")
    for path, made_by in ((model_dir / "model.safetensors", "finetune"), (tokenizer, "tokenizer")):
        if not path.exists():
            raise InputError(f"missing {path} (made by the {made_by} stage: run `dvc repro {made_by}`, or pass "
                             "--model-dir / --tokenizer)")
    if args.threads:
        torch.set_num_threads(args.threads)
    if sys.stdin.isatty():  # Ctrl-C must reach us even when started by a shell that ignores SIGINT (`cmd &`)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:  # line editing and history for input(), whose read then also wakes on Ctrl-C
            import readline  # noqa: F401
        except ImportError:
            pass
    try:
        fmt = ChatFormat(Tokenizer.from_file(str(tokenizer)))
    except ValueError as err:
        raise InputError(f"{tokenizer}: {err}") from None
    chat = Chat(load_model(model_dir), fmt, args.system, args.max_new_tokens, args.temperature, args.top_k,
                args.top_p, args.seed)
    print(f"chatting with {model_dir} (context {chat.model.cfg.block_size} tokens) {HELP}", flush=True)
    while True:
        try:
            line = input(USER_PROMPT)
            while line.endswith("\\"):  # a trailing backslash continues the message on the next line
                line = line[:-1] + "\n" + input(MORE_PROMPT)
        except (EOFError, KeyboardInterrupt):  # Ctrl-D or Ctrl-C at the prompt: leave cleanly
            print()
            return
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return
        if text == "/reset":
            chat.reset()
            print("(conversation reset)", flush=True)
            continue
        chat.reply(text, sys.stdout, prefix=REPLY_PREFIX)
