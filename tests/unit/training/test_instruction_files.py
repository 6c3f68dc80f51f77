"""Any instruction file works (issue 26): an Alpaca-shaped JSON file of 1,000 general instructions goes
through sft-data and finetune unedited, and chat-eval reports the held-out answers' loss before and after
finetuning (no exact match for free text), with samples."""

import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from llmpipe.config.sft import ChatEvalParams, FinetuneParams, SftDataParams
from llmpipe.config.tokens import SplitParams, TokenizerParams
from llmpipe.evals.answer_loss import answer_losses
from llmpipe.model.gpt import GPT, GPTConfig
from llmpipe.model.weights import load_model, save_model
from llmpipe.stages import chat_eval, finetune, sft_data
from llmpipe.tokens.bpe import train_tokenizer
from llmpipe.tokens.chat import ChatFormat
from llmpipe.tokens.examples import read_conversations

from tests.alpaca import alpaca_records, write_alpaca

BLOCK = 256  # the demo's context


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A repository with the Alpaca file in it, a tokenizer trained on such text and a small base model,
    after sft-data and finetune ran (the demo set off: the file alone)."""
    root = tmp_path_factory.mktemp("ws")
    (root / "ins").mkdir()
    records = write_alpaca(root / "ins" / "alpaca_data.json")
    texts = [f"{r['instruction']} {r['input']} {r['output']}" for r in alpaca_records(300, seed=1)]
    (root / "data/tokenizer").mkdir(parents=True)
    train_tokenizer(iter(texts), TokenizerParams(vocab_size=512)).save(str(root / "data/tokenizer/tokenizer.json"))
    torch.manual_seed(0)
    base = GPT(GPTConfig(vocab_size=512, n_layer=2, n_head=2, d_model=32, block_size=BLOCK))
    save_model(base, root / "data/model")
    sft = sft_data.run(SimpleNamespace(sft_data=SftDataParams(files=["ins/*.json"], block_size=BLOCK,
                                                              demo={"enabled": False}), split=SplitParams()), root)
    tuned = finetune.run(SimpleNamespace(finetune=FinetuneParams(
        max_steps=40, micro_batch_size=8, lr=3e-3, warmup_steps=2, precision="fp32", device="cpu", threads=1,
        eval_interval=40, checkpoint_interval=40, log_interval=10, eval_batches=1)), root)
    return root, records, sft.metrics, tuned.metrics


def test_the_alpaca_file_is_varied_like_the_real_ones():
    records = alpaca_records()
    assert len(records) == 1000 and all(set(r) >= {"instruction", "input", "output"} for r in records)
    with_input = sum(1 for r in records if r["input"]) / len(records)
    assert 0.3 < with_input < 0.7  # both shapes, in numbers
    lengths = sorted(len(r["output"]) for r in records)
    assert lengths[0] < 20 and lengths[-1] > 1500  # one-word answers and answers past a small context
    text = json.dumps(records, ensure_ascii=False)
    assert all(s in text for s in ("東京", "😀", "مرحبا", "```python", "\\n1. "))


def test_sft_data_and_finetune_take_the_file_unedited(workspace, tmp_path):
    root, records, sft, tuned = workspace
    assert sft["train_conversations"] + sft["val_conversations"] + sft.get("skipped_too_long", 0) == len(records)
    assert sft.get("skipped_too_long", 0) < 0.3 * len(records)  # only answers past the 256-token context
    assert [k for k in sft if k.startswith("skipped_") and k != "skipped_too_long"] == []
    assert 0.02 < sft["val_conversations"] / (sft["train_conversations"] + sft["val_conversations"]) < 0.09
    train = read_conversations(root / "data/sft/train")
    assert train[0]["source"].startswith("ins/alpaca_data.json:") and not train[0].get("task")
    assert tuned["steps"] == 40 and tuned["final_train_loss"] < math.log(512)
    # the same file saved with a byte-order mark, as Windows editors write it, reads the same
    write_alpaca(tmp_path / "bom.json", bom=True)
    from llmpipe.data.instructions import read_records

    assert [r for _, r in read_records(tmp_path / "bom.json")] == records


def test_chat_eval_reports_the_held_out_answers_loss_before_and_after_finetuning(workspace):
    root, _, sft, _ = workspace
    m = chat_eval.run(SimpleNamespace(chat_eval=ChatEvalParams(max_new_tokens=16, samples=3, copy_spans=0)), root).metrics
    assert m["n_free_items"] == sft["val_conversations"] and m["n_val_items"] == 0
    assert not any(k.endswith("_acc") for k in m)  # no exact match for free text
    assert m["finetuned_answer_loss"] < m["base_answer_loss"] and m["answer_loss_drop_ci_low"] > 0
    assert m["answer_loss_drop"] == pytest.approx(m["base_answer_loss"] - m["finetuned_answer_loss"], abs=2e-4)
    assert m["answer_loss_drop_ci_low"] <= m["answer_loss_drop"] <= m["answer_loss_drop_ci_high"]
    # recomputed here, one conversation at a time through the full forward pass
    fmt = ChatFormat(Tokenizer.from_file(str(root / "data/tokenizer/tokenizer.json")))
    val = read_conversations(root / "data/sft/val")
    model = load_model(root / "data/finetune/model")
    nats = tokens = 0.0
    for c in val:
        r = fmt.render(c["messages"])
        ids, mask = torch.tensor([r.ids]), torch.tensor(r.mask[1:], dtype=torch.bool)
        with torch.no_grad():
            logits, _ = model(ids[:, :-1])
        ce = F.cross_entropy(logits[0].float(), ids[0, 1:], reduction="none")
        nats, tokens = nats + float(ce[mask].sum()), tokens + int(mask.sum())
    answer_bytes = sum(len(c["messages"][-1]["content"].encode("utf-8")) for c in val)
    assert m["finetuned_answer_loss"] == pytest.approx(nats / tokens, abs=1e-3)
    assert m["finetuned_answer_bpb"] == pytest.approx(nats / math.log(2) / answer_bytes, abs=1e-3)
    assert answer_losses(model, fmt, val[:5], batch_size=2).nats == \
           pytest.approx(answer_losses(model, fmt, val[:5], batch_size=5).nats, rel=1e-5)  # padding changes nothing
    samples = [json.loads(line) for line in (root / "data/chat_eval/samples.jsonl").read_text().splitlines()]
    assert len(samples) == 3 and all(s["task"] == "files" and s["reference"] for s in samples)
    assert all({"base", "finetuned", "base_loss", "finetuned_loss"} <= set(s) and "finetuned_ok" not in s for s in samples)


def test_a_conversation_cut_to_the_context_counts_the_bytes_of_the_answer_it_kept(workspace):
    """Bits per byte divides the kept tokens' loss by the kept tokens' bytes, not the whole answer's."""
    from llmpipe.evals.answer_loss import kept_answer_bytes

    root = workspace[0]
    fmt = ChatFormat(Tokenizer.from_file(str(root / "data/tokenizer/tokenizer.json")))
    model = load_model(root / "data/finetune/model")
    answer = " ".join(f"w{i}" for i in range(600))
    long = {"messages": [{"role": "user", "content": "Count."}, {"role": "assistant", "content": answer}]}
    short = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hail, friend."}]}
    got = answer_losses(model, fmt, [long, short])
    r = fmt.render(long["messages"])
    block = model.cfg.block_size
    assert len(r.ids) > block + 1 and got.bytes[1] == len("Hail, friend.")
    kept = fmt.tok.decode([t for t, m in zip(r.ids[-block:], r.mask[-block:]) if m], skip_special_tokens=True)
    assert answer.endswith(kept) and 0 < got.bytes[0] == len(kept.encode()) < len(answer)
    assert got.bytes[0] == kept_answer_bytes(fmt, r.ids[-(block + 1):], r.mask[-(block + 1):])
