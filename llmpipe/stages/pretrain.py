"""Stage 6, pretrain: train the GPT on the token shards; resume from data/checkpoints when present."""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

from .. import layout
from ..config import Params
from ..io import atomic_path, dvc_lock_out_hashes, dvc_md5
from ..plots import loss_curve_png
from ..tokens import MANIFEST, load_manifest
from ..train import is_main_process, train
from ..weights import save_model
from .base import StageResult

log = logging.getLogger(__name__)

TRAIN_COLUMNS = ["step", "tokens", "loss", "lr", "grad_norm", "tokens_per_s"]
VAL_COLUMNS = ["step", "tokens", "val_loss"]


def write_tsv(path: Path, rows: list[dict], columns: list[str]) -> None:
    lines = ["\t".join(columns)] + ["\t".join(str(r.get(c, "")) for c in columns) for r in rows]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def run(params: Params, root: Path, sink=None) -> StageResult:
    t0 = time.perf_counter()
    token_dir = root / layout.TOKENS
    manifest = load_manifest(token_dir)
    # A checkpoint is resumed only by a run with the same params and the same data.
    identity = {
        "pretrain": params.pretrain.model_dump(mode="json"),
        "data_sha256": hashlib.sha256((token_dir / MANIFEST).read_bytes()).hexdigest(),
        "data_dvc_md5": dvc_lock_out_hashes(root).get(str(layout.TOKENS)),
    }
    result = train(params.pretrain, token_dir, root / layout.CHECKPOINTS, manifest.vocab_size, identity, sink)
    metrics = {**result.metrics, "seconds": round(time.perf_counter() - t0, 3)}
    if not is_main_process():  # under torchrun only rank 0 writes
        return StageResult(metrics)
    save_model(result.model, root / layout.MODEL, extra={"eot_id": manifest.eot_id,
                                                         "tokenizer_sha256": manifest.data["tokenizer_sha256"]})
    # The weights' own version, as DVC will record it in dvc.lock: the registered model carries it, so
    # lineage can tell this model from one a committed dvc.lock names (trained elsewhere, or in another
    # precision: weights differ between CPU kinds and precisions).
    metrics["model_dvc_md5"] = dvc_md5(root / layout.MODEL)
    write_tsv(root / layout.TRAIN_PLOT, result.history["train"], TRAIN_COLUMNS)
    write_tsv(root / layout.VAL_PLOT, result.history["val"], VAL_COLUMNS)
    loss_curve_png(result.history["train"], result.history["val"], root / layout.LOSS_PNG,
                   title=f"{metrics['params'] / 1e6:.2f}M parameters, {metrics['tokens']:,} tokens")
    return StageResult(metrics, artifacts=[root / layout.TRAIN_PLOT, root / layout.VAL_PLOT, root / layout.LOSS_PNG],
                       model_dir=root / layout.MODEL)
