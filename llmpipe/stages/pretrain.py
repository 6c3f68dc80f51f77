"""Stage 6, pretrain: train the GPT on the token shards; resume from data/checkpoints when present."""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

from tokenizers import Tokenizer

from llmpipe.evals.suite import inloop_evaluator
from llmpipe.evals.tasks import read_items
from llmpipe.model.weights import save_model
from llmpipe.stages.registry import StageParams, StageResult, stage
from llmpipe.tokens.bpe import EOT
from llmpipe.tokens.shards import MANIFEST, load_manifest
from llmpipe.training import data_order
from llmpipe.training.budget import pace_for, resolve_budget
from llmpipe.training.device import trained_precision
from llmpipe.training.loop import train
from llmpipe.training.parallel import is_main_process
from llmpipe.util.io import dvc_lock_out_hashes, dvc_md5, write_tsv
from llmpipe.util.plots import loss_curve_png

log = logging.getLogger(__name__)
STAGE = stage("pretrain")

TRAIN_COLUMNS = ["step", "tokens", "loss", "lr", "grad_norm", "tokens_per_s"]
VAL_COLUMNS = ["step", "tokens", "val_loss"]


def inloop_evaluator_for(root: Path):
    """The in-loop benchmark items chosen by the tasks stage (none: no in-loop evaluation)."""
    items = read_items(root / STAGE.inp("inloop"))
    if not items:
        return None
    tok = Tokenizer.from_file(str(root / STAGE.inp("tokenizer")))
    return inloop_evaluator(items, tok, tok.token_to_id(EOT))


def run(params: StageParams, root: Path, sink=None) -> StageResult:
    t0 = time.perf_counter()
    token_dir = root / STAGE.inp("tokens")
    manifest = load_manifest(token_dir)
    # A checkpoint is resumed only by a run with the same params, data and precision.
    identity = {
        "pretrain": params.pretrain.model_dump(mode="json"),
        "data_sha256": hashlib.sha256((token_dir / MANIFEST).read_bytes()).hexdigest(),
        "data_dvc_md5": dvc_lock_out_hashes(root).get(str(STAGE.inp("tokens"))),
        "precision": trained_precision(params.pretrain),
    }
    # issue 18's dial: a budget becomes a shape and a number of steps measured on this machine
    cfg, plan, identity = resolve_budget(params.pretrain, token_dir, root / STAGE.out("checkpoints"),
                                         manifest.vocab_size, identity)
    result = train(cfg, token_dir, root / STAGE.out("checkpoints"), manifest.vocab_size, identity, sink,
                   on_eval=inloop_evaluator_for(root), pace=pace_for(plan))
    metrics = {**result.metrics, "seconds": round(time.perf_counter() - t0, 3)}
    if plan:  # machine-dependent: recorded with the run (metrics, and so MLflow and lineage)
        metrics.update({f"budget_{k}": v for k, v in plan.items() if k != "candidates"})
        metrics.update({"n_layer": cfg.model.n_layer, "d_model": cfg.model.d_model, "n_head": cfg.model.n_head})
    if not is_main_process():  # under torchrun only rank 0 writes
        return StageResult(metrics)
    # how its batches were drawn, and from which tokens: `llmpipe lineage --step N` recomputes any step's rows
    order = {**result.history[data_order.KEY], "steps": result.step, "data_sha256": identity["data_sha256"],
             "data_dvc_md5": identity["data_dvc_md5"]}
    save_model(result.model, root / STAGE.out("model"), extra={"eot_id": manifest.eot_id, data_order.KEY: order,
                                                         "tokenizer_sha256": manifest.data["tokenizer_sha256"]})
    # The weights' own version, as DVC will record it in dvc.lock: the registered model carries it, so
    # lineage can tell this model from one a committed dvc.lock names (trained elsewhere, or in another
    # precision: weights differ between CPU kinds and precisions).
    metrics["model_dvc_md5"] = dvc_md5(root / STAGE.out("model"))
    write_tsv(root / STAGE.out("train"), result.history["train"], TRAIN_COLUMNS)
    write_tsv(root / STAGE.out("val"), result.history["val"], VAL_COLUMNS)
    bench = result.history.get("bench", [])
    write_tsv(root / STAGE.out("bench"), bench, list(bench[0]) if bench else ["step", "tokens", "acc_norm"])
    if bench:
        metrics.update({f"inloop_{k}": v for k, v in bench[-1].items() if k not in ("step", "tokens")})
    loss_curve_png(result.history["train"], result.history["val"], root / STAGE.out("loss_png"),
                   title=f"{metrics['params'] / 1e6:.2f}M parameters, {metrics['tokens']:,} tokens")
    return StageResult(metrics, artifacts=[root / STAGE.out("train"), root / STAGE.out("val"), root / STAGE.out("bench"),
                                          root / STAGE.out("loss_png")],
                       model_dir=root / STAGE.out("model"))
