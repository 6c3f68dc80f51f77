"""Which of the workspace's models a tool uses: the newest chat model by default, else the base model.

The stages that make a chat model are listed newest first (a later stage's model starts from the one
before it); a stage named here but not (yet) in the registry is looked up at `data/<stage>/model`, so a
reward stage added later is picked up by adding nothing but the stage. `llmpipe serve`, `llmpipe chat`
and `llmpipe export` all choose through this module:

    chat   the first chat model that exists (`data/rl/model`, then `data/finetune/model`; a model a stage
           passed through unchanged, rl with rl.enabled: false, does not count)
    base   the pretrained model (`data/model`)
    <path> a model folder (model.safetensors + config.json)
    models:/NAME/VERSION   a registered MLflow model version (downloaded; export only)
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from llmpipe.model.folder import WEIGHTS, is_pass_through
from llmpipe.stages.registry import stage
from llmpipe.util.io import InputError

CHAT_STAGES = ("rl", "finetune")  # newest first


def stage_model(root: Path, name: str) -> Path:
    """Where stage `name` writes its model (data/<name>/model for a stage not in the registry)."""
    try:
        return root / stage(name).out("model")
    except KeyError:
        return root / "data" / name / "model"


def base_model(root: Path) -> Path:
    return root / stage("pretrain").out("model")


def chat_model(root: Path) -> Path | None:
    """The newest chat model present, or None."""
    return next((d for d in (stage_model(root, s) for s in CHAT_STAGES)
                 if (d / WEIGHTS).exists() and not is_pass_through(d)), None)


def default_model(root: Path) -> Path:
    """The newest chat model when one exists, else the base model."""
    return chat_model(root) or base_model(root)


def workspace_model(root: Path, spec: str | None) -> Path:
    """`chat`, `base`, a folder, or None (the default) -> a model folder that holds weights."""
    if spec in (None, "", "default"):
        found = default_model(root)
    elif spec == "chat":
        found = chat_model(root)
        if found is None:
            raise InputError("--model chat: no chat model in this workspace (looked for "
                             f"{', '.join(str(stage_model(root, s)) for s in CHAT_STAGES)}; run `dvc repro finetune`)")
    elif spec == "base":
        found = base_model(root)
    else:
        found = Path(spec)  # a folder, relative to where the command runs
    if not (found / WEIGHTS).exists():
        raise InputError(f"missing {found / WEIGHTS} (run the pipeline, e.g. `dvc repro pretrain`, or name another "
                         "model)")
    return found


@contextmanager
def export_source(args) -> Iterator[tuple[Path, Path]]:
    """The model folder and tokenizer `llmpipe export` reads: --model (chat, base, a folder or
    models:/NAME/VERSION) or --registered NAME/VERSION; a registered version is downloaded into a temporary
    folder that lasts as long as the context. Its tokenizer is the artifact's tokenizer.json when it has
    one, else the workspace's (a finetune keeps its base model's tokenizer)."""
    spec = args.model
    if getattr(args, "registered", None):
        if spec:
            raise InputError("give --model or --registered, not both")
        spec = args.registered if args.registered.startswith("models:/") else f"models:/{args.registered}"
    tokenizer = args.root / stage("sample").inp("tokenizer")
    if spec and spec.startswith("models:/"):
        from llmpipe.ops.tracking import download_model_version

        with tempfile.TemporaryDirectory(prefix="llmpipe-export-") as tmp:
            folder = download_model_version(args.root, spec, Path(tmp))
            own = folder / "tokenizer.json"
            yield folder, own if own.exists() else tokenizer
        return
    yield workspace_model(args.root, spec), tokenizer
