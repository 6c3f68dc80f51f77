"""Why the demo's assistant does not copy: finetuning variants on the workspace's base model, each scored
on the held-out items per type, with the copy probe (llmpipe/evals/copying.py) before and after.

    python bench/sft_variants.py [--root .] [--model DIR] [--steps 150] [--lr 1e-3] [--prompt-weight 0]
                                 [--random-passages 0] [--mix-rows 0] [--mix-target-share 1] [--seed 0]

Needs data/model, data/tokenizer and data/sft (after `dvc repro sft-data pretrain`). Variants:
--prompt-weight W puts the loss on the user's turn too, at weight W (the quoted line of a next-line or
who-says question is a copy of a passage line: copy signal in every such question); --random-passages F rebuilds that fraction of the
training items from random lines and names of the train items (same task and turn pattern), so that no
memory of the pretrained plays answers them, only the passage does; --mix-rows K adds K rows of the
train split's pretraining text to every finetuning batch, --mix-repeat-share of them showing their
first half twice (pretrain.repeat_share's rows), each of their tokens at loss weight --mix-weight, so
finetuning keeps practising plain text and copying (the finetune stage's finetune.mix, which this sets);
--model finetunes another model than data/model (one trained with repeats, say). (The loss is a mean
over the weighted tokens, so the mixed rows' tokens, 8 x 256 x 0.1 at the defaults, take a share of the
gradient from the answers; the log shows the answers' and the text's loss apart. With --prompt-weight the loss is
still a mean over the weighted tokens, so the answers' share of the gradient shrinks.) Finetuning uses
finetune's defaults (FinetuneParams, not params.yaml) with --steps and --lr; scoring is chat-eval's (greedy,
chat_eval.max_new_tokens's default of new tokens, a quoted reply scored after its quote) on every held-out
item, beside the best trivial rule per type. Ends with

    RESULT acc=<x> best_baseline_acc=<x> gain_over_best_baseline=<x> p_value=<x> acc_<type>=<x> best_baseline_<type>=<x> ...
           copy_repeat_top1_before=<x> copy_first_top1_before=<x> copy_repeat_top1_after=<x>
           copy_first_top1_after=<x> copy_varied_repeat_top1_before=<x> copy_varied_first_top1_before=<x>
           copy_varied_repeat_top1_after=<x> copy_varied_first_top1_after=<x> mix_rows=<k> n_val_items=<n> seconds=<x>

The copy_varied_* figures are the varied-distance probe (spans of block/16 to block/2 - 1 tokens, shown twice
after natural text): copying by content, which the half-context copy_* figures cannot tell from a copy at
that one distance (docs/assistant.md). --save DIR keeps the finetuned model (safetensors) for other probes.
"""

from __future__ import annotations

import _root  # noqa: F401  (first: takes bench/ off the import path, see bench/_root.py)

import argparse
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

import llmpipe.training.finetune as finetune_module

from llmpipe.config.sft import ChatEvalParams, FinetuneParams
from llmpipe.data import playqa
from llmpipe.evals.copying import copy_probe, varied_copy_probe
from llmpipe.evals.trivial import is_checkable
from llmpipe.model.weights import load_model, save_model
from llmpipe.stages.chat_eval import answers, baseline_metrics, score
from llmpipe.tokens.chat import ChatFormat, Rendered, prompt_and_reference
from llmpipe.tokens.examples import packed, read_conversations
from llmpipe.tokens.loader import TokenData


def randomized(conversation: dict, lines: list[str], names: list[str], rng: random.Random) -> dict:
    """The item rebuilt on a passage of random train lines and names, with its task and turn pattern."""
    renamed: dict[str, str] = {}
    rows = []
    for speaker, _ in conversation["passage"]:
        if speaker not in renamed:
            renamed[speaker] = rng.choice([n for n in names if n not in renamed.values()])
        rows.append((renamed[speaker], rng.choice(lines)))
    # the record's passage layout kept: tagged lines ("line (Speaker)") where its question shows them
    tagged = conversation["messages"][0]["content"].startswith(
        playqa.passage_text([tuple(r) for r in conversation["passage"]], tagged=True))
    for _ in range(20):  # a draw can fail (a line too short to quote): draw the question again
        if (item := playqa.make_item(rows, conversation["task"], rng, speaker_tags=tagged)) is not None:
            reply = playqa.reply_of(item, bool(conversation.get("quoted")))  # the record's reply format kept
            plain = {k: v for k, v in conversation.items() if k not in ("answer", "quoted")}
            return {**plain, "passage": rows, "stratum": item.stratum, **({"answer": item.answer, "quoted": True}
                                                                         if reply != item.answer else {}),
                    "messages": [{"role": "user", "content": item.question}, {"role": "assistant", "content": reply}]}
    return conversation


def training_rows(train: list[dict], fmt: ChatFormat, block_size: int, prompt_weight: float, random_share: float,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The stage's packed rows (each conversation whole in a row), with float loss weights: 1 on the
    assistant's tokens, prompt_weight on the rest of each conversation, 0 on the filler."""
    rng = random.Random(seed)
    lines = [line for c in train for _, line in c.get("passage") or []]
    names = sorted({speaker for c in train for speaker, _ in c.get("passage") or []})
    rendered = []
    for c in train:
        if c.get("passage") and rng.random() < random_share:
            c = randomized(c, lines, names, rng)
        rendered.append(fmt.render(c["messages"]))
    tokens, answer = packed(rendered, block_size, fmt.eot)
    _, whole = packed([Rendered(r.ids, [1] * len(r.ids)) for r in rendered], block_size, fmt.eot)
    return tokens, answer + prompt_weight * (whole.astype(np.float32) - answer)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, default=Path("."))
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--prompt-weight", type=float, default=0.0)
    ap.add_argument("--random-passages", type=float, default=0.0)
    ap.add_argument("--mix-rows", type=int, default=0)
    ap.add_argument("--mix-repeat-share", type=float, default=0.5)
    ap.add_argument("--mix-weight", type=float, default=0.1)
    ap.add_argument("--mix-target-share", type=float, default=1.0,
                    help="of the mixed rows' targets, the share put through the output layer (finetune.mix.target_share)")
    ap.add_argument("--model", type=Path, default=None, help="the model to finetune (default: ROOT/data/model)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save", type=Path, default=None, help="keep the finetuned model in this folder")
    args = ap.parse_args()
    if not 0.0 <= args.random_passages <= 1.0:
        ap.error(f"--random-passages is a share of the training items, 0 to 1 (got {args.random_passages})")
    if args.mix_rows < 0 or args.mix_weight < 0 or not 0.0 <= args.mix_repeat_share <= 1.0:
        ap.error(f"--mix-rows {args.mix_rows} and --mix-weight {args.mix_weight} take at least 0, "
                 f"--mix-repeat-share {args.mix_repeat_share} a share from 0 to 1")
    if not 0.0 < args.mix_target_share <= 1.0:
        ap.error(f"--mix-target-share is a share above 0, at most 1 (got {args.mix_target_share})")
    t0 = time.perf_counter()
    root, sft = args.root, args.root / "data/sft"
    model_dir = args.model or root / "data/model"
    needed = [model_dir / "model.safetensors", root / "data/tokenizer/tokenizer.json",
              root / "data/tokens/manifest.json", sft / "train/conversations.jsonl", sft / "val/conversations.jsonl"]
    if missing := [str(p) for p in needed if not p.exists()]:
        raise SystemExit(f"missing {', '.join(missing)}: run `dvc repro sft-data pretrain` in {root.resolve()} first")
    fmt = ChatFormat(Tokenizer.from_file(str(root / "data/tokenizer/tokenizer.json")))
    base = load_model(model_dir)
    stream = TokenData(root / "data/tokens", "val").scored()[0]
    before, varied_before = copy_probe(base, stream, 32), varied_copy_probe(base, stream, 48)
    train = read_conversations(sft / "train")
    tokens, weights = training_rows(train, fmt, base.cfg.block_size, args.prompt_weight, args.random_passages,
                                    args.seed)
    mix = {"rows": args.mix_rows, "repeat_share": args.mix_repeat_share, "weight": args.mix_weight,
           "target_share": args.mix_target_share}
    # reply_weight token: the rows carry this bench's own weights (prompt tokens at --prompt-weight), not a 0/1 mask
    cfg = FinetuneParams(max_steps=args.steps, lr=args.lr, seed=1337 + args.seed, device="cpu", eval_interval=10**9,
                         checkpoint_interval=10**9, log_interval=50, mix=mix if args.mix_rows else {},
                         reply_weight="token")
    original = finetune_module.read_examples
    finetune_module.read_examples = lambda src: (tokens, weights) if src == sft / "train" else original(src)
    text = TokenData(root / "data/tokens", "train") if args.mix_rows else None
    try:  # the finetune stage's own training, with finetune.mix for the mixed rows
        with tempfile.TemporaryDirectory() as tmp:
            model = finetune_module.finetune(cfg, base, sft / "train", sft / "val", Path(tmp), {"bench": 1},
                                             text=text).model
    finally:
        finetune_module.read_examples = original
    nan = float("nan")  # a val stream too short for the varied probe's rows gives {} (printed as nan)
    after, varied_after = copy_probe(model, stream, 32), varied_copy_probe(model, stream, 48)
    if args.save:
        save_model(model, args.save)
    held_out = [c for c in read_conversations(sft / "val") if is_checkable(c)]
    prompts = [prompt_and_reference(c["messages"])[0] for c in held_out]
    replies = answers(model, fmt, prompts, ChatEvalParams().max_new_tokens, 32)
    acc, per_task, right = score(held_out, replies)
    versus, _, _ = baseline_metrics(held_out, train, right)
    for c, reply in list(zip(held_out, replies))[:6]:
        print(f"{c['task']:8s} expected {prompt_and_reference(c['messages'])[1][:40]!r:44s} said {reply[:40]!r}")
    print(f"RESULT acc={acc:.3f} best_baseline_acc={versus['best_baseline_acc']:.3f}"
          f" gain_over_best_baseline={versus['gain_over_best_baseline']:+.3f} p_value={versus['gain_p_value']:.2g} "
          + " ".join(f"acc_{t}={a:.3f} best_baseline_{t}={versus[f'best_baseline_{t}']:.3f}" for t, a in per_task.items())
          + f" copy_repeat_top1_before={before['copy_repeat_top1']:.3f} copy_first_top1_before={before['copy_first_top1']:.3f}"
          f" copy_repeat_top1_after={after['copy_repeat_top1']:.3f} copy_first_top1_after={after['copy_first_top1']:.3f}"
          f" copy_varied_repeat_top1_before={varied_before.get('copy_varied_repeat_top1', nan):.3f}"
          f" copy_varied_first_top1_before={varied_before.get('copy_varied_first_top1', nan):.3f}"
          f" copy_varied_repeat_top1_after={varied_after.get('copy_varied_repeat_top1', nan):.3f}"
          f" copy_varied_first_top1_after={varied_after.get('copy_varied_first_top1', nan):.3f}"
          f" mix_rows={args.mix_rows} n_val_items={len(held_out)} seconds={time.perf_counter() - t0:.0f}")


if __name__ == "__main__":
    main()
