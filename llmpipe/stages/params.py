"""The whole of params.yaml as one typed tree: what `llmpipe validate` and `llmpipe params` check and
print, and what the Prefect flow validates before any stage runs. A stage process validates only its
own sections (llmpipe.config.sections)."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError, create_model

from llmpipe.config.base import ParamsError, Section, format_errors, read_yaml
from llmpipe.config.sections import SECTIONS, check_top_level, section_model


def _params_model() -> type[Section]:
    fields = {name: (section_model(name), section_model(name)()) for name in SECTIONS}
    return create_model("Params", __base__=Section, **fields)


Params = _params_model()


def parse_params(data: dict, source: Path | str = "params.yaml"):
    check_top_level(data or {}, source)
    try:
        return Params.model_validate(data or {})
    except ValidationError as err:
        raise ParamsError(format_errors(Path(source), err, data)) from None


def load_params(path: Path | str = "params.yaml"):
    return parse_params(read_yaml(path), path)


def params_yaml(params) -> str:
    """The validated tree with every default written out, as params.yaml holds it."""
    return yaml.safe_dump(params.model_dump(), sort_keys=False, allow_unicode=True, width=110)
