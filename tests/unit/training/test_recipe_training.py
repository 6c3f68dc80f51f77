"""The speedrun recipe's training options (issue 18): Muon, the warmup-stable-decay schedule and
document-aligned batches; they learn and resume exactly, Muon's momentum included."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from llmpipe.model.gpt import GPT, GPTConfig
from llmpipe.tokens.loader import TokenData
from llmpipe.tokens.shards import ShardWriter, write_manifest
from llmpipe.training.loop import train
from llmpipe.training.muon import NS_COEFFS, MuonAdamW, orthogonalize, orthogonalize_all
from llmpipe.training.optim import lr_at, make_optimizer

from tests.unit.training.test_train import VOCAB, cfg, token_dir  # noqa: F401  (fixture)

RECIPE = dict(optimizer="muon", schedule="wsd", doc_aligned=True,
              model={"n_layer": 2, "n_head": 2, "d_model": 32, "block_size": 32, "qk_norm": True, "mlp": "relu2",
                     "tie_embeddings": False, "zero_init_head": True, "logit_softcap": 15.0, "value_embeds": True})


def test_wsd_schedule_is_warmup_flat_then_linear_to_the_floor():
    c = cfg(max_steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1, schedule="wsd", decay_frac=0.2)
    assert lr_at(0, c) == pytest.approx(0.1)
    assert lr_at(9, c) == lr_at(50, c) == lr_at(80, c) == pytest.approx(1.0)
    assert lr_at(90, c) == pytest.approx(0.55)
    assert lr_at(100, c) == pytest.approx(0.1)


def test_newton_schulz_orthogonalizes_tall_and_wide_matrices():
    torch.manual_seed(0)
    for rows, cols in [(64, 16), (16, 64), (32, 32)]:
        k = min(rows, cols)
        u, v = torch.linalg.qr(torch.randn(rows, k))[0], torch.linalg.qr(torch.randn(cols, k))[0]
        g = 7.0 * u @ torch.diag(torch.logspace(-1.5, 0, k)) @ v.t()  # singular values spread 30x
        o = orthogonalize(g)
        s = torch.linalg.svdvals(o)
        assert s.min() > 0.6 and s.max() < 1.25, (rows, cols, s)
        assert torch.allclose(u.t() @ o @ v, torch.diag(torch.diagonal(u.t() @ o @ v)), atol=1e-3)  # g's vectors


def ns_alone(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """The iteration on one matrix, as Muon ran it before the batching: the reference of the tests below."""
    a, b, c = NS_COEFFS
    x = g.t() if g.size(0) > g.size(1) else g
    x = x / (x.norm() + 1e-7)
    for _ in range(steps):
        gram = x @ x.t()
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.t() if g.size(0) > g.size(1) else x


def test_newton_schulz_batched_by_shape_gives_each_matrix_its_own_result():
    """Matrices of one shape (a tall one counted with its transpose's) go through the iteration as one
    batch; each comes back in its own place and orientation, as if orthogonalized alone."""
    torch.manual_seed(0)
    mats = [torch.randn(s) for s in [(16, 48), (48, 16), (16, 16), (16, 48), (32, 16), (16, 16)]]
    for g, o in zip(mats, orthogonalize_all(mats)):
        assert o.shape == g.shape
        assert torch.allclose(o, ns_alone(g), atol=1e-5)


class PerMatrixMuon(MuonAdamW):
    """Muon's step as it was before the batching: each matrix alone, row block by row block."""

    def _muon(self, params):
        for p, group in params:
            g = self.nesterov(p, group)  # the momentum is shared; what is compared is the orthogonalization
            blocks = g.split(group["split"]) if group["split"] else [g]
            update = torch.cat([ns_alone(m, group["ns_steps"]) * max(1.0, m.size(0) / m.size(1)) ** 0.5
                                for m in blocks])
            if group["weight_decay"]:
                p.mul_(1 - group["lr"] * group["weight_decay"])
            p.add_(update, alpha=-group["lr"])


def test_batched_muon_steps_every_matrix_as_the_per_matrix_loop_did():
    """Two steps of the whole optimizer on random gradients: the fused q/k/v and SwiGLU blocks, groups
    with their own Newton-Schulz steps and decay, each matrix updated in its own place."""
    c = cfg(**{**RECIPE, "model": {**RECIPE["model"], "mlp": "swiglu", "n_head": 4, "n_kv_head": 2}})  # GQA
    models, opts = [], []
    for kind in (MuonAdamW, PerMatrixMuon):
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=VOCAB, **c.model.model_dump()))
        opt = make_optimizer(model, c, torch.device("cpu"))
        opt.__class__ = kind
        split_group = next(g for g in opt.param_groups if g["muon"] and g["split"])
        split_group.update(ns_steps=3, weight_decay=0.1)  # a group unlike the others
        models.append(model)
        opts.append(opt)
    splits = [g["split"] for g in opts[0].param_groups if g["muon"]]
    assert len(splits) == 3 and [32, 16, 16] in splits  # q, k, v (GQA); SwiGLU's halves; the rest whole
    gen = torch.Generator().manual_seed(1)
    for _ in range(2):
        grads = [torch.randn(p.shape, generator=gen) for p in models[0].parameters()]
        for model, opt in zip(models, opts):
            for p, g in zip(model.parameters(), grads):
                p.grad = g.clone()
            opt.step()
    for (name, a), b in zip(models[0].named_parameters(), models[1].parameters()):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5), name


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest():
    c = cfg(**RECIPE)
    model = GPT(GPTConfig(vocab_size=VOCAB, **c.model.model_dump()))
    opt = make_optimizer(model, c, torch.device("cpu"))
    assert isinstance(opt, MuonAdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    muon = {names[id(p)] for g in opt.param_groups if g["muon"] for p in g["params"]}
    other = {names[id(p)] for g in opt.param_groups if not g["muon"] for p in g["params"]}
    assert muon == {n for n, p in model.named_parameters() if n.startswith("blocks.") and p.dim() == 2}
    assert {"tok_emb.weight", "lm_head.weight", "value_emb.weight", "blocks.0.attn.ve_gate"} <= other
    split = next(g["split"] for g in opt.param_groups if g["muon"] and g["split"])
    assert split == [32, 32, 32]  # q, k and v of the fused matrix, orthogonalized one by one


def test_recipe_learns_and_resumes_bitwise_with_muon_state(token_dir, tmp_path):  # noqa: F811
    c = cfg(max_steps=30, checkpoint_interval=10, lr=0.01, **RECIPE)
    full = train(c, token_dir, tmp_path / "a", VOCAB, {"id": 1})
    losses = [r["loss"] for r in full.history["train"]]
    assert losses[-1] < losses[0] - 1.0
    train(c, token_dir, tmp_path / "b", VOCAB, {"id": 1}, stop_after=20)  # "killed" after step 20
    tensors = load_file(str(tmp_path / "b" / "optimizer.safetensors"))
    assert any(k.endswith("momentum_buffer") for k in tensors) and any(k.endswith("exp_avg") for k in tensors)
    resumed = train(c, token_dir, tmp_path / "b", VOCAB, {"id": 1})
    a, b = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.history["train"][-1]["loss"] == full.history["train"][-1]["loss"]
    groups = json.loads((tmp_path / "b" / "state.json").read_text())["optimizer"]["param_groups"]
    assert any(g["muon"] for g in groups) and any(not g["muon"] for g in groups)


def test_repeat_rows_change_the_run_and_it_resumes_bitwise(token_dir, tmp_path):  # noqa: F811
    c = cfg(max_steps=12, checkpoint_interval=6, repeat_share=0.5)
    train(c, token_dir, tmp_path / "a", VOCAB, {"id": 1})
    train(c, token_dir, tmp_path / "b", VOCAB, {"id": 1}, stop_after=6)
    train(c, token_dir, tmp_path / "b", VOCAB, {"id": 1})
    train(cfg(max_steps=12, checkpoint_interval=6), token_dir, tmp_path / "plain", VOCAB, {"id": 1})
    a, b, plain = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("a", "b", "plain"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], plain[k]) for k in a)  # the loop trained on the repeated rows


def test_doc_aligned_rows_start_at_documents(tmp_path):
    out = tmp_path / "tok"
    out.mkdir()
    w = ShardWriter(out, "train", 5000, np.dtype(np.uint16))
    rng = np.random.default_rng(0)
    for _ in range(100):  # documents of 20-60 tokens whose first token is 1 (and only it)
        w.add([1] + rng.integers(2, 60, rng.integers(20, 60)).tolist(), eot=0)
    shards = [{**s, "split": "train"} for s in w.close()]
    write_manifest(out, {"tokenizer_sha256": "t", "eot_id": 0, "vocab_size": 64, "dtype": "uint16", "shards": shards})
    data = TokenData(out, "train")
    plain, _ = data.random_batch(0, 0, 64, 32, seed=1)
    aligned, y = data.random_batch(0, 0, 64, 32, seed=1, doc_aligned=True)
    assert (plain[:, 0] == 1).float().mean() < 0.2
    assert (aligned[:, 0] == 1).float().mean() > 0.6  # a start within 32 tokens: about 32 / 42 of rows
    assert torch.equal(aligned[:, 1:], y[:, :-1])
    # ranks split the aligned global batch as they split the plain one
    halves = [data.random_batch(0, 0, 32, 32, seed=1, rank=r, world=2, doc_aligned=True)[0] for r in (0, 1)]
    assert torch.equal(torch.cat(halves), aligned)


def test_budget_in_tokens_picks_the_shape_nearest_the_ratio_and_its_steps(token_dir, tmp_path):  # noqa: F811
    from llmpipe.training.budget import count_params, resolve_budget, shape

    budget = {"unit": "tokens", "amount": 200_000, "tokens_per_param": 2.0, "aspect": 16, "head_dim": 8,
              "min_layers": 1, "max_layers": 4}
    c = cfg(budget=budget, micro_batch_size=4)
    trained, plan, identity = resolve_budget(c, token_dir, tmp_path / "ckpt", VOCAB, {"id": 1})
    ratios = {L: 200_000 / count_params(shape(c, L), VOCAB)[0] for L in range(1, 5)}
    best = min(ratios, key=lambda L: abs(np.log(ratios[L] / 2.0)))
    assert (trained.model.n_layer, trained.model.d_model, trained.model.n_head) == (best, 16 * best, 2 * best)
    assert trained.max_steps == round(200_000 / (4 * 32)) and trained.budget is None
    assert identity["budget_plan"] == plan and plan["params"] == count_params(trained, VOCAB)[0]


def test_budget_in_minutes_measures_this_machine_and_a_resumed_run_keeps_the_plan(token_dir, tmp_path):  # noqa: F811
    from llmpipe.training.budget import pace_for, resolve_budget

    budget = {"unit": "minutes", "amount": 0.1, "tokens_per_param": 1.0, "aspect": 16, "head_dim": 8,
              "min_layers": 1, "max_layers": 2}
    c = cfg(budget=budget, micro_batch_size=4)
    trained, plan, identity = resolve_budget(c, token_dir, tmp_path / "ckpt", VOCAB, {"id": 1})
    assert plan["unit"] == "minutes" and len(plan["candidates"]) >= 1 and trained.max_steps >= 1
    # the probes measured real steps: the planned tokens fit the minutes at the measured speed
    assert 0 < plan["tokens"] < 0.1 * 60 * 1e6
    # what the probes did not use is the training's time, which the loop keeps (training.pace)
    assert 0 < plan["train_seconds"] <= 0.1 * 60 * c.budget.train_fraction - plan["plan_seconds"] + 1.0
    assert pace_for(plan).seconds == plan["train_seconds"]
    train(trained, token_dir, tmp_path / "ckpt", VOCAB, identity, stop_after=trained.checkpoint_interval)
    again, plan2, identity2 = resolve_budget(c, token_dir, tmp_path / "ckpt", VOCAB, {"id": 1})
    assert plan2 == plan and identity2 == identity and again == trained  # no new measurement
