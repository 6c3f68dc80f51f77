"""`llmpipe chat` for real in a pseudo-terminal, on a tiny model: turns stream, /reset, the context
window, Ctrl-C during a reply (back to the prompt) and at the prompt (a clean exit), Ctrl-D."""

from __future__ import annotations

import os
import pty
import select
import signal
import sys
import time

import pytest
import torch
from tokenizers import Tokenizer

from llmpipe.model.gpt import GPT, GPTConfig
from llmpipe.model.weights import save_model
from llmpipe.ops.chat import Chat
from llmpipe.tokens.chat import ChatFormat

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory, tokenizer_file):
    """A random tiny model that never says a special token under top-k 10 (their embeddings are zero, so
    their logits are 0 while the top 10 of 300 random logits are positive): a reply runs to its limit."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=320, n_layer=1, n_head=2, d_model=32, block_size=64))
    with torch.no_grad():
        model.tok_emb.weight[:5] = 0.0
    out = tmp_path_factory.mktemp("chat") / "model"
    save_model(model, out, extra={"eot_id": 0})
    return out


class Terminal:
    """A child process on a pseudo-terminal (its controlling terminal, so Ctrl-C is a SIGINT)."""

    def __init__(self, argv: list[str]):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            signal.signal(signal.SIGINT, signal.SIG_DFL)  # as in a terminal, even when pytest runs in the background
            os.chdir(REPO)
            os.execvpe(argv[0], argv, {**os.environ, "PYTHONPATH": REPO})
        self.buffer = ""

    def expect(self, text: str, timeout: float = 180) -> str:  # generous: a loaded 2-core machine is slow
        """Read until `text` appears; return what came before it, and keep what follows."""
        end = time.monotonic() + timeout
        while text not in self.buffer:
            left = end - time.monotonic()
            assert left > 0, f"no {text!r} in {self.buffer[-2000:]!r}"
            if select.select([self.fd], [], [], left)[0]:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:
                    chunk = b""
                assert chunk, f"the process ended before {text!r}: {self.buffer[-2000:]!r}"
                self.buffer += chunk.decode("utf-8", errors="replace")
        before, _, self.buffer = self.buffer.partition(text)
        return before

    def read_for(self, seconds: float) -> str:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if select.select([self.fd], [], [], left)[0]:
                self.buffer += os.read(self.fd, 4096).decode("utf-8", errors="replace")
        out, self.buffer = self.buffer, ""
        return out

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def wait(self, timeout: float = 120) -> int:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            if select.select([self.fd], [], [], 0.1)[0]:
                try:
                    self.buffer += os.read(self.fd, 4096).decode("utf-8", errors="replace")
                except OSError:
                    pass
        os.kill(self.pid, signal.SIGKILL)
        raise AssertionError(f"did not exit: {self.buffer[-2000:]!r}")


def chat_cli(model, tokenizer, *extra) -> Terminal:
    return Terminal([sys.executable, "-m", "llmpipe.cli", "chat", "--model-dir", str(model), "--tokenizer",
                     str(tokenizer), "--top-k", "10", "--seed", "1", "--threads", "1", *extra])


def test_turns_reset_and_leaving_with_ctrl_c_and_ctrl_d(chat_model, tokenizer_file):
    term = chat_cli(chat_model, tokenizer_file, "--max-new-tokens", "6", "--system", "Be brief.")
    term.expect("you> ")
    term.send("To be?\r")
    reply = term.expect("you> ")
    assert "assistant> " in reply and len(reply.split("assistant> ")[1].strip()) > 0
    term.send("Hor: Do, if it will not stand.\\\r")  # a backslash continues the message
    term.expect("...> ")
    term.send("Who says it?\r")
    assert "assistant> " in term.expect("you> ")
    term.send("/reset\r")
    assert "(conversation reset)" in term.expect("you> ")
    term.send("\x03")  # Ctrl-C at the prompt: a clean exit, no traceback
    assert term.wait() == 0 and "Traceback" not in term.buffer
    term = chat_cli(chat_model, tokenizer_file, "--max-new-tokens", "4")
    term.expect("you> ")
    term.send("\x04")  # Ctrl-D
    assert term.wait() == 0


def test_ctrl_c_stops_a_streaming_reply_and_returns_to_the_prompt(chat_model, tokenizer_file):
    term = chat_cli(chat_model, tokenizer_file, "--max-new-tokens", "1000000")
    term.expect("you> ")
    term.send("Speak, friend.\r")
    term.expect("assistant> ")
    streamed = ""
    deadline = time.monotonic() + 120
    while not streamed.strip() and time.monotonic() < deadline:
        streamed += term.read_for(0.5)  # text arrives while the reply is still being generated
    assert streamed.strip()
    term.send("\x03")
    rest = term.expect("you> ")
    assert "[interrupted]" in rest and "Traceback" not in streamed + rest
    term.send("/exit\r")
    assert term.wait() == 0


def test_the_conversation_keeps_the_system_prompt_and_drops_the_oldest_turns(chat_model, tokenizer_file):
    from llmpipe.model.weights import load_model

    fmt = ChatFormat(Tokenizer.from_file(str(tokenizer_file)))
    chat = Chat(load_model(chat_model), fmt, "Be brief.", max_new_tokens=8, temperature=0.0, top_k=0, top_p=1.0,
                seed=0)

    class Sink:
        text = ""

        def write(self, s):
            self.text += s

        def flush(self):
            pass

    notes = Sink()
    for turn in range(6):
        chat.reply(f"Whether 'tis nobler in the mind {turn}", Sink(), notes=notes)
        assert len(fmt.prompt(chat.messages[:-1])) <= chat.budget
    assert chat.messages[0] == {"role": "system", "content": "Be brief."}
    assert chat.messages[1]["role"] == "user" and "0" not in chat.messages[1]["content"]
    assert "dropped" in notes.text
    chat.reset()
    assert chat.messages == [{"role": "system", "content": "Be brief."}]
