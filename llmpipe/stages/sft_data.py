"""Stage sft-data: instruction data -> chat-format examples with a loss mask, split train/val.

Two sources, in any mix: the instruction files named in `sft_data.files` (Alpaca, ShareGPT, OpenAI
messages; llmpipe.data.instructions), split by a hash of each conversation, and the demo's checkable
set made from the corpus's plays (llmpipe.data.playqa), split by document as the split stage decided,
so held-out items come from plays neither pretraining nor finetuning saw; a held-out demo item that
still shares a word 13-gram with training text (the pretraining train split or the finetuning train
items) is passed over and listed in the report (val_contaminated). Every record that cannot be
used is counted by reason with file:line in data/sft/report.json; the stage fails (exit 2) only
when no training conversation remains.
"""

from __future__ import annotations

import glob
import itertools
import json
import logging
import random
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import xxhash
from tokenizers import Tokenizer

from llmpipe.data.instructions import BadRecord, read_records, to_conversation
from llmpipe.data.ngrams import NgramSet
from llmpipe.data.playqa import balanced, items_of_play, reply_of
from llmpipe.stages.registry import StageParams, StageResult, stage
from llmpipe.tokens.chat import ChatFormat
from llmpipe.tokens.examples import packed, padded, write_examples
from llmpipe.tokens.split import iter_split_texts, read_val_mask
from llmpipe.util.io import InputError, iter_parquet_batches, write_json
from llmpipe.util.tally import Tally

log = logging.getLogger(__name__)
STAGE = stage("sft-data")


def file_conversations(patterns: list[str], root: Path, tally: Tally) -> list[dict]:
    """Every usable conversation of the files, as {"messages", "source": "file:line"}; the rest counted."""
    out = []
    for pattern in patterns:
        paths = sorted(glob.glob(str(root / pattern), recursive=True))
        if not paths:
            raise InputError(f"sft_data.files: {pattern!r} matches no file under {root}")
        for path in map(Path, paths):
            name = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
            try:
                records = list(read_records(path))
            except OSError as err:
                raise InputError(f"{name}: unreadable ({err.strerror or err})") from None
            for line, record in records:
                tally.count("records")
                try:
                    messages = to_conversation(record)
                except BadRecord as bad:
                    tally.note("skipped", bad.reason, example={"where": f"{name}:{line}", "why": bad.detail})
                    continue
                out.append({"messages": messages, "source": f"{name}:{line}"})
    return out


def is_val(messages: list[dict], val_fraction: float, seed: int) -> bool:
    """Held out by a hash of the conversation itself: a duplicate lands on the same side."""
    key = json.dumps(messages, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return xxhash.xxh64_intdigest(key, seed=seed) / 2.0**64 < val_fraction


CONTAMINATION_NGRAM = 13


def conversation_text(c: dict) -> str:
    return "\n".join(m["content"] for m in c["messages"])


def demo_conversations(docs: Path, assignments: Path, params: StageParams, fits=lambda conversation: True,
                       training: NgramSet | None = None, contaminated: list | None = None) -> tuple[Iterator, Iterator]:
    """(train, val) streams of items from the plays, in `balanced` order, only those that `fits` accepts
    (asked lazily: of the items reached); val items only from the split stage's val documents. With
    `training` (the n-grams of the other training text), the train items' n-grams join it and a val
    item sharing one is passed over and appended to `contaminated`."""
    demo = params.sft_data.demo
    ids, texts = [], []
    for batch in iter_parquet_batches(docs, 64, ["id", "text"]):
        ids += batch.column("id").to_pylist()
        texts += batch.column("text").to_pylist()
    held_out = read_val_mask(assignments, docs) if ids else []
    pools: tuple[list, list] = ([], [])
    for doc_id, text, val in zip(ids, texts, held_out):
        for k, item in enumerate(items_of_play(text, params.sft_data.seed, doc_id, demo.max_speeches,
                                               demo.max_lines, demo.max_chars, demo.speaker_tags)):
            reply = reply_of(item, demo.quote_first)
            record = {"messages": [{"role": "user", "content": item.question}, {"role": "assistant", "content": reply}],
                      "source": f"demo:{doc_id}#{k}", "task": item.task, "passage": item.passage,
                      "stratum": item.stratum}
            if reply != item.answer:  # the reply shows its working (the quoted line): scored on what follows
                record.update(answer=item.answer, quoted=True)
            pools[int(val)].append((record, item))
    # Balanced in every prefix, whatever number of items is taken, and so no trivial rule beats chance;
    # the passage's rows go along, for chat-eval's trivial baselines (llmpipe.evals.trivial).
    if training is not None:
        for c, _ in pools[0]:
            training.add_text(conversation_text(c))

    def clean(c: dict) -> bool:
        if training is not None and training.contains(training.text_ngrams(conversation_text(c))).any():
            contaminated.append(c)
            return False
        return True

    rng = random.Random(params.sft_data.seed)
    keeps = (lambda p: fits(p[0]), lambda p: fits(p[0]) and clean(p[0]))
    train, val = ((c for c, _ in balanced(pool, rng, key=lambda p: p[1], keep=keep)) for pool, keep in zip(pools, keeps))
    return train, val


def render(conversations: Iterable[dict], fmt: ChatFormat, block_size: int, tally: Tally, group: str = "skipped",
           limit: int | None = None) -> tuple[list, list[dict]]:
    """(rendered, kept conversations), at most `limit`: one longer than the context is counted as
    too_long in `group` (the demo's pool counts apart: its long passages are not bad input)."""
    rendered, kept = [], []
    for c in conversations:
        if limit is not None and len(kept) >= limit:
            break
        r = fmt.render(c["messages"])
        if len(r.ids) > block_size + 1:
            tally.note(group, "too_long", example={"where": c["source"], "why": f"{len(r.ids)} tokens, "
                                                   f"the context is {block_size} (sft_data.block_size)"})
            continue
        rendered.append(r)
        kept.append(c)
    return rendered, kept


def run(params: StageParams, root: Path, sink=None) -> StageResult:
    t0 = time.perf_counter()
    cfg = params.sft_data
    try:
        fmt = ChatFormat(Tokenizer.from_file(str(root / STAGE.inp("tokenizer"))))
    except ValueError as err:
        raise InputError(f"{STAGE.inp('tokenizer')}: {err}") from None
    tally = Tally(max_examples=5)
    splits: dict[str, list[dict]] = {"train": [], "val": []}
    for c in file_conversations(cfg.files, root, tally):
        splits["val" if is_val(c["messages"], cfg.val_fraction, cfg.seed) else "train"].append(c)
    # a demo item too long for the context is passed over before it is taken, so the kept ones stay balanced
    fits = lambda c: bool(render([c], fmt, cfg.block_size, tally, group="demo")[1])  # noqa: E731
    docs, assignments = root / STAGE.inp("docs"), root / STAGE.inp("split")
    training, contaminated = NgramSet(CONTAMINATION_NGRAM), []
    if cfg.demo.enabled:  # held-out items are checked against all training text (the train items join inside)
        for text in itertools.chain(iter_split_texts(docs, assignments, want_val=False),
                                    map(conversation_text, splits["train"])):
            training.add_text(text)
    pools = (demo_conversations(docs, assignments, params, fits, training, contaminated) if cfg.demo.enabled
             else ([], []))
    metrics: dict = {}
    for (name, conversations), pool, n in zip(splits.items(), pools, (cfg.demo.train_items, cfg.demo.val_items)):
        rendered, kept = render(conversations, fmt, cfg.block_size, tally)
        demo_rendered, demo_kept = render(pool, fmt, cfg.block_size, tally, group="demo", limit=n)
        rendered, kept = rendered + demo_rendered, kept + demo_kept
        if name == "train" and not kept:
            counts = ", ".join(f"{r} {n}" for r, n in tally.group("skipped").most_common()) or "no records"
            raise InputError(f"sft-data: no usable training conversation ({counts}; see the files in "
                             f"sft_data.files and sft_data.demo)")
        layout = packed if cfg.layout == "packed" else padded
        tokens, mask = layout(rendered, cfg.block_size, fmt.eot)
        write_examples(root / STAGE.out(name), tokens, mask, kept)
        metrics.update({f"{name}_conversations": len(kept), f"{name}_rows": int(tokens.shape[0]),
                        f"{name}_target_tokens": int(mask.sum())})
    skipped = tally.group("skipped")
    metrics.update({f"skipped_{reason}": n for reason, n in sorted(skipped.items())})
    if cfg.demo.enabled:  # passages too long for the context, passed over while choosing demo items
        metrics["demo_passed_over_too_long"] = tally.group("demo")["too_long"]
        metrics["val_contaminated"] = len(contaminated)  # of the held-out items reached, all passed over
    report = {"records_in_files": tally.totals["records"], "skipped": dict(skipped),
              "val_contaminated_dropped": [c["source"] for c in contaminated],
              "examples": tally.examples.get("skipped", {}), **metrics}
    write_json(root / STAGE.out("report"), report)
    for reason, n in skipped.most_common():
        where = ", ".join(e["where"] for e in tally.examples["skipped"].get(reason, [])[:3])
        log.warning("sft-data: %d records skipped as %s (e.g. %s)", n, reason, where)
    metrics["seconds"] = round(time.perf_counter() - t0, 3)
    return StageResult(metrics, artifacts=[root / STAGE.out("report")])
