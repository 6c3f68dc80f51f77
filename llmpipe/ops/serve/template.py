"""The chat template: how `/v1/chat/completions` turns messages into the prompt a model continues.

A tokenizer that reserves the chat markers (every tokenizer trained since they exist) gets the chat
format of llmpipe.tokens.chat, the one the finetune stage trains on and the Hugging Face export's
template renders: `<|endoftext|><|system|>...<|end|><|user|>...<|end|><|assistant|>`, the reply ending
at `<|end|>` (or `<|endoftext|>`); message text can never forge a marker.

Fallback, only for models whose tokenizer predates the markers: the conversation as plain text, one
turn per paragraph, ending with the assistant's cue,

    System: You are terse.

    User: Hello

    Assistant:

the reply ending at `<|endoftext|>` or at the next "\\nUser:" (the model starting the user's turn itself).
This module is the only place that knows these formats.
"""

from __future__ import annotations

from tokenizers import Tokenizer

from llmpipe.tokens.chat import ChatFormat, has_chat_tokens

ROLES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}
CHAT_STOPS = ["\nUser:"]  # the plain-text fallback's stop


def message_text(content) -> str:
    """A message's content: a string, or OpenAI's list of parts, of which the text parts count."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text")


def render_chat(messages: list[dict]) -> str:
    """The plain-text fallback: messages ({"role", "content"}) -> the prompt text the model continues."""
    turns = [f"{ROLES[m['role']]}: {message_text(m.get('content')).strip()}" for m in messages]
    return "\n\n".join(turns + ["Assistant:"])


class ChatTemplate:
    """The chat format when the tokenizer has its markers, else the plain-text fallback."""

    def __init__(self, tok: Tokenizer):
        self.tok = tok
        self.format = ChatFormat(tok) if has_chat_tokens(tok) else None

    @property
    def stops(self) -> list[str]:
        return [] if self.format else list(CHAT_STOPS)

    @property
    def stop_ids(self) -> frozenset[int]:
        return self.format.stop_ids if self.format else frozenset()

    def chars(self, messages: list[dict]) -> int:
        """How many characters of text the messages hold (a bound on their tokens, before tokenizing)."""
        return sum(len(message_text(m.get("content"))) for m in messages)

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """The prompt's ids: ChatFormat.prompt's, with the contents encoded as one batch, because the
        tokenizer's batch call lets go of the GIL (its single encode holds it, for seconds on a 1 MB
        prompt) and the server calls this beside its event loop."""
        if self.format is None:
            return self.tok.encode_batch([render_chat(messages)])[0].ids
        fmt, role = self.format, {"developer": "system"}
        contents = fmt.tok.encode_batch([message_text(m.get("content")) for m in messages], add_special_tokens=False)
        ids = [fmt.eot]
        for m, content in zip(messages, contents):
            ids += [fmt.role_id[role.get(m["role"], m["role"])], *content.ids, fmt.end]
        return ids + [fmt.role_id["assistant"]]
