"""Stage finetune: the pretrained model, finetuned on the sft-data examples (the assistant's tokens
only); resumes from data/finetune/checkpoints. Its model is registered as its own MLflow model
(`<tracking.registered_model>-chat`), tagged with the base model it started from. With finetune.mix,
rows of the train split's pretraining tokens join every batch."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from llmpipe.model.weights import load_model, save_model
from llmpipe.stages.registry import StageParams, StageResult, stage
from llmpipe.tokens.examples import TOKENS
from llmpipe.tokens.loader import TokenData
from llmpipe.tokens.shards import MANIFEST
from llmpipe.training.device import trained_precision
from llmpipe.training.finetune import finetune
from llmpipe.util.io import InputError, dvc_lock_out_hashes, dvc_md5, file_sha256, read_json, write_tsv

log = logging.getLogger(__name__)
STAGE = stage("finetune")
COLUMNS = ["step", "loss", "answer_loss", "text_loss", "lr", "grad_norm", "target_tokens_per_s"]


def mixed_text(root: Path, base_config: dict, identity: dict, locked: dict) -> TokenData:
    """The train split that finetune.mix draws from, checked against the base model's tokenizer; its
    manifest's hash (and dvc.lock's) joins the checkpoint identity."""
    token_dir = root / STAGE.inp("tokens")
    text = TokenData(token_dir, "train")
    made_with, model_with = text.manifest.data["tokenizer_sha256"], base_config.get("tokenizer_sha256")
    if model_with is not None and made_with != model_with:
        raise InputError(f"finetune.mix.rows: {token_dir / MANIFEST} was made with tokenizer {made_with[:12]}, the "
                         f"model in {root / STAGE.inp('model')} with {model_with[:12]}; re-run `dvc repro tokenize`")
    identity["tokens_sha256"] = file_sha256(token_dir / MANIFEST)
    identity["tokens_dvc_md5"] = locked.get(str(STAGE.inp("tokens")))
    return text


def run(params: StageParams, root: Path, sink=None) -> StageResult:
    t0 = time.perf_counter()
    base_dir = root / STAGE.inp("model")
    base_md5 = dvc_md5(base_dir)
    train_dir, val_dir = root / STAGE.inp("train"), root / STAGE.inp("val")
    mix = params.finetune.mix.rows
    # A checkpoint is resumed only by a run with the same params, base model, examples (and mixed
    # pretraining tokens) and precision.
    locked = dvc_lock_out_hashes(root)
    identity = {"finetune": params.finetune.model_dump(mode="json"), "base_model_md5": base_md5,
                "train_sha256": file_sha256(train_dir / TOKENS), "train_dvc_md5": locked.get(str(STAGE.inp("train"))),
                "precision": trained_precision(params.finetune)}
    base_config = read_json(base_dir / "config.json")
    text = mixed_text(root, base_config, identity, locked) if mix else None
    result = finetune(params.finetune, load_model(base_dir), train_dir, val_dir, root / STAGE.out("checkpoints"),
                      identity, sink, text=text)
    extra = {k: base_config[k] for k in ("eot_id", "tokenizer_sha256") if k in base_config}
    save_model(result.model, root / STAGE.out("model"), extra={**extra, "base_model_md5": base_md5})
    write_tsv(root / STAGE.out("train"), result.history["train"], COLUMNS)
    metrics = {**result.metrics, "seconds": round(time.perf_counter() - t0, 3),
               "model_dvc_md5": dvc_md5(root / STAGE.out("model")), "base_model_dvc_md5": base_md5}
    # The shell registers it under its own name, tagged with its base (the pretrain model's weights).
    return StageResult(metrics, artifacts=[root / STAGE.out("train")], model_dir=root / STAGE.out("model"),
                       registered_suffix="-chat",
                       model_tags={"base.dvc.out.data/model": base_md5, "base.stage": "pretrain"})
