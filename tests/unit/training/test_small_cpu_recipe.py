"""Issue 27's training options: weight decay on Muon's matrices, the tail average of the weights
(exact over a resume), and a dial whose probes a passing load does not fool."""

import pytest
import torch
from safetensors.torch import load_file

from llmpipe.config.pretrain import PretrainParams
from llmpipe.model.gpt import GPT, GPTConfig
from llmpipe.training.loop import train
from llmpipe.training.optim import cut_rows, make_optimizer, row_length_at, seq_warmup_end

from tests.unit.training.test_train import VOCAB, cfg, token_dir  # noqa: F401  (fixture)

MUON = dict(optimizer="muon", schedule="wsd", decay_frac=0.5)


def test_muon_weight_decay_shrinks_the_blocks_matrices_by_the_scheduled_rate():
    c = cfg(**MUON, muon_weight_decay=0.5, muon_lr=0.02)
    model = GPT(GPTConfig(vocab_size=VOCAB, **c.model.model_dump()))
    opt = make_optimizer(model, c, torch.device("cpu"))
    name, p = next((n, p) for n, p in model.named_parameters() if n.startswith("blocks.") and p.dim() == 2)
    group = next(g for g in opt.param_groups if any(q is p for q in g["params"]))
    assert group["muon"] and group["weight_decay"] == 0.5
    for q in model.parameters():
        q.grad = torch.zeros_like(q)  # a zero gradient: the step is the decay alone
    group["lr"] = 0.01  # what the loop sets from the schedule (lr_at times lr_scale)
    before = p.detach().clone()
    opt.step()
    assert torch.allclose(p, before * (1 - 0.01 * 0.5)), name
    no_decay = make_optimizer(model, cfg(**MUON), torch.device("cpu"))
    assert all(g["weight_decay"] == 0.0 for g in no_decay.param_groups if g["muon"])


def test_tail_average_is_the_mean_of_the_last_steps_and_resumes_exactly(token_dir, tmp_path):  # noqa: F811
    steps = 20
    plain = cfg(**MUON, max_steps=steps, checkpoint_interval=steps - 1, eval_interval=10**6)
    averaged = plain.model_copy(update={"tail_average": 0.1})  # the last two steps' weights
    last = train(plain, token_dir, tmp_path / "plain", VOCAB, {"id": 1})
    # the weights after step 19 are in the plain run's checkpoint of that step
    train(plain, token_dir, tmp_path / "w19", VOCAB, {"id": 1}, stop_after=steps - 1)
    w19 = load_file(str(tmp_path / "w19" / "model.safetensors"))
    mean = train(averaged, token_dir, tmp_path / "avg", VOCAB, {"id": 1})
    for k, w20 in last.model.named_parameters():  # averaging changes what is saved, never the training
        assert torch.allclose(dict(mean.model.named_parameters())[k], (w19[k] + w20) / 2, atol=1e-6), k
    assert not torch.equal(mean.model.state_dict()["tok_emb.weight"], last.model.state_dict()["tok_emb.weight"])
    # the run's final val loss is the saved (averaged) model's; the last step's stays beside it
    assert mean.metrics["final_val_loss_last_step"] == last.metrics["final_val_loss"]
    assert mean.metrics["final_val_loss"] != last.metrics["final_val_loss"]
    # killed after step 19, one step into the tail: the resumed run keeps the mean it had
    train(averaged, token_dir, tmp_path / "killed", VOCAB, {"id": 1}, stop_after=steps - 1)
    assert (tmp_path / "killed" / "average.safetensors").exists()
    resumed = train(averaged, token_dir, tmp_path / "killed", VOCAB, {"id": 1})
    a, b = mean.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_tail_average_must_lie_inside_the_wsd_decay_and_not_under_fsdp():
    with pytest.raises(ValueError, match="tail_average .* exceeds decay_frac"):
        PretrainParams.model_validate({**MUON, "decay_frac": 0.2, "tail_average": 0.3})
    with pytest.raises(ValueError, match="tail_average: not supported with parallel: fsdp"):
        PretrainParams.model_validate({**MUON, "tail_average": 0.1, "parallel": "fsdp"})


def test_the_dial_keeps_each_shapes_fastest_probe_over_rounds(token_dir, tmp_path, monkeypatch):  # noqa: F811
    """A load that slows one round of probes does not pick the shape: every shape is timed again."""
    from llmpipe.training import budget

    # a low target: even a loaded CI core's tripled timings keep every shape within reach (the climb goes on)
    budget_cfg = {"unit": "minutes", "amount": 0.5, "tokens_per_param": 0.1, "aspect": 16, "head_dim": 8,
                  "min_layers": 1, "max_layers": 3, "probe_rounds": 2}
    c = cfg(budget=budget_cfg, micro_batch_size=4)
    real, calls = budget.time_steps, []

    def loaded_first_round(shape_cfg, *a, **kw):  # the real timing; a load during round one triples it
        t = real(shape_cfg, *a, **kw)
        calls.append((shape_cfg.model.n_layer, t))
        return t * 3 if len(calls) <= 3 else t

    monkeypatch.setattr(budget, "time_steps", loaded_first_round)
    p = budget.plan(c, token_dir, VOCAB)
    assert [d for d, _ in calls] == [1, 2, 3, 1, 2, 3]  # round one over the shapes, then round two
    speeds = {x["n_layer"]: x["step_seconds"] for x in p["candidates"]}
    expected = {d: min(3 * calls[d - 1][1], calls[d + 2][1]) for d in (1, 2, 3)}
    assert speeds == pytest.approx(expected, abs=1e-5)
    # the speeds the rounds kept set each shape's tokens: the training seconds left at that speed (a whole
    # number of tokens: under load the probes leave few seconds, and the truncation alone exceeds 1e-3)
    left = 0.5 * 60 * 0.95 - p["probe_seconds"]
    assert all(x["tokens"] == pytest.approx(left / expected[x["n_layer"]] * 4 * 32, rel=1e-3, abs=1)
               for x in p["candidates"])


@pytest.mark.parametrize("ratio, round_two, calls, pick", [
    # 0.7 is under the target but within reach (the nearest in log); 0.3 is out of reach: 5 is never timed
    ({1: 8.0, 2: 2.0, 3: 0.7, 4: 0.3, 5: 0.1}, {}, [1, 2, 3, 4, 1, 2, 3, 4], 3),
    # the first shape is out of reach already: nothing deeper is timed, and it is the plan
    ({1: 0.2, 2: 0.05, 3: 0.01}, {}, [1, 1], 1),
    # round two times 2 faster, back within reach: the climb goes on from it
    ({1: 8.0, 2: 0.4, 3: 0.7, 4: 0.2}, {2: 0.9}, [1, 2, 1, 2, 3, 4], 2),
])
def test_the_dials_climb_stops_at_the_first_shape_out_of_reach(ratio, round_two, calls, pick, token_dir,  # noqa: F811
                                                               monkeypatch):
    """Deeper shapes plan fewer tokens a parameter, so once one plans under half the target the deeper ones
    are not timed (they cannot be the nearest); a shape still within reach does not stop the climb."""
    from llmpipe.training import budget

    c = cfg(budget={"unit": "minutes", "amount": 0.5, "tokens_per_param": 1.0, "aspect": 16, "head_dim": 8,
                    "min_layers": 1, "max_layers": 5, "probe_rounds": 2}, micro_batch_size=4)
    left = c.budget.amount * 60 * c.budget.train_fraction
    timed = []

    # A clock under the test's control, not a stand-in for the training loop: each step time is the one that
    # makes depth d plan `ratio[d]` tokens a parameter (and round two's, `round_two[d]`); no probe trains.
    def time_steps(shape_cfg, *a, **kw):
        d = shape_cfg.model.n_layer
        r = round_two.get(d, ratio[d]) if d in timed else ratio[d]
        timed.append(d)
        return left * budget.tokens_per_step(shape_cfg) / (r * budget.count_params(shape_cfg, VOCAB)[0])

    monkeypatch.setattr(budget, "time_steps", time_steps)
    p = budget.plan(c, token_dir, VOCAB)
    assert timed == calls
    assert p["n_layer"] == pick


@pytest.mark.parametrize("unit, amount", [("tokens", 50), ("flops", 1e3), ("minutes", 0.0001)])
def test_a_budget_below_one_step_names_the_key_and_the_smallest_that_works(unit, amount, token_dir):  # noqa: F811
    from llmpipe.training import budget
    from llmpipe.util.io import InputError

    c = cfg(budget={"unit": unit, "amount": amount, "aspect": 16, "head_dim": 8, "min_layers": 1, "max_layers": 2,
                    "probe_rounds": 1}, micro_batch_size=4)
    with pytest.raises(InputError, match=r"pretrain\.budget\.amount: .* the smallest that works (here )?is (about )?") as e:
        budget.plan(c, token_dir, VOCAB)
    least = float(str(e.value).split()[-2] if unit == "minutes" else str(e.value).split()[-1])
    assert least > amount
    # the smallest it names does buy a step: planning with it raises nothing
    if unit != "minutes":  # (minutes depend on the probes' own time, which differs on the next try)
        ok = c.model_copy(update={"budget": c.budget.model_copy(update={"amount": least})})
        assert budget.plan(ok, token_dir, VOCAB)["tokens"] >= 4 * 32


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_embedding_and_output_layer_step_at_their_own_rates(optimizer):
    c = cfg(optimizer=optimizer, model={"n_layer": 2, "n_head": 2, "d_model": 32, "block_size": 32,
                                        "tie_embeddings": False},
            lr=0.01, embed_lr=0.1, head_lr=0.004, weight_decay=0.0)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=VOCAB, **c.model.model_dump()))
    opt = make_optimizer(model, c, torch.device("cpu"))
    for group in opt.param_groups:  # as the loop sets them from the schedule's rate
        group["lr"] = c.lr * group.get("lr_scale", 1.0)
    x = torch.randint(0, VOCAB, (4, 32))
    model(x, x)[1].backward()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    moved = {n: (p.detach() - before[n]).abs().max().item() for n, p in model.named_parameters()}
    # Adam's first step moves each element with a gradient by its rate (m / sqrt(v) = sign of the gradient)
    assert moved["tok_emb.weight"] == pytest.approx(0.1, rel=1e-3)
    assert moved["lm_head.weight"] == pytest.approx(0.004, rel=1e-3)
    assert moved["norm_f.weight"] == pytest.approx(0.01, rel=1e-3)


def test_own_rates_need_an_untied_embedding():
    for key in ("embed_lr", "head_lr"):
        with pytest.raises(ValueError, match=f"{key}: needs model.tie_embeddings: false"):
            PretrainParams.model_validate({key: 0.1, "model": {"tie_embeddings": True}})


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_without_own_rates_the_groups_are_the_ones_checkpoints_were_saved_with(optimizer):
    """Null embed_lr/head_lr: the groups and their order as before the keys existed (an optimizer state
    saved then loads by position): AdamW's decayed matrices and embeddings first, then the vectors."""
    c = cfg(optimizer=optimizer, model={"n_layer": 2, "n_head": 2, "d_model": 32, "block_size": 32,
                                        "tie_embeddings": False})
    model = GPT(GPTConfig(vocab_size=VOCAB, **c.model.model_dump()))
    groups = make_optimizer(model, c, torch.device("cpu")).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    layout = [(bool(g.get("muon")), [names[id(p)] for p in g["params"]]) for g in groups]
    params = list(model.named_parameters())
    in_muon = [n for n, p in params if optimizer == "muon" and n.startswith("blocks.") and p.dim() == 2]
    decayed = [n for n, p in params if p.dim() >= 2 and n not in in_muon]
    vectors = [n for n, p in params if p.dim() < 2]
    assert [names for muon, names in layout if not muon] == [decayed, vectors]
    assert sorted(n for muon, names in layout if muon for n in names) == sorted(in_muon)
    assert layout[0] == (False, decayed)  # the embedding's group first, as the old code made it
    assert all(g.get("lr_scale", 1.0) == 1.0 for g in groups if not g.get("muon"))


def test_sequence_length_warmup_grows_rows_through_the_blocks_divisors():
    c = cfg(max_steps=100, seq_warmup_steps=30, seq_warmup_min=8)  # block 32: rows of 8, then 16, then 32
    lengths = [row_length_at(s, c) for s in range(40)]
    assert lengths[0] == 8 and lengths[29] == 16 and lengths[30:] == [32] * 10
    assert lengths == sorted(lengths) and set(lengths) == {8, 16, 32}
    short = cfg(max_steps=40, seq_warmup_steps=30, seq_warmup_min=8)  # at most half the run: to step 20
    assert seq_warmup_end(short) == 20 and row_length_at(19, short) == 16 and row_length_at(20, short) == 32
    assert all(row_length_at(s, cfg()) == 32 for s in (0, 5))  # off by default
    x = torch.arange(2 * 32).reshape(2, 32)
    cx, cy = cut_rows(x, x + 1, 8)
    assert cx.shape == (8, 8) and torch.equal(cx.flatten(), x.flatten()) and torch.equal(cy, cx + 1)


def test_the_dials_probe_times_full_length_rows(token_dir, monkeypatch):  # noqa: F811
    """The warm-up's short early rows are its cheapest steps: a probe timing them would plan too many."""
    import llmpipe.training.loop as loop
    from llmpipe.training.budget import time_steps
    seen = []
    real = loop.cut_rows
    monkeypatch.setattr(loop, "cut_rows", lambda x, y, n: seen.append(n) or real(x, y, n))
    time_steps(cfg(max_steps=400, seq_warmup_steps=200, seq_warmup_min=8), token_dir, VOCAB, steps=2)
    assert seen and set(seen) == {32}


def test_sequence_length_warmup_changes_only_the_early_steps_and_resumes_exactly(token_dir, tmp_path):  # noqa: F811
    run = cfg(max_steps=12, checkpoint_interval=6, eval_interval=10**6, seq_warmup_steps=8, seq_warmup_min=8)
    warm = train(run, token_dir, tmp_path / "warm", VOCAB, {"id": 1})
    plain = train(cfg(max_steps=12, eval_interval=10**6), token_dir, tmp_path / "plain", VOCAB, {"id": 1})
    assert not torch.equal(warm.model.state_dict()["tok_emb.weight"], plain.model.state_dict()["tok_emb.weight"])
    train(run, token_dir, tmp_path / "killed", VOCAB, {"id": 1}, stop_after=6)  # killed inside the warm-up
    resumed = train(run, token_dir, tmp_path / "killed", VOCAB, {"id": 1})
    a, b = warm.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sequence_length_warmup_rounds_to_the_blocks_divisors_and_leaves_short_blocks_alone():
    c = cfg(seq_warmup_steps=10, seq_warmup_min=12)  # block 32: 12 rounds down to 8
    assert [row_length_at(s, c) for s in (0, 5, 9, 10)] == [8, 16, 16, 32]
    short = cfg(seq_warmup_steps=10, seq_warmup_min=64)  # the block (32) is already that short
    assert all(row_length_at(s, short) == 32 for s in range(12))
    with pytest.raises(ValueError, match=r"seq_warmup_min \(64\): model.block_size \(257\) has no divisor between 32 and 64"):
        PretrainParams.model_validate({"model": {"block_size": 257}, "seq_warmup_steps": 10})


def test_a_repeat_share_too_small_to_repeat_a_row_is_refused_with_the_smallest_that_does():
    PretrainParams.model_validate({"micro_batch_size": 8, "repeat_share": 0.0625})  # 0.5 of a row: rounds up to 1
    with pytest.raises(ValueError, match=r"repeat_share \(0.05\): repeats no row of a rank's micro_batch_size \(8\); "
                                         r"the smallest share that repeats one is 0.0625"):
        PretrainParams.model_validate({"micro_batch_size": 8, "repeat_share": 0.05})
    for rows in range(1, 65):  # the share the message names is itself accepted
        with pytest.raises(ValueError) as refused:
            PretrainParams.model_validate({"micro_batch_size": rows, "repeat_share": 1e-6})
        named = float(str(refused.value).split("repeats one is ")[1].split()[0])
        PretrainParams.model_validate({"micro_batch_size": rows, "repeat_share": named})
