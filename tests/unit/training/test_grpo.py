"""The reward stage (issue 26): group advantages, an update that makes a rewarded answer likelier, exact
resume, the stops on a NaN loss and on collapse (the last good checkpoint is the result), bad inputs."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from tokenizers import Tokenizer

from llmpipe.config.rl import RlParams
from llmpipe.data.playqa import normalize
from llmpipe.evals.trivial import Check
from llmpipe.config.tokens import TokenizerParams
from llmpipe.model.gpt import GPT, GPTConfig
from llmpipe.model.weights import model_state, save_model
from llmpipe.stages import rl as rl_stage
from llmpipe.tokens.bpe import train_tokenizer
from llmpipe.tokens.chat import ChatFormat
from llmpipe.tokens.examples import packed, padded, read_conversations, write_examples
from llmpipe.training.finetune import masked_loss
from llmpipe.training.grpo import (Question, answer_rows, group_advantages, grpo, policy_loss,
                                   sample_answers, train_step)
from llmpipe.training.optim import make_adamw
from llmpipe.util.io import InputError, read_json, read_safetensors

NAMES = ("Hamlet", "Horatio")
CORPUS = [f"Who says line {i}? {NAMES[i % 2]} says it. To be, or not to be, that is the question" for i in range(40)]


@pytest.fixture(scope="module")
def fmt():
    return ChatFormat(Tokenizer.from_str(train_tokenizer(iter(CORPUS), TokenizerParams(vocab_size=300)).to_str()))


def conversation(i: int, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": f"Who says line {i}?"}, {"role": "assistant", "content": answer}],
            "task": "speaker", "source": f"toy#{i}", "passage": [list(NAMES), ["Horatio", "Hamlet"]]}


@pytest.fixture(scope="module")
def warm_state(fmt):
    return warmed(fmt)


def warmed(fmt: ChatFormat) -> dict:
    """A tiny GPT finetuned until it answers either name about half the time, whatever the line: sampled
    groups then hold right and wrong answers alike, which is what a group baseline learns from."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=300, n_layer=1, n_head=2, d_model=32, block_size=32))
    rendered = [fmt.render(conversation(i, name)["messages"]) for i in range(8) for name in NAMES]
    tokens, mask = padded(rendered, 32, fmt.eot)  # one a row: packed, the second of a row could see the first
    t, m = torch.from_numpy(tokens.astype("int64")), torch.from_numpy(mask.astype("float32"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(60):
        masked_loss(model, t[:, :-1], t[:, 1:], m[:, 1:]).backward()
        opt.step()
        opt.zero_grad()
    return model_state(model)


def warm_model(state) -> GPT:
    model = GPT(GPTConfig(vocab_size=300, n_layer=1, n_head=2, d_model=32, block_size=32))
    model.load_state_dict(state, strict=False)  # the head is tied to the embedding
    return model


def questions(fmt, n=6) -> list[Question]:
    return [Question(fmt.prompt(conversation(i, "")["messages"][:1]), Check(NAMES[0])) for i in range(n)]


CFG = dict(steps=6, questions_per_step=3, samples_per_question=6, max_new_tokens=6, lr=3e-3, checkpoint_every=2,
           collapse_steps=2, precision="fp32", device="cpu", threads=1, micro_batch_size=8)


def test_group_advantages_subtract_the_group_mean_and_optionally_divide_by_its_std():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    adv = group_advantages(rewards)
    assert torch.allclose(adv, torch.tensor([[0.5, -0.5, -0.5, 0.5], [0, 0, 0, 0], [0.75, -0.25, -0.25, -0.25]]))
    assert torch.allclose(adv.sum(dim=1), torch.zeros(3))  # a group's advantages cancel
    norm = group_advantages(rewards, normalize_std=True)
    std3 = (0.75 * 0.25) ** 0.5  # the population std of one 1 among four
    assert torch.allclose(norm[0], torch.tensor([1.0, -1.0, -1.0, 1.0]), atol=1e-5)
    assert torch.equal(norm[1], torch.zeros(4))  # all alike: nothing to learn, no division by zero
    assert torch.allclose(norm[2], torch.tensor([0.75, -0.25, -0.25, -0.25]) / std3, atol=1e-5)


def test_answer_rows_mask_exactly_the_answer_tokens():
    x, y, m = answer_rows([[1, 2, 3], [4, 5]], [[7, 8], [9]], block_size=16, pad=0)
    assert x.tolist() == [[1, 2, 3, 7], [4, 5, 0, 0]] and y.tolist() == [[2, 3, 7, 8], [5, 9, 0, 0]]
    assert m.tolist() == [[0, 0, 1, 1], [0, 1, 0, 0]]  # the targets 7, 8 and 9
    x, y, m = answer_rows([list(range(1, 10))], [[20, 21]], block_size=4, pad=0)  # the context keeps the end
    assert x.tolist() == [[7, 8, 9, 20]] and y.tolist() == [[8, 9, 20, 21]] and m.tolist() == [[0, 0, 1, 1]]


def test_the_answer_tokens_logits_equal_the_full_forwards():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, n_layer=1, n_head=2, d_model=16, block_size=8)).eval()
    x = torch.randint(0, 50, (2, 8))
    select = torch.zeros(2, 8, dtype=torch.bool)
    select[0, 5:], select[1, 2] = True, True
    full, _ = model(x)
    some, _ = model(x, select=select)
    assert some.shape == (4, 50) and torch.allclose(some, full[select], atol=1e-6)


def answer_logprob(model: GPT, prompt: list[int], answer: list[int]) -> float:
    x, y, m = answer_rows([prompt], [answer], model.cfg.block_size, 0)
    with torch.no_grad():
        return -float(policy_loss(model, x, y, m, torch.ones(1), 1))  # the sum of the answer's log-probs


def test_one_update_makes_the_rewarded_answer_likelier_and_the_unrewarded_less_likely(fmt, warm_state):
    cfg = RlParams(**CFG)
    model = warm_model(warm_state)
    qs = questions(fmt, 3)
    sampled = sample_answers(model, fmt, qs, cfg, step=0)  # what train_step(step=0) will sample again
    texts = [fmt.reply_text(a) for a in sampled]
    right = next(a for a, t in zip(sampled, texts) if t == NAMES[0])
    wrong = next(a for a, t in zip(sampled, texts) if t == NAMES[1])
    before = answer_logprob(model, qs[0].prompt, right), answer_logprob(model, qs[0].prompt, wrong)
    row = train_step(model, make_adamw(model, cfg, torch.device("cpu")), fmt, qs, cfg, 0, torch.device("cpu"),
                     torch.float32)
    assert row["mean_reward"] == pytest.approx(sum(t == NAMES[0] for t in texts) / len(texts))
    assert 0 < row["learning_groups"] and row["loss"] != 0.0
    after = answer_logprob(model, qs[0].prompt, right), answer_logprob(model, qs[0].prompt, wrong)
    assert after[0] > before[0] and after[1] < before[1]


def test_rl_resumes_exactly_after_a_stop(tmp_path, fmt, warm_state):
    cfg, qs, ident = RlParams(**CFG), questions(fmt), {"test": 1}
    whole = grpo(cfg, warm_model(warm_state), fmt, qs, tmp_path / "a", ident)
    assert whole.failure is None and whole.step == 6
    assert any(r["learning_groups"] for r in whole.history["train"][3:])  # the steps after the stop update too
    part = grpo(cfg, warm_model(warm_state), fmt, qs, tmp_path / "b", ident, stop_after=3)
    assert part.step == 3 and read_json(tmp_path / "b" / "state.json")["step"] == 2
    resumed = grpo(cfg, warm_model(warm_state), fmt, qs, tmp_path / "b", ident)
    save_model(whole.model, tmp_path / "whole")
    save_model(resumed.model, tmp_path / "resumed")
    assert (tmp_path / "whole/model.safetensors").read_bytes() == (tmp_path / "resumed/model.safetensors").read_bytes()
    assert (tmp_path / "whole/model.safetensors").read_bytes() != _saved(warm_model(warm_state), tmp_path / "sft")
    keep = ("mean_reward", "distinct_answers", "loss", "grad_norm")
    assert [{k: r[k] for k in keep} for r in resumed.history["train"]] == \
           [{k: r[k] for k in keep} for r in whole.history["train"]]


def _saved(model: GPT, dest: Path) -> bytes:
    save_model(model, dest)
    return (dest / "model.safetensors").read_bytes()


def _run_with_fault(tmp_path, fmt, warm_state, fault, at_step: int):
    """A run whose sink, after step `at_step`, installs `fault` on the model (a forward hook)."""
    model = warm_model(warm_state)

    def sink(_row, step):
        if step == at_step:
            fault(model)

    return grpo(RlParams(**CFG), model, fmt, questions(fmt), tmp_path / "ck", {"test": 1}, sink)


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, fmt, warm_state):
    # NaN in the update's forward pass only (sampling runs without gradients and stays finite)
    nan_when_training = lambda m: m.norm_f.register_forward_hook(  # noqa: E731
        lambda _mod, _inp, out: out * float("nan") if torch.is_grad_enabled() else None)
    result = _run_with_fault(tmp_path, fmt, warm_state, nan_when_training, at_step=2)
    assert result.failure.startswith("loss is nan at step 3") and "last good checkpoint, of step 2" in result.failure
    assert result.model_step == 2 and result.metrics["model_step"] == 2 and result.step == 2
    kept = read_safetensors(tmp_path / "ck" / "model.safetensors")
    assert read_json(tmp_path / "ck" / "state.json")["step"] == 2
    assert all(torch.equal(v, kept[k]) for k, v in model_state(result.model).items())
    # and it is the uninterrupted run's step-2 state
    grpo(RlParams(**CFG), warm_model(warm_state), fmt, questions(fmt), tmp_path / "clean", {"test": 1}, stop_after=2)
    clean = read_safetensors(tmp_path / "clean" / "model.safetensors")
    assert all(torch.equal(clean[k], kept[k]) for k in clean)


def test_collapse_to_one_answer_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, fmt, warm_state):
    def only_end(m):  # from now on every sampled reply is <|end|> at once: one answer, the empty one
        def hook(_mod, _inp, out):
            if not torch.is_grad_enabled():
                forced = torch.full_like(out, -1e4)
                forced[..., fmt.end] = 1e4
                return forced
        m.lm_head.register_forward_hook(hook)

    result = _run_with_fault(tmp_path, fmt, warm_state, only_end, at_step=2)
    assert result.failure.startswith("collapse: every sampled answer was '' for 2 steps in a row")
    assert result.step == 4 and result.model_step == 2  # steps 3 and 4 collapsed; step 4's checkpoint not written
    assert [r["distinct_answers"] for r in result.history["train"][2:]] == [1, 1]
    kept = read_safetensors(tmp_path / "ck" / "model.safetensors")
    assert read_json(tmp_path / "ck" / "state.json")["step"] == 2
    assert all(torch.equal(v, kept[k]) for k, v in model_state(result.model).items())


def _stage_root(tmp_path: Path, fmt: ChatFormat, state, conversations: list[dict]) -> Path:
    root = tmp_path / "repo"
    (root / "data/tokenizer").mkdir(parents=True)
    fmt.tok.save(str(root / "data/tokenizer/tokenizer.json"))
    save_model(warm_model(state), root / "data/finetune/model", extra={"eot_id": fmt.eot})
    rendered = [fmt.render(c["messages"]) for c in conversations]
    write_examples(root / "data/sft/train", *packed(rendered, 32, fmt.eot), conversations)
    return root


def test_the_stage_trains_on_train_items_only_and_refuses_bad_inputs(tmp_path, fmt, warm_state):
    convs = [conversation(i, NAMES[0]) for i in range(6)] + [
        {"messages": [{"role": "user", "content": "Write a poem"}, {"role": "assistant", "content": "A poem."}],
         "source": "mine.json:1"}]  # a free-text item from an instruction file: not checkable, not asked
    root = _stage_root(tmp_path, fmt, warm_state, convs)
    params = SimpleNamespace(rl=RlParams(**{**CFG, "steps": 2}))
    result = rl_stage.run(params, root)
    assert result.failure is None and result.metrics["questions"] == 6 and result.metrics["stopped"] == "no"
    assert (root / "data/rl/model/model.safetensors").exists() and result.registered_suffix == "-rl"
    assert result.model_tags["base.dvc.out.data/finetune/model"] == result.metrics["base_model_dvc_md5"]
    assert len((root / "data/plots/rl.tsv").read_text().splitlines()) == 1 + 2

    write_examples(root / "data/sft/train", *packed([fmt.render(convs[-1]["messages"])], 32, fmt.eot), convs[-1:])
    assert len(read_conversations(root / "data/sft/train")) == 1
    with pytest.raises(InputError, match=r"data/sft/train/conversations.jsonl: no train item with a checkable answer"):
        rl_stage.run(params, root)
    (root / "data/finetune/model/model.safetensors").unlink()
    with pytest.raises(InputError, match=r"missing finetuned model data/finetune/model/model.safetensors"):
        rl_stage.run(params, root)


def test_the_command_fails_on_collapse_and_keeps_the_finetuned_model_saying_so_in_its_metrics(tmp_path, fmt,
                                                                                              warm_state):
    root = _stage_root(tmp_path, fmt, warm_state, [conversation(i, NAMES[0]) for i in range(6)])
    # near-greedy sampling from a model that does not read the line: one answer to every question at once
    (root / "params.yaml").write_text(yaml.safe_dump({"rl": {**CFG, "temperature": 0.0005, "collapse_steps": 1}}))
    proc = subprocess.run([sys.executable, "-m", "llmpipe.cli", "--root", str(root), "rl"], capture_output=True,
                          text=True, env={**os.environ, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})  # no tracker
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "llmpipe rl: failed: collapse: every sampled answer was 'horatio' for 1 steps in a row" in proc.stderr
    metrics = json.loads((root / "data/metrics/rl.json").read_text())
    assert metrics["stopped"].startswith("collapse") and "last good checkpoint, of step 0" in metrics["stopped"]
    assert metrics["model_step"] == 0 and metrics["steps"] == 1
    weights = "model/model.safetensors"  # no checkpoint before the collapse: the finetuned weights, unchanged
    assert (root / "data/rl" / weights).read_bytes() == (root / "data/finetune" / weights).read_bytes()


def test_chat_eval_scores_the_rl_model_beside_the_finetuned_one(tmp_path, fmt, warm_state):
    from llmpipe.config.sft import ChatEvalParams
    from llmpipe.evals.trivial import sign_test_p
    from llmpipe.stages import chat_eval

    train = [conversation(i, NAMES[i % 2]) for i in range(6)]
    root = _stage_root(tmp_path, fmt, warm_state, train)
    val = [conversation(i, NAMES[i % 2]) for i in range(6, 30)]
    write_examples(root / "data/sft/val", *packed([fmt.render(c["messages"]) for c in val], 32, fmt.eot), val)
    save_model(warm_model(warm_state), root / "data/model")
    params = SimpleNamespace(chat_eval=ChatEvalParams(max_new_tokens=6, samples=len(val), copy_spans=0))
    without = chat_eval.run(params, root).metrics
    assert "rl_acc" not in without  # no rl model yet: base and finetuned only
    rl_stage.run(SimpleNamespace(rl=RlParams(**{**CFG, "steps": 2})), root)
    m = chat_eval.run(params, root).metrics
    samples = [json.loads(line) for line in (root / "data/chat_eval/samples.jsonl").read_text().splitlines()]
    assert [s["rl_ok"] for s in samples] == [normalize(s["rl"]) == normalize(s["reference"]) for s in samples]
    assert m["rl_acc"] == round(sum(s["rl_ok"] for s in samples) / len(samples), 4)
    assert m["finetuned_acc"] == without["finetuned_acc"]
    assert m["rl_gain_over_sft"] == pytest.approx(m["rl_acc"] - m["finetuned_acc"], abs=2e-4)
    both = [(s["rl_ok"], s["finetuned_ok"]) for s in samples]
    assert (m["items_rl_only_right"], m["items_sft_only_right"]) == (both.count((True, False)), both.count((False, True)))
    assert m["rl_gain_over_sft_p_value"] == round(sign_test_p(m["items_rl_only_right"], m["items_sft_only_right"]), 6)
    assert m["rl_gain_over_best_baseline"] == pytest.approx(m["rl_acc"] - m["best_baseline_acc"], abs=2e-4)


def test_disabled_rl_passes_the_finetuned_model_through_and_nothing_counts_it(tmp_path, fmt, warm_state):
    """rl.enabled: false (a pipeline of instruction files only): the stage runs without checkable items,
    its model is the finetuned one, registered nowhere, and chat-eval and the model choice pass over it."""
    from llmpipe.config.sft import ChatEvalParams
    from llmpipe.model.weights import load_model
    from llmpipe.ops.models import chat_model
    from llmpipe.stages import chat_eval

    free = {"messages": [{"role": "user", "content": "Write a poem"}, {"role": "assistant", "content": "A poem."}],
            "source": "mine.json:1"}
    root = _stage_root(tmp_path, fmt, warm_state, [free])
    with pytest.raises(InputError, match="set rl.enabled: false"):
        rl_stage.run(SimpleNamespace(rl=RlParams(**CFG)), root)
    result = rl_stage.run(SimpleNamespace(rl=RlParams(**{**CFG, "enabled": False})), root)
    assert result.model_dir is None and result.metrics["enabled"] == 0 and result.failure is None
    sft, passed = load_model(root / "data/finetune/model"), load_model(root / "data/rl/model")
    assert all(torch.equal(v, passed.state_dict()[k]) for k, v in sft.state_dict().items())
    assert chat_model(root) == root / "data/finetune/model"
    write_examples(root / "data/sft/val", *packed([fmt.render(free["messages"])], 32, fmt.eot), [free])
    save_model(warm_model(warm_state), root / "data/model")
    metrics = chat_eval.run(SimpleNamespace(chat_eval=ChatEvalParams(max_new_tokens=4, copy_spans=0)), root).metrics
    assert "rl_answer_loss" not in metrics and "finetuned_answer_loss" in metrics


def test_a_quoted_question_rewards_the_line_after_the_quote_as_chat_eval_scores_it(fmt):
    speaker = conversation(0, "")["passage"][0][0]
    record = {**conversation(0, f"a quoted line\n{speaker}: the answer"), "task": "next", "answer": "the answer",
              "quoted": True}
    (q,) = rl_stage.questions_of([record], fmt)
    assert q.prompt == fmt.prompt(record["messages"][:1])
    assert q.check(f"a quoted line\n{speaker}: the answer") and q.check("another line\nthe answer.")
    assert not q.check("the answer") and not q.check("a quoted line\nthe answer\nmore")
    # a tagged who-says question: rewarded, and keyed for the collapse watch, on the name in its tag
    who = {**conversation(0, f"a quoted line ({speaker})"), "task": "speaker", "answer": speaker, "quoted": True}
    (w,) = rl_stage.questions_of([who], fmt)
    assert w.check(f"a quoted line ({speaker})") and w.check(f"another line ({speaker}).")
    assert not w.check(speaker) and not w.check(f"a quoted line ({speaker})\nmore")
    assert w.check.answer_in(f"any line ({speaker})") == speaker and w.check.answer_in(speaker) == ""
