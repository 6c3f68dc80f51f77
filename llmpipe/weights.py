"""A trained model on disk: config.json + model.safetensors (no pickle anywhere)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from .io import atomic_path, read_json, read_safetensors, write_json
from .model import GPT, GPTConfig
from .train import load_weights, model_state

WEIGHTS, CONFIG = "model.safetensors", "config.json"


def save_model(model: GPT, out_dir: Path, extra: dict | None = None) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / WEIGHTS) as tmp:
        # One metadata key: safetensors writes a metadata map in hash order, so two keys would make the
        # bytes (and the DVC hash) of identical weights differ from run to run. The config is config.json.
        save_file(model_state(model), str(tmp), metadata={"format": "pt"})
    write_json(out_dir / CONFIG, {**model.cfg.to_dict(), **(extra or {})})


def load_model(model_dir: Path | str, device: str | torch.device = "cpu") -> GPT:
    model_dir = Path(model_dir)
    raw = read_json(model_dir / CONFIG)
    fields = GPTConfig.__dataclass_fields__
    cfg = GPTConfig(**{k: v for k, v in raw.items() if k in fields})
    model = GPT(cfg)
    state = read_safetensors(model_dir / WEIGHTS)
    load_weights(model, state, model_dir / WEIGHTS)
    return model.to(device).eval()
