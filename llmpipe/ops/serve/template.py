"""The chat template: how `/v1/chat/completions` turns messages into one prompt for a base model.

The tokenizer has no chat format yet, so a conversation is rendered as plain text, one turn per
paragraph, ending with the assistant's cue:

    System: You are terse.

    User: Hello

    Assistant:

and the reply ends at `<|endoftext|>` or at the next "\\nUser:" (the model starting the user's next
turn itself). This module is the only place that knows the format: a real chat format replaces
`render_chat` and `CHAT_STOPS` here.
"""

from __future__ import annotations

ROLES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}
CHAT_STOPS = ["\nUser:"]


def message_text(content) -> str:
    """A message's content: a string, or OpenAI's list of parts, of which the text parts count."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text")


def render_chat(messages: list[dict]) -> str:
    """Messages ({"role", "content"}) -> the prompt text the model continues."""
    turns = [f"{ROLES[m['role']]}: {message_text(m.get('content')).strip()}" for m in messages]
    return "\n\n".join(turns + ["Assistant:"])
