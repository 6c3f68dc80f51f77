import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from llmpipe.config.pretrain import PretrainParams
from llmpipe.tokens.loader import TokenData
from llmpipe.training.device import ASSUME_BF16_ENV, cpu_has_native_bf16, resolve_dtype
from llmpipe.training.evaluate import evaluate_model
from llmpipe.training.loop import TrainingDiverged, train
from llmpipe.training.optim import lr_at

from tests.toy_tokens import write_toy_tokens

VOCAB = 64


@pytest.fixture()
def token_dir(tmp_path):
    """A learnable toy language: repeated arithmetic sequences."""
    return write_toy_tokens(tmp_path / "tokens", VOCAB)


def cfg(**kw):
    base = dict(model={"n_layer": 2, "n_head": 2, "d_model": 32, "block_size": 32}, micro_batch_size=8,
                max_steps=40, warmup_steps=4, lr=0.01, eval_interval=20, eval_batches=2, log_interval=5,
                checkpoint_interval=10, threads=1)
    base.update(kw)
    return PretrainParams.model_validate(base)


def test_lr_schedule_warmup_then_cosine_to_floor():
    c = cfg(max_steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(0, c) == pytest.approx(0.1)
    assert lr_at(9, c) == pytest.approx(1.0)
    assert lr_at(55, c) == pytest.approx(0.55)
    assert lr_at(100, c) == pytest.approx(0.1)


def test_training_learns_and_logs(token_dir, tmp_path):
    seen = []
    res = train(cfg(), token_dir, tmp_path / "ckpt", VOCAB, {"id": 1}, sink=lambda m, s: seen.append((s, m)))
    losses = [r["loss"] for r in res.history["train"]]
    assert losses[-1] < losses[0] - 1.0
    assert [r["step"] for r in res.history["val"]] == [20, 40]
    assert any("val_loss" in m for _, m in seen) and any("tokens_per_s" in m for _, m in seen)
    assert (tmp_path / "ckpt" / "model.safetensors").exists()
    assert json.loads((tmp_path / "ckpt" / "state.json").read_text())["step"] == 40
    ev = evaluate_model(res.model, TokenData(token_dir, "val"), np.ones(VOCAB, dtype=np.int64), 4)
    assert ev["bits_per_byte"] == pytest.approx(ev["val_loss"] / np.log(2), rel=1e-9)


def test_resume_is_bitwise_identical(token_dir, tmp_path):
    c = cfg(max_steps=30, checkpoint_interval=10, model={"n_layer": 2, "n_head": 2, "d_model": 32,
                                                         "block_size": 32, "dropout": 0.1})
    full = train(c, token_dir, tmp_path / "a", VOCAB, {"id": 1})
    train(c, token_dir, tmp_path / "b", VOCAB, {"id": 1}, stop_after=20)  # "killed" after step 20
    resumed = train(c, token_dir, tmp_path / "b", VOCAB, {"id": 1})
    a, b = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.history["train"][-1]["loss"] == full.history["train"][-1]["loss"]


def test_checkpoint_of_other_params_is_not_resumed(token_dir, tmp_path):
    train(cfg(max_steps=10), token_dir, tmp_path / "c", VOCAB, {"id": 1})
    res = train(cfg(max_steps=10), token_dir, tmp_path / "c", VOCAB, {"id": 2})
    assert res.history["train"][0]["step"] == 5  # started again from step 0


def test_nan_loss_stops_with_clear_error_and_keeps_checkpoint(token_dir, tmp_path):
    with pytest.raises(TrainingDiverged, match="loss is|non-finite weights"):
        # an absurd learning rate (past the params bound, so set around validation) blows the weights up
        diverging = cfg(max_steps=40, warmup_steps=0, grad_clip=0.0, checkpoint_interval=1).model_copy(
            update={"lr": 1e30, "min_lr_ratio": 1.0})
        train(diverging, token_dir,
              tmp_path / "d", VOCAB, {"id": 1})
    if (tmp_path / "d" / "state.json").exists():  # whatever was kept holds finite weights only
        weights = load_file(str(tmp_path / "d" / "model.safetensors"))
        assert all(torch.isfinite(w).all() for w in weights.values())


def test_compiled_model_trains_like_the_eager_one(token_dir, tmp_path):
    # exact fp32: under bf16 autocast inductor fuses and rounds differently from eager
    c = dict(max_steps=5, log_interval=1, precision="fp32")
    eager = train(cfg(**c), token_dir, tmp_path / "e", VOCAB, {"id": 1})
    compiled = train(cfg(compile=True, **c), token_dir, tmp_path / "c", VOCAB, {"id": 1})
    a = [r["loss"] for r in eager.history["train"]]
    b = [r["loss"] for r in compiled.history["train"]]
    assert b == pytest.approx(a, rel=1e-3)
    assert (tmp_path / "c" / "model.safetensors").exists()  # saved from the uncompiled module: plain keys


def test_batch_tokens_sets_accumulation(token_dir, tmp_path):
    from llmpipe.util.io import InputError
    from llmpipe.training.optim import accumulation_steps
    c = cfg(micro_batch_size=4, batch_tokens=4 * 32 * 3, max_steps=2, warmup_steps=1, log_interval=1)
    assert accumulation_steps(c, world=1) == 3
    with pytest.raises(InputError, match="pretrain.batch_tokens"):
        accumulation_steps(c, world=2)
    same = cfg(micro_batch_size=4, grad_accum_steps=3, max_steps=2, warmup_steps=1, log_interval=1)
    a = train(c, token_dir, tmp_path / "a", VOCAB, {"id": 1}).history["train"]
    b = train(same, token_dir, tmp_path / "b", VOCAB, {"id": 1}).history["train"]
    assert [r["loss"] for r in a] == [r["loss"] for r in b] and a[-1]["tokens"] == 2 * 4 * 32 * 3


def test_auto_precision_is_bf16_exactly_on_cpus_with_bf16_units():
    """`precision: auto` picks bf16 autocast only where the CPU has bf16 matrix units (AMX or
    AVX512-BF16): elsewhere bf16 is far slower than fp32. Both answers are checked against /proc/cpuinfo,
    so the test holds on either kind of machine."""
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    has_units = "avx512_bf16" in flags or "amx_bf16" in flags
    if os.environ.get(ASSUME_BF16_ENV) in ("0", "1"):  # the suite run as the other CPU kind (README)
        has_units = os.environ[ASSUME_BF16_ENV] == "1"
    assert cpu_has_native_bf16() == has_units
    cpu = torch.device("cpu")
    assert resolve_dtype(cfg(), cpu) == (torch.bfloat16 if has_units else torch.float32)
    assert resolve_dtype(cfg(precision="fp32"), cpu) == torch.float32
    assert resolve_dtype(cfg(precision="bf16"), cpu) == torch.bfloat16


def test_bf16_training_learns_on_any_cpu(token_dir, tmp_path):
    """bf16 autocast on the CPU, forced, so it runs on machines without bf16 units too (slower there):
    it learns, reports bf16, and resumes exactly."""
    c = cfg(max_steps=20, checkpoint_interval=10, precision="bf16")
    full = train(c, token_dir, tmp_path / "a", VOCAB, {"id": 1})
    losses = [r["loss"] for r in full.history["train"]]
    assert full.metrics["precision"] == "bfloat16" and losses[-1] < losses[0] - 0.5
    train(c, token_dir, tmp_path / "b", VOCAB, {"id": 1}, stop_after=10)
    resumed = train(c, token_dir, tmp_path / "b", VOCAB, {"id": 1})
    assert [r["loss"] for r in resumed.history["train"]] == losses


def test_loss_curve_png(tmp_path):
    from llmpipe.util.plots import loss_curve_png

    train_rows = [{"tokens": 100 * i, "loss": 5.0 - 0.1 * i} for i in range(1, 11)]
    val_rows = [{"tokens": 500, "val_loss": 4.6}, {"tokens": 1000, "val_loss": 4.2}]
    loss_curve_png(train_rows, val_rows, tmp_path / "loss.png", title="t")
    data = (tmp_path / "loss.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # written atomically, no leftovers
