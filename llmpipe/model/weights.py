"""A trained model on disk: config.json + model.safetensors (no pickle anywhere)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from llmpipe.model.gpt import GPT, GPTConfig
from llmpipe.model.folder import CONFIG, PASS_THROUGH, WEIGHTS, is_pass_through  # noqa: F401  (re-exported)
from llmpipe.util.io import InputError, atomic_path, read_json, read_safetensors, write_json



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
    fields = GPTConfig.model_fields
    cfg = GPTConfig(**{k: v for k, v in raw.items() if k in fields})
    model = GPT(cfg)
    state = read_safetensors(model_dir / WEIGHTS)
    load_weights(model, state, model_dir / WEIGHTS)
    return model.to(device).eval()


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Weights of an unsharded model as detached CPU copies, each storage once: tied weights are saved
    under their first name (safetensors refuses shared storage)."""
    seen, out = set(), {}
    for k, v in model.state_dict().items():
        if v.data_ptr() in seen:
            continue
        seen.add(v.data_ptr())
        out[k] = v.detach().cpu().contiguous()
    return out


def with_tied(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A saved state completed with the tied head that model_state dropped."""
    if getattr(model.cfg, "tie_embeddings", False) and "tok_emb.weight" in state:
        return {**state, "lm_head.weight": state["tok_emb.weight"]}
    return state


def check_names(missing: list[str], unexpected: list[str], source: Path | str) -> None:
    if missing or unexpected:
        raise InputError(f"{source}: does not match the model (missing {missing}, unexpected {unexpected})")


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], source: Path | str) -> None:
    """Load weights saved by model_state into an unsharded model; refuse any mismatch by name."""
    check_names(*model.load_state_dict(with_tied(model, state), strict=False), source)
