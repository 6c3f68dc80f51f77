"""A model folder's names, readable without torch (the CLI's model choice, llmpipe.ops.models)."""

from __future__ import annotations

from pathlib import Path

from llmpipe.util.io import read_json

WEIGHTS, CONFIG = "model.safetensors", "config.json"
PASS_THROUGH = "pass_through"  # config.json key of a stage's model that is its input's, unchanged


def is_pass_through(model_dir: Path) -> bool:
    """A model a stage passed through unchanged (rl.enabled: false): not a model of its own."""
    try:
        return bool(read_json(Path(model_dir) / CONFIG).get(PASS_THROUGH))
    except (OSError, ValueError):
        return False
