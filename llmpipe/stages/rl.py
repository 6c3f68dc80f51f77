"""Stage rl: the finetuned model, trained further on the TRAIN questions with a checkable answer, by a
group-baseline policy gradient on exact-match rewards (llmpipe.training.grpo); resumes from
data/rl/checkpoints. Held-out items are never read: chat-eval scores them afterwards.

A run that stops early (a NaN loss, or every sampled answer the same rl.collapse_steps steps in a row)
writes the last good checkpoint as its model, says so in its metrics (`stopped`, `model_step`) and
fails with that message. A finished run's model is registered as `<tracking.registered_model>-rl`,
tagged with the finetuned model it started from."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from tokenizers import Tokenizer

from llmpipe.evals.trivial import check_of, is_checkable
from llmpipe.model.weights import PASS_THROUGH, WEIGHTS, load_model, save_model
from llmpipe.stages.registry import StageParams, StageResult, stage
from llmpipe.tokens.chat import ChatFormat, check_reply_budget, prompt_and_reference
from llmpipe.tokens.examples import CONVERSATIONS, read_conversations
from llmpipe.training.device import trained_precision
from llmpipe.training.grpo import Question, grpo
from llmpipe.util.io import InputError, dvc_md5, file_sha256, read_json, write_tsv

log = logging.getLogger(__name__)
STAGE = stage("rl")
COLUMNS = ["step", "mean_reward", "distinct_answers", "answers", "group_distinct", "learning_groups",
           "answer_tokens", "loss", "lr", "grad_norm", "seconds", "top_answer"]


def questions_of(conversations: list[dict], fmt: ChatFormat) -> list[Question]:
    out = []
    for c in conversations:
        prompt, _ = prompt_and_reference(c["messages"])
        out.append(Question(fmt.prompt(prompt), check_of(c)))
    return out


def pass_through(sft_dir: Path, root: Path, t0: float) -> StageResult:
    """rl.enabled: false: the finetuned weights unchanged, marked so that chat-eval and the model choice
    (llmpipe.ops.models) pass over them; nothing to register."""
    out = root / STAGE.out("model")
    save_model(load_model(sft_dir), out, extra={**read_json(sft_dir / "config.json"), PASS_THROUGH: True})
    (root / STAGE.out("checkpoints")).mkdir(parents=True, exist_ok=True)
    write_tsv(root / STAGE.out("train"), [], COLUMNS)
    log.info("rl: disabled (rl.enabled: false); the finetuned model passes through unchanged")
    return StageResult({"enabled": 0, "steps": 0, "seconds": round(time.perf_counter() - t0, 3),
                        "model_dvc_md5": dvc_md5(out), "base_model_dvc_md5": dvc_md5(sft_dir)},
                       artifacts=[root / STAGE.out("train")])


def run(params: StageParams, root: Path, sink=None) -> StageResult:
    t0 = time.perf_counter()
    cfg = params.rl
    sft_dir, train_dir, tok_path = (root / STAGE.inp(k) for k in ("model", "train", "tokenizer"))
    if not (sft_dir / WEIGHTS).exists():
        raise InputError(f"missing finetuned model {STAGE.inp('model') / WEIGHTS} (made by the finetune stage: "
                         "run `dvc repro finetune`)")
    if not cfg.enabled:
        return pass_through(sft_dir, root, t0)
    try:
        fmt = ChatFormat(Tokenizer.from_file(str(tok_path)))
    except ValueError as err:
        raise InputError(f"{STAGE.inp('tokenizer')}: {err}") from None
    items = [c for c in read_conversations(train_dir) if is_checkable(c)]
    if not items:
        raise InputError(f"{STAGE.inp('train') / CONVERSATIONS}: no train item with a checkable answer (rl rewards "
                         "exact match on the demo's questions: enable sft_data.demo, or set rl.enabled: false)")
    check_reply_budget(items, fmt, cfg.max_new_tokens, "rl.max_new_tokens")
    sft_md5 = dvc_md5(sft_dir)
    # A checkpoint is resumed only by a run with the same params, finetuned model, questions and precision.
    identity = {"rl": cfg.model_dump(mode="json"), "sft_model_md5": sft_md5,
                "train_sha256": file_sha256(train_dir / CONVERSATIONS), "tokenizer_sha256": file_sha256(tok_path),
                "precision": trained_precision(cfg)}
    result = grpo(cfg, load_model(sft_dir), fmt, questions_of(items, fmt), root / STAGE.out("checkpoints"), identity,
                  sink)
    sft_config = read_json(sft_dir / "config.json")
    extra = {k: sft_config[k] for k in ("eot_id", "tokenizer_sha256") if k in sft_config}
    save_model(result.model, root / STAGE.out("model"), extra={**extra, "base_model_md5": sft_md5})
    write_tsv(root / STAGE.out("train"), result.history["train"], COLUMNS)
    metrics = {**result.metrics, "enabled": 1, "questions": len(items), "seconds": round(time.perf_counter() - t0, 3),
               "model_dvc_md5": dvc_md5(root / STAGE.out("model")), "base_model_dvc_md5": sft_md5,
               "stopped": result.failure or "no"}
    log.info("rl: mean reward %.3f over the first quarter of steps, %.3f over the last (%d steps, %d questions)",
             metrics.get("mean_reward_first", 0.0), metrics.get("mean_reward_last", 0.0), result.step, len(items))
    # The shell registers a finished run's model under its own name, tagged with its base (the SFT weights).
    return StageResult(metrics, artifacts=[root / STAGE.out("train")], model_dir=root / STAGE.out("model"),
                       registered_suffix="-rl", base_registered_suffix="-chat",
                       model_tags={f"base.dvc.out.{STAGE.inp('model').as_posix()}": sft_md5, "base.stage": "finetune"},
                       failure=result.failure)
