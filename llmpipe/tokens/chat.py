"""The chat format: a conversation as token ids, with a loss mask over what the assistant says.

    <|endoftext|><|system|>You are terse.<|end|><|user|>Hello<|end|><|assistant|>Hi.<|end|>

A conversation starts like a document (after `<|endoftext|>`, which ends the one before it in
pretraining); each turn is its role's marker, the content exactly as given, and `<|end|>`. A prompt for
a reply ends with `<|assistant|>` (the generation prompt); the reply ends at `<|end|>`. The markers are
special tokens reserved when the tokenizer is trained (llmpipe.tokens.bpe.CHAT_TOKENS), so a base model
and its finetune share their ids.

Content is always encoded as text: a `<|user|>` typed inside a message stays the characters
`<|user|>`, so no message can forge a turn. CHAT_TEMPLATE renders the same ids in transformers'
`apply_chat_template` (written into the Hugging Face export's tokenizer_config.json; a test checks the
two agree); there, as in any Jinja template, marker strings inside content would become markers.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenizers import Tokenizer

from llmpipe.tokens.bpe import CHAT_TOKENS, EOT
from llmpipe.util.io import InputError

SYSTEM, USER, ASSISTANT, END = CHAT_TOKENS
ROLE_TOKENS = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}

# The same rendering for transformers (Jinja): bos_token is <|endoftext|> in the export.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('llmpipe chat roles are system, user and assistant') }}{% endif %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def has_chat_tokens(tok: Tokenizer) -> bool:
    """Whether the tokenizer reserves the chat markers (tokenizers trained before they existed do not)."""
    return all(tok.token_to_id(t) is not None for t in CHAT_TOKENS)


@dataclass
class Rendered:
    ids: list[int]
    mask: list[int]  # 1 where the token is one the model learns to say: the assistant's content and <|end|>


class ChatFormat:
    """Renders conversations ({"role", "content"} dicts) for one tokenizer."""

    def __init__(self, tok: Tokenizer):
        if not has_chat_tokens(tok):
            raise ValueError(f"the tokenizer lacks the chat tokens {', '.join(CHAT_TOKENS)}; retrain it "
                             "(`dvc repro tokenizer`) to use the chat format")
        # A copy that encodes special-token strings as text (the caller's tokenizer keeps its setting).
        self.tok = Tokenizer.from_str(tok.to_str())
        self.tok.encode_special_tokens = True
        self.eot = tok.token_to_id(EOT)
        self.role_id = {role: tok.token_to_id(t) for role, t in ROLE_TOKENS.items()}
        self.end = tok.token_to_id(END)
        self.stop_ids = frozenset({self.end, self.eot})

    def reply_text(self, ids: list[int]) -> str:
        """A generated reply's text: its ids decoded without the stop markers that end it."""
        return self.tok.decode([t for t in ids if t not in self.stop_ids])

    def text_ids(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids if text else []

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> Rendered:
        ids, mask = [self.eot], [0]
        for m in messages:
            content = self.text_ids(m["content"])
            learn = int(m["role"] == "assistant")
            ids += [self.role_id[m["role"]], *content, self.end]
            mask += [0] + [learn] * (len(content) + 1)
        if add_generation_prompt:
            ids.append(self.role_id["assistant"])
            mask.append(0)
        return Rendered(ids, mask)

    def prompt(self, messages: list[dict]) -> list[int]:
        """The ids a reply to `messages` continues (ending with the generation prompt)."""
        return self.render(messages, add_generation_prompt=True).ids

    def fit(self, messages: list[dict], max_tokens: int) -> tuple[list[dict], list[int]]:
        """The most recent turns whose prompt fits `max_tokens`: the oldest user/assistant turns are
        dropped first, a leading system message is kept. (kept messages, prompt ids); the last message
        is always kept, so the ids may still exceed max_tokens when it alone is too long."""
        system = messages[:1] if messages and messages[0]["role"] == "system" else []
        turns = messages[len(system):]
        while True:
            ids = self.prompt(system + turns)
            if len(ids) <= max_tokens or len(turns) <= 1:
                return system + turns, ids
            turns = turns[1:]
            while len(turns) > 1 and turns[0]["role"] != "user":  # restart at a user turn
                turns = turns[1:]


def prompt_and_reference(messages: list[dict]) -> tuple[list[dict], str]:
    """A conversation ending with the assistant -> (the messages before its last reply, that reply)."""
    return messages[:-1], messages[-1]["content"]


def check_reply_budget(conversations: list[dict], fmt: ChatFormat, max_new_tokens: int, key: str) -> None:
    """InputError naming `key` when `max_new_tokens` would cut the longest taught reply (a reply cut before
    its <|end|> still decodes whole): a cut reply scores 0 with no message, so a too small budget would
    look like a worse model. Checked when the stage starts, before any generation."""
    longest = max((len(fmt.text_ids(c["messages"][-1]["content"])) for c in conversations), default=0)
    if longest > max_new_tokens:
        raise InputError(f"{key}: {max_new_tokens} new tokens would cut the longest reply these items teach "
                         f"({longest} tokens), and a cut reply scores 0: set {key} to {longest} or more")
