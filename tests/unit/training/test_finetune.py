"""Finetuning: the examples and their mask, the masked loss, exact resume, pretraining rows mixed in;
the sft-data stage on instruction files with bad records."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from llmpipe.config.sft import FinetuneParams, SftDataParams
from llmpipe.config.tokens import SplitParams, TokenizerParams
from llmpipe.model.gpt import GPT, GPTConfig
from llmpipe.model.weights import model_state
from llmpipe.stages import sft_data
from llmpipe.tokens.bpe import train_tokenizer
from llmpipe.tokens.chat import ChatFormat, Rendered
from llmpipe.tokens.examples import packed, padded, read_conversations, read_examples, write_examples
from llmpipe.tokens.loader import TokenData
from llmpipe.training.finetune import (MIX_STREAM, Examples, finetune, masked_loss, reply_weights, token_losses,
                                      training_batch)
from llmpipe.util.io import InputError
from tests.toy_tokens import write_toy_tokens

CORPUS = ["To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer"] * 30


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    train_tokenizer(iter(CORPUS), TokenizerParams(vocab_size=300)).save(str(path))
    return path


def test_packed_and_padded_rows_keep_the_mask_aligned():
    a, b = Rendered([0, 2, 7, 4, 3, 8, 9, 4], [0, 0, 0, 0, 0, 1, 1, 1]), Rendered([0, 2, 5, 4, 3, 6, 4], [0, 0, 0, 0, 0, 1, 1])
    c = Rendered([0, 2, 4, 3, 9, 4], [0, 0, 0, 0, 1, 1])
    tokens, mask = packed([a, b, c], block_size=13, filler=0)  # rows of 14: b (7) does not fit after a (8), c (6) does
    assert tokens.shape == (2, 14) and tokens[0].tolist() == a.ids + c.ids and tokens[1].tolist() == b.ids + [0] * 7
    assert mask[0].tolist() == a.mask + c.mask and mask[1].tolist() == b.mask + [0] * 7
    with pytest.raises(ValueError, match="does not fit a row of 7"):
        packed([a], block_size=6, filler=0)
    tokens, mask = padded([a, b], block_size=8, filler=0)
    assert tokens.shape == (2, 9) and tokens[1, :7].tolist() == b.ids and mask[1].tolist() == b.mask + [0, 0]


def test_packing_never_splits_a_conversation():
    rng = np.random.default_rng(0)
    examples = {}
    for k in range(300):
        prompt, reply = int(rng.integers(2, 30)), int(rng.integers(1, 8))
        ids = [0] + [10 + k] * (prompt + reply)  # each conversation its own token, after <|endoftext|>
        examples[10 + k] = Rendered(ids, [0] * (1 + prompt) + [1] * reply)
    tokens, mask = packed(list(examples.values()), block_size=63, filler=0)
    found = {}  # each conversation as seen in its row: (length, targets)
    for row, weights in zip(tokens, mask):
        starts = [i for i, t in enumerate(row) if t == 0 and i + 1 < len(row) and row[i + 1] != 0]
        assert starts and starts[0] == 0  # a row starts with a conversation, never with the rest of one
        for s, e in zip(starts, starts[1:] + [len(row)]):
            body = row[s + 1 : e][row[s + 1 : e] != 0]
            assert len(set(body.tolist())) == 1 and body[0] not in found  # one conversation, seen once
            found[int(body[0])] = (1 + len(body), int(weights[s:e].sum()))
    assert found == {k: (len(e.ids), sum(e.mask)) for k, e in examples.items()}
    filler = 1 - sum(len(e.ids) for e in examples.values()) / tokens.size
    assert filler < 0.05  # first fit fills the rows' tails with later conversations


def test_masked_loss_counts_only_the_masked_targets():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, n_layer=1, n_head=2, d_model=16, block_size=8)).eval()
    x, y = torch.randint(0, 50, (2, 8)), torch.randint(0, 50, (2, 8))
    m = torch.zeros(2, 8)
    m[0, 5:], m[1, 2] = 1, 1
    logits, _ = model(x)
    ce = F.cross_entropy(logits.reshape(-1, 50), y.reshape(-1), reduction="none").reshape(2, 8)
    expected = (ce[0, 5:].sum() + ce[1, 2]) / 4
    assert torch.allclose(masked_loss(model, x, y, m), expected, atol=1e-6)
    y2 = y.clone()
    y2[m == 0] = 7  # unmasked targets do not matter
    assert torch.allclose(masked_loss(model, x, y2, m), expected, atol=1e-6)


def test_reply_weights_give_every_reply_the_same_total_and_keep_the_sum(tmp_path):
    # row 0: a 3-token reply and a 1-token one; row 1: one at column 0 (no target: it counts from column 1) and
    # a 2-token one; row 2: a reply running to the row's end
    mask = np.array([[0, 1, 1, 1, 0, 0, 1], [1, 1, 0, 1, 1, 0, 0], [0, 0, 0, 0, 0, 1, 1]], np.uint8)
    w = reply_weights(mask)
    targets = mask.copy()
    targets[:, 0] = 0
    assert ((w > 0) == (targets > 0)).all() and w.sum() == pytest.approx(targets.sum())
    totals = [w[0, 1:4].sum(), w[0, 6], w[1, 1], w[1, 3:5].sum(), w[2, 5:].sum()]
    assert totals == pytest.approx([targets.sum() / 5] * 5)
    assert reply_weights(np.zeros((2, 4), np.uint8)).sum() == 0
    write_examples(tmp_path / "ex", np.arange(21).reshape(3, 7), mask, [])
    assert (Examples(tmp_path / "ex", 6, per_reply=True).mask == w).all()
    assert (Examples(tmp_path / "ex", 6).mask == mask).all()
    with pytest.raises(InputError, match="finetune.reply_weight"):  # weights already, not a mask
        reply_weights(np.array([[0, 0.5, 1]], np.float32), "bench rows")


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_kept_targets_give_the_full_losses_and_gradients(autocast):
    """Only the weighted targets go through the output layer (token_losses' `keep`): the loss, every
    gradient and the kept targets' losses are those of the full computation; the others read 0. A
    batch with no weighted target gives a zero loss and zero gradients, not NaN."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, n_layer=2, n_head=2, d_model=16, block_size=8))
    x, y = torch.randint(0, 50, (3, 8)), torch.randint(0, 50, (3, 8))
    m = torch.zeros(3, 8)
    m[0, 5:], m[1, 2], m[2, :] = 1, 1, 0.1  # answers, and a row of mixed text at its weight

    def run(keep, weights):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            ce = token_losses(model, x, y, keep)
        loss = (ce * weights).sum() / weights.sum().clamp(min=1.0)
        loss.backward()
        return loss.detach(), ce.detach(), [p.grad.clone() for p in model.parameters()]

    (full_loss, full_ce, full_grads), (kept_loss, kept_ce, kept_grads) = run(None, m), run(m > 0, m)
    # fp32: equal to rounding. bf16: the output layer's products are bf16 and a CPU with bf16 units may
    # block a 24-row product differently from a 13-row one, so a result can differ by a bf16 step (2^-8)
    close = dict(rtol=1e-5, atol=1e-6) if not autocast else dict(rtol=2 ** -6, atol=1e-3)
    torch.testing.assert_close(kept_loss, full_loss, **close)
    torch.testing.assert_close(kept_ce[m > 0], full_ce[m > 0], **close)
    assert not kept_ce[m == 0].any()
    for a, b in zip(full_grads, kept_grads):
        torch.testing.assert_close(b, a, **close)
    assert all(g.abs().sum() > 0 for g in kept_grads)  # every weight learns from the kept targets
    none = torch.zeros_like(m)
    loss, ce, grads = run(none > 0, none)
    assert loss == 0 and not ce.any() and all(torch.isfinite(g).all() and not g.any() for g in grads)


def _toy_examples(root: Path, fmt: ChatFormat) -> tuple[Path, Path]:
    convs = [[{"role": "user", "content": f"Who says line {i}?"}, {"role": "assistant", "content": f"Hamlet {i}"}]
             for i in range(40)]
    rendered = [fmt.render(c) for c in convs]
    for name, part in (("train", rendered[:32]), ("val", rendered[32:])):
        write_examples(root / name, *packed(part, 32, fmt.eot), [{"messages": c} for c in convs])
    return root / "train", root / "val"


def test_finetune_resumes_exactly_after_a_stop(tmp_path, tokenizer_file):
    from tokenizers import Tokenizer

    fmt = ChatFormat(Tokenizer.from_file(str(tokenizer_file)))
    train_dir, val_dir = _toy_examples(tmp_path, fmt)
    assert read_examples(train_dir)[0].shape[1] == 33 and len(read_conversations(val_dir)) == 40
    cfg = FinetuneParams(max_steps=6, micro_batch_size=4, warmup_steps=1, precision="fp32", checkpoint_interval=2,
                         eval_interval=3, log_interval=1, eval_batches=1, threads=1)

    def base():
        torch.manual_seed(0)
        return GPT(GPTConfig(vocab_size=300, n_layer=1, n_head=2, d_model=16, block_size=32))

    ident = {"test": 1}
    whole = finetune(cfg, base(), train_dir, val_dir, tmp_path / "ck_a", ident)
    assert whole.step == 6 and whole.history["train"][-1]["loss"] < whole.history["train"][0]["loss"]
    part = finetune(cfg, base(), train_dir, val_dir, tmp_path / "ck_b", ident, stop_after=3)
    assert part.step == 3  # steps 1-3 ran, the checkpoint holds step 2
    resumed = finetune(cfg, base(), train_dir, val_dir, tmp_path / "ck_b", ident)
    a, b = model_state(whole.model), model_state(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in resumed.history["train"]] == [r["loss"] for r in whole.history["train"]]
    with pytest.raises(InputError, match="exceed the model's context"):
        Examples(train_dir, block_size=16)


def test_mixed_pretraining_rows_join_each_batch_at_their_weight_and_resume_exactly(tmp_path, tokenizer_file):
    from tokenizers import Tokenizer

    train_dir, val_dir = _toy_examples(tmp_path, ChatFormat(Tokenizer.from_file(str(tokenizer_file))))
    text = TokenData(write_toy_tokens(tmp_path / "tokens", vocab=300), "train")
    mix = {"rows": 4, "repeat_share": 0.5, "weight": 0.25}
    cfg = FinetuneParams(max_steps=6, micro_batch_size=3, warmup_steps=1, precision="fp32", checkpoint_interval=2,
                         eval_interval=3, log_interval=1, eval_batches=1, threads=1, mix=mix)
    examples = Examples(train_dir, 32)
    x, y, m = training_batch(examples, text, cfg, step=2, micro=0)
    ex, ey, em = examples.batch(cfg.seed, 2, 0, 3)
    tx, ty = text.random_batch(2, 0, 4, 32, cfg.seed, stream=MIX_STREAM, repeat_share=0.5)
    assert x.shape == (7, 32) and torch.equal(x[:3], ex) and torch.equal(m[:3], em) and torch.equal(y[3:], ty)
    assert torch.equal(x[3:], tx) and bool((m[3:] == 0.25).all())
    rows = torch.cat([x[3:], y[3:, -1:]], 1)  # the rows of 33 tokens: two of four show their first half twice
    assert sum(torch.equal(r[:16], r[16:32]) for r in rows) == 2
    assert not torch.equal(training_batch(examples, text, cfg, step=3, micro=0)[0][3:], x[3:])

    def base():
        torch.manual_seed(0)
        return GPT(GPTConfig(vocab_size=300, n_layer=1, n_head=2, d_model=16, block_size=32))

    whole = finetune(cfg, base(), train_dir, val_dir, tmp_path / "ck_a", {"t": 1}, text=text)
    plain = finetune(FinetuneParams(**{**cfg.model_dump(), "mix": {}}), base(), train_dir, val_dir, tmp_path / "ck_p", {"t": 2})
    a, p = model_state(whole.model), model_state(plain.model)
    assert not all(torch.equal(a[k], p[k]) for k in a)  # the mixed rows moved the weights
    row = whole.history["train"][-1]
    assert "text_loss" in row and "text_loss" not in plain.history["train"][-1]
    assert row["answer_loss"] != row["loss"] and whole.metrics["final_text_loss"] == row["text_loss"]
    finetune(cfg, base(), train_dir, val_dir, tmp_path / "ck_b", {"t": 1}, stop_after=3, text=text)
    resumed = finetune(cfg, base(), train_dir, val_dir, tmp_path / "ck_b", {"t": 1}, text=text)
    b = model_state(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(InputError, match="finetune.mix.rows is 4, but no pretraining tokens"):
        finetune(cfg, base(), train_dir, val_dir, tmp_path / "ck_c", {"t": 1})
    with pytest.raises(ValidationError, match=r"repeats no row of mix.rows \(8\); the smallest share that repeats one is 0.0625"):
        FinetuneParams(mix={"rows": 8, "repeat_share": 0.05})
    FinetuneParams(mix={"rows": 8, "repeat_share": 0.0625})  # the share the message names is accepted


def test_a_target_share_computes_a_seeded_draw_of_the_text_targets_at_the_same_expected_weight(tmp_path, tokenizer_file):
    from tokenizers import Tokenizer

    train_dir, val_dir = _toy_examples(tmp_path, ChatFormat(Tokenizer.from_file(str(tokenizer_file))))
    text = TokenData(write_toy_tokens(tmp_path / "tokens", vocab=300), "train")
    mix = {"rows": 4, "repeat_share": 0.5, "weight": 0.1, "target_share": 0.25}
    cfg = FinetuneParams(max_steps=6, micro_batch_size=3, warmup_steps=1, precision="fp32", checkpoint_interval=2,
                         eval_interval=3, log_interval=1, eval_batches=1, threads=1, mix=mix)
    examples = Examples(train_dir, 32)
    x, y, m = training_batch(examples, text, cfg, step=2, micro=0)
    full = training_batch(examples, text, FinetuneParams(**{**cfg.model_dump(), "mix": {**mix, "target_share": 1.0}}), 2, 0)
    assert torch.equal(x, full[0]) and torch.equal(y, full[1]) and torch.equal(m[:3], full[2][:3])  # same rows
    kept = m[3:] > 0
    assert bool(torch.isclose(m[3:][kept], torch.tensor(0.4)).all())  # weight / share on what is computed
    assert 0 < int(kept.sum()) < kept.numel()
    again = training_batch(examples, text, cfg, step=2, micro=0)[2]
    assert torch.equal(again, m) and not torch.equal(training_batch(examples, text, cfg, step=3, micro=0)[2][3:], m[3:])
    draws = torch.cat([training_batch(examples, text, cfg, step=s, micro=0)[2][3:] for s in range(200)])
    assert abs(float((draws > 0).float().mean()) - 0.25) < 0.01  # 25,600 targets: about 4 standard errors
    assert abs(float(draws.mean()) - 0.1) < 0.004  # the expected weight of a target is the full mix's

    def base():
        torch.manual_seed(0)
        return GPT(GPTConfig(vocab_size=300, n_layer=1, n_head=2, d_model=16, block_size=32))

    whole = finetune(cfg, base(), train_dir, val_dir, tmp_path / "ck_a", {"t": 1}, text=text)
    x0, y0, m0 = training_batch(examples, text, cfg, step=0, micro=0)
    with torch.no_grad():  # step 1's text loss: the base model's mean over the drawn text targets only
        ce = token_losses(base(), x0, y0, m0 > 0)[3:][m0[3:] > 0]
    assert whole.history["train"][0]["text_loss"] == pytest.approx(float(ce.mean()), abs=2e-6)
    finetune(cfg, base(), train_dir, val_dir, tmp_path / "ck_b", {"t": 1}, stop_after=3, text=text)
    resumed = finetune(cfg, base(), train_dir, val_dir, tmp_path / "ck_b", {"t": 1}, text=text)
    a, b = model_state(whole.model), model_state(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValidationError, match="target_share"):
        FinetuneParams(mix={"rows": 4, "target_share": 0.0})


@pytest.mark.parametrize("reply_weight", ["token", "reply"])
def test_the_logged_losses_are_the_answers_the_text_and_their_weighted_mean(tmp_path, tokenizer_file, reply_weight):
    from tokenizers import Tokenizer

    from llmpipe.stages.finetune import mixed_text

    train_dir, val_dir = _toy_examples(tmp_path, ChatFormat(Tokenizer.from_file(str(tokenizer_file))))
    text = TokenData(write_toy_tokens(tmp_path / "tokens", vocab=300), "train")
    cfg = FinetuneParams(max_steps=1, micro_batch_size=3, grad_accum_steps=2, warmup_steps=0, precision="fp32",
                         log_interval=1, eval_batches=1, threads=1, mix={"rows": 2, "weight": 0.3},
                         reply_weight=reply_weight)
    torch.manual_seed(0)
    base = GPT(GPTConfig(vocab_size=300, n_layer=1, n_head=2, d_model=16, block_size=32))
    mask = Examples(train_dir, 32).mask
    assert (reply_weights(mask) != mask).any()  # replies of unequal lengths: the two weightings differ here
    expected = {"loss": 0.0, "answer_loss": 0.0, "text_loss": 0.0}
    with torch.no_grad():  # the first step's losses are the base model's on the two micro-batches
        for micro in range(2):
            x, y, m = training_batch(Examples(train_dir, 32, per_reply=reply_weight == "reply"), text, cfg, 0, micro)
            ce = token_losses(base.eval(), x, y)
            a, t = (ce[:3] * m[:3]).sum() / m[:3].sum(), ce[3:].mean()
            weight = m[:3].sum()
            expected["answer_loss"] += float(a) / 2
            expected["text_loss"] += float(t) / 2
            expected["loss"] += float((a * weight + 0.3 * t * ce[3:].numel()) / (weight + 0.3 * ce[3:].numel())) / 2
    row = finetune(cfg, base, train_dir, val_dir, tmp_path / "ck", {"t": 1}, text=text).history["train"][0]
    assert {k: row[k] for k in expected} == pytest.approx(expected, abs=2e-6)
    # the tokens must come from the model's tokenizer, and hold a whole row
    root = tmp_path / "root"
    write_toy_tokens(root / "data/tokens", vocab=300)
    with pytest.raises(InputError, match="made with tokenizer t, the model in .* with u"):
        mixed_text(root, {"tokenizer_sha256": "u"}, {}, {})
    identity = {}
    mixed_text(root, {"tokenizer_sha256": "t"}, identity, {"data/tokens": "abc.dir"})
    assert identity["tokens_dvc_md5"] == "abc.dir" and len(identity["tokens_sha256"]) == 64
    short = TokenData(write_toy_tokens(tmp_path / "short", vocab=300, docs=(2, 2), doc_len=8), "train")
    with pytest.raises(InputError, match="hold at most 18 tokens, too few for a row of 33"):
        finetune(cfg, base, train_dir, val_dir, tmp_path / "ck2", {"t": 1}, text=short)


def _params(files, **demo):
    return SimpleNamespace(sft_data=SftDataParams(files=files, block_size=48, demo={"enabled": False, **demo}),
                           split=SplitParams())


def test_sft_data_counts_bad_records_by_reason_with_file_and_line(tmp_path, tokenizer_file):
    root = tmp_path
    (root / "data/tokenizer").mkdir(parents=True)
    (root / "data/tokenizer/tokenizer.json").write_bytes(tokenizer_file.read_bytes())
    good = [{"instruction": f"Say {i}", "output": f"{i}"} for i in range(30)]
    lines = [json.dumps(g) for g in good] + [
        "{not json", json.dumps({"instruction": "x"}), json.dumps({"instruction": "x", "output": ""}),
        json.dumps({"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]}),
        json.dumps({"instruction": "to be or not " * 40, "output": "long"})]
    (root / "ins").mkdir()
    (root / "ins/a.jsonl").write_text("\n".join(lines) + "\n")
    result = sft_data.run(_params(["ins/*.jsonl"]), root)
    report = json.loads((root / "data/sft/report.json").read_text())
    assert report["skipped"] == {"broken_json": 1, "missing_fields": 1, "empty_turn": 1, "roles_out_of_order": 1,
                                 "too_long": 1}
    assert report["examples"]["broken_json"][0]["where"] == "ins/a.jsonl:31"
    assert report["examples"]["too_long"][0]["where"] == "ins/a.jsonl:35"
    m = result.metrics
    assert m["train_conversations"] + m["val_conversations"] == 30 and m["skipped_missing_fields"] == 1
    tokens, mask = read_examples(root / "data/sft/train")
    assert tokens.shape[1] == 49 and mask.sum() == m["train_target_tokens"] > 0
    (root / "ins/a.jsonl").write_text("\n".join(lines[30:]) + "\n")  # nothing usable left: the stage fails
    with pytest.raises(InputError, match="no usable training conversation"):
        sft_data.run(_params(["ins/*.jsonl"]), root)
    with pytest.raises(InputError, match="matches no file"):
        sft_data.run(_params(["nothing/*.json"]), root)
    assert np.load(root / "data/sft/train/tokens.npy").shape[0] > 0  # the earlier output stays whole
