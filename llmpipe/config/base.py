"""The base of every params section, and how invalid params are reported.

Every section of params.yaml maps onto one pydantic model that forbids unknown keys and bounds its
numbers, so a typo or a wrong value stops the run with a message naming the key (exit status 2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError



def known(lookup, what: str):
    """A validator: the value must be one `lookup` (codecs.lookup, zoneinfo.ZoneInfo) accepts."""
    def check(value: str) -> str:
        try:
            lookup(value)
        except Exception:  # noqa: BLE001 - LookupError, ZoneInfoNotFoundError, ValueError
            raise ValueError(f"unknown {what} {value!r}") from None
        return value
    return AfterValidator(check)


# numpy's generators refuse negative seeds; datasketch's RandomState (dedup) also those >= 2**32.
Seed = Annotated[int, Field(ge=0, lt=2**32)]
NgramSize = Annotated[int, Field(ge=1, le=64)]


class ParamsError(ValueError):
    """params.yaml is unreadable or invalid; the message names the file and the key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _tag_free_location(loc: tuple, data: Any) -> str:
    """A dotted key without the tags pydantic puts in the location of tagged unions
    (scrape.sources.0.local.paths -> scrape.sources.0.paths): walking the input, a part that is the
    `kind` of the item it stands at is a tag, not a key."""
    parts, node = [], data
    for part in loc:
        if isinstance(node, dict) and part not in node and node.get("kind") == part:
            continue
        parts.append(str(part))
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            node = None
    return ".".join(parts) or "<top level>"


def format_errors(path: Path | str, err: ValidationError, data: Any = None, prefix: tuple = ()) -> str:
    """The errors of a validation, one line per key, under a heading naming where they come from."""
    lines = [f"{path}: invalid parameters"]
    for e in err.errors():
        loc = _tag_free_location(prefix + tuple(e["loc"]), data)
        if e["type"] == "extra_forbidden":
            lines.append(f"  {loc}: unknown key")
        else:
            lines.append(f"  {loc}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def read_yaml(path: Path | str) -> dict:
    """params.yaml as a mapping of sections; unreadable or malformed files are ParamsErrors."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    if data is not None and not isinstance(data, dict):
        raise ParamsError(f"{path}: top level must be a mapping of sections")
    return data or {}
