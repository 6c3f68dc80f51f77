"""Instruction data in the common shapes, read into one conversation shape, every record validated.

Shapes (detected per record, so one file may mix them):
- Alpaca: {"instruction", "input" (optional), "output", "system" (optional)} -> user: instruction, a
  blank line and the input when there is one; assistant: output.
- ShareGPT: {"conversations": [{"from": "human" | "gpt" | "system", "value"}...]}.
- OpenAI chat: {"messages": [{"role": "system" | "user" | "assistant", "content"}...]}; content is a
  string or a list of parts whose text parts count.

Files: `.jsonl` (one record a line) or `.json` (an array of records, or one record), optionally gzipped.
A conversation is an optional system message, then user and assistant turns in turn, ending with the
assistant. A record that cannot become one is counted by reason with file:line: broken_json,
not_an_object, missing_fields, empty_turn, unknown_role, roles_out_of_order (too_long is counted by the
caller, who knows the context). No bad record stops a file; a `.json` array that breaks stops at the break.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Iterator

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bot": "assistant", "system": "system"}
OPENAI_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class BadRecord(ValueError):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _open_text(path: Path) -> str:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    # utf-8-sig: a byte-order mark (Windows editors write one) would otherwise make the whole file broken JSON
    return raw.decode("utf-8-sig", errors="replace")


def read_records(path: Path) -> Iterator[tuple[int, object]]:
    """(line, record) for every record of a file; a record that is not JSON comes as (line, BadRecord)."""
    text = _open_text(path)
    name = path.name.removesuffix(".gz")
    if name.endswith(".jsonl"):
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    yield n, json.loads(line)
                except json.JSONDecodeError as err:
                    yield n, BadRecord("broken_json", f"not JSON ({err.msg} at column {err.colno})")
        return
    yield from _json_array(text)


def _json_array(text: str) -> Iterator[tuple[int, object]]:
    """Records of a JSON array one by one, with the line each starts on (a break ends the file)."""
    dec, i = json.JSONDecoder(), 0

    def skip(i: int) -> int:
        while i < len(text) and text[i] in " \t\r\n,":
            i += 1
        return i

    i = skip(i)
    if not text.startswith("[", i):  # one record
        try:
            yield text.count("\n", 0, i) + 1, dec.decode(text[i:])
        except json.JSONDecodeError as err:
            yield err.lineno, BadRecord("broken_json", f"not JSON ({err.msg})")
        return
    i = skip(i + 1)
    while i < len(text) and text[i] != "]":
        line = text.count("\n", 0, i) + 1
        try:
            record, i = dec.raw_decode(text, i)
        except json.JSONDecodeError as err:
            yield line, BadRecord("broken_json", f"not JSON ({err.msg} at line {err.lineno}); "
                                  "the rest of the array is unreadable")
            return
        yield line, record
        i = skip(i)


def _text(value, where: str) -> str:
    if isinstance(value, list):  # OpenAI's content parts
        value = "".join(p.get("text", "") for p in value if isinstance(p, dict) and p.get("type") == "text")
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise BadRecord("missing_fields", f"{where} is {type(value).__name__}, not text")
    return value.strip()


def _turns(items, role_key: str, text_key: str, roles: dict[str, str], field: str) -> list[dict]:
    if not isinstance(items, list) or not items:
        raise BadRecord("missing_fields", f"{field} is not a non-empty list")
    out = []
    for k, item in enumerate(items):
        if not isinstance(item, dict) or role_key not in item or text_key not in item:
            raise BadRecord("missing_fields", f"{field}[{k}] lacks {role_key!r} or {text_key!r}")
        role = roles.get(str(item[role_key]).lower())
        if role is None:
            raise BadRecord("unknown_role", f"{field}[{k}].{role_key} is {item[role_key]!r}")
        out.append({"role": role, "content": _text(item[text_key], f"{field}[{k}].{text_key}")})
    return out


def to_conversation(record) -> list[dict]:
    """A record of any known shape -> validated messages; raises BadRecord naming the reason."""
    if isinstance(record, BadRecord):
        raise record
    if not isinstance(record, dict):
        raise BadRecord("not_an_object", f"a record is a JSON object, got {type(record).__name__}")
    if "messages" in record:
        messages = _turns(record["messages"], "role", "content", OPENAI_ROLES, "messages")
    elif "conversations" in record:
        messages = _turns(record["conversations"], "from", "value", SHAREGPT_ROLES, "conversations")
    elif "instruction" in record or "output" in record:
        if "instruction" not in record or "output" not in record:
            raise BadRecord("missing_fields", "an Alpaca record needs both 'instruction' and 'output'")
        user = _text(record["instruction"], "instruction")
        extra = _text(record.get("input"), "input")
        if user and extra:
            user = f"{user}\n\n{extra}"
        system = _text(record.get("system"), "system")
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": user}, {"role": "assistant", "content": _text(record["output"], "output")}]
    else:
        raise BadRecord("missing_fields", f"no 'messages', 'conversations' or 'instruction'/'output' "
                        f"(keys: {', '.join(sorted(map(str, record))[:6]) or 'none'})")
    check_order(messages)
    return messages


def check_order(messages: list[dict]) -> None:
    for k, m in enumerate(messages):
        if not m["content"]:
            raise BadRecord("empty_turn", f"turn {k} ({m['role']}) is empty")
    body = messages[1:] if messages and messages[0]["role"] == "system" else messages
    want = ["user", "assistant"]
    for k, m in enumerate(body):
        if m["role"] != want[k % 2]:
            raise BadRecord("roles_out_of_order", f"turn {k + len(messages) - len(body)} is {m['role']}, expected "
                            f"{want[k % 2]} (an optional system turn, then user and assistant in turn)")
    if not body or body[-1]["role"] != "assistant":
        raise BadRecord("roles_out_of_order", "the conversation does not end with an assistant turn")
