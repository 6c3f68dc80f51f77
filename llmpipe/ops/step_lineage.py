"""`llmpipe lineage --step N`: the documents behind every row of training step N.

Batches are a pure function of (seed, step, micro-step), so the rows of any step are recomputed, not
logged: from the record the run kept of how it draws batches (llmpipe.training.data_order: seed, rows,
block size, document alignment, ranks and micro-steps), by the very function training called
(TokenData.row_starts). A row is block_size + 1 consecutive tokens of one shard; documents lie back to
back in the split, so a row can cover the end of one document and the start of the next: each is listed
with the token range of it the row holds (data/tokens/train_docs.parquet gives their provenance).

Rows are listed per micro-step in global order (rank r holds rows r * micro_batch_size onwards), so a
run on 2 ranks of 4 rows lists exactly what the same run on 1 rank of 8 rows lists, and a resumed run
what the uninterrupted one does.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from llmpipe.stages.registry import stage
from llmpipe.tokens.loader import TokenData, first_half_twice
from llmpipe.tokens.shards import MANIFEST
from llmpipe.tokens.trace import DocTable
from llmpipe.training.data_order import KEY, layout_at, row_length_at_step, shard_bases, step_rows
from llmpipe.util.io import InputError, read_json

PRETRAIN = stage("pretrain")
TEXT_CHARS = 48  # characters of each document part shown in the table


def record_from_model(model_dir: Path) -> dict:
    """The data-order record the pretrain stage wrote into the model's config.json."""
    config = read_json(model_dir / "config.json")
    if KEY not in config:
        raise InputError(f"{model_dir / 'config.json'}: no {KEY} record (the model predates it: re-run pretrain)")
    return config[KEY]


def record_from_checkpoint(ckpt_dir: Path) -> dict:
    """The record of a run in progress or stopped: its latest checkpoint's, up to the step it reached."""
    state = read_json(ckpt_dir / "state.json")
    if KEY not in state.get("history", {}):
        raise InputError(f"{ckpt_dir / 'state.json'}: no {KEY} record (the checkpoint predates it)")
    identity = state.get("identity", {})
    return {**state["history"][KEY], "steps": state["step"], "data_sha256": identity.get("data_sha256"),
            "data_dvc_md5": identity.get("data_dvc_md5")}


def check_data(token_dir: Path, order: dict) -> None:
    want = order.get("data_sha256")
    if want and want != hashlib.sha256((token_dir / MANIFEST).read_bytes()).hexdigest():
        raise InputError(f"{token_dir}: not the tokens this model was trained on (DVC hash "
                         f"{order.get('data_dvc_md5') or 'unrecorded'}): check out the commit that made the "
                         "model and `dvc checkout` (or `dvc pull`) its data")


def step_lineage(token_dir: Path, order: dict, step: int, tokenizer=None) -> dict:
    """Every row of step `step` with the documents it touches (see the module docstring). With a
    tokenizer, each document part carries its text."""
    if step > order.get("steps", step):
        raise InputError(f"--step {step}: the run trained {order['steps']} steps")
    data = TokenData(token_dir, order["split"])
    docs = DocTable.load(token_dir / f"{order['split']}_docs.parquet", made_by="tokenize")
    files = [s["file"] for s in data.manifest.shards(order["split"])]
    bases, block = shard_bases(data), order["block_size"]
    rows = []
    for micro, row, shard, offset, repeated in step_rows(data, order, step):
        stored = data.row_tokens(shard, offset, block)
        split_offset = int(bases[shard]) + offset
        # a repeated row trained on its first block + 1 - block // 2 tokens only, shown twice
        parts = docs.overlapping(split_offset, split_offset + len(stored) - (block // 2 if repeated else 0))
        ids = first_half_twice(stored[None])[0] if repeated else stored
        if tokenizer is not None:  # each document's own tokens, as stored (a repeat's copy aside)
            for p in parts:
                held = stored[p["row_start"] : p["row_start"] + p["doc_end"] - p["doc_start"]]
                p["text"] = tokenizer.decode(held.tolist(), skip_special_tokens=False)
        rows.append({"micro_step": micro, "row": row, "shard": files[shard], "shard_offset": offset,
                     "split_offset": split_offset, "repeated": repeated, "ids": ids.tolist(), "docs": parts})
    layout = layout_at(order, step)
    return {"step": step, "batch": step - 1, "tokens_dir": str(token_dir), "split": order["split"],
            "seed": order["seed"], "micro_batch_size": order["micro_batch_size"], "block_size": block,
            "doc_aligned": order["doc_aligned"], "repeat_share": order.get("repeat_share", 0.0),
            "row_length": row_length_at_step(order, step),
            "world_size": layout["world_size"],
            "grad_accum_steps": layout["grad_accum_steps"], "rows": rows}


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def pieces(length: int | None, block: int) -> str:
    """How the step's attention saw its rows: whole, or cut by the sequence-length warm-up."""
    if length is None:
        return ("; row length not recorded (a run from before the record kept it: with "
                "pretrain.seq_warmup_steps its early steps may have trained shorter pieces)")
    if length == block:
        return ""
    return (f"; sequence-length warm-up: each row trained as {block // length} pieces of {length} tokens, "
            "attention within a piece")


def format_table(result: dict) -> str:
    r, rows, per_rank = result, result["rows"], result["micro_batch_size"]
    id_width = min(max([len("document id")] + [len(d["id"]) for row in rows for d in row["docs"]]), 40)
    lines = [f"step {r['step']} (global batch {r['batch']}) of {r['tokens_dir']}, {r['split']} split: "
             f"seed {r['seed']}, {r['world_size']} rank(s) x {per_rank} rows x {r['grad_accum_steps']} "
             f"micro-step(s), rows of {r['block_size'] + 1} tokens, doc_aligned {str(r['doc_aligned']).lower()}"
             + pieces(r["row_length"], r["block_size"]),
             f"(rank k trained on rows {per_rank}k to {per_rank}k+{per_rank - 1} of each micro-step; "
             "doc tokens: the range of the document the row holds"
             + ("; x2: the row showed its first half twice, pretrain.repeat_share" if r.get("repeat_share") else "")
             + ")",
             f"{'micro':>5} {'row':>4}  {'shard:offset':24} {'doc tokens':>13}  {'document id':{id_width}} "
             f"{'source':10} {'title':24}  text"]
    for row in rows:
        for i, d in enumerate(row["docs"]):
            where = f"{row['shard']}:{row['shard_offset']}"
            where += " (x2)" if row.get("repeated") else ""
            head = f"{row['micro_step']:>5} {row['row']:>4}  {where:24}" if i == 0 else " " * 36
            text = repr(_clip(d["text"], TEXT_CHARS)) if "text" in d else ""
            lines.append(f"{head} {d['doc_start']:>6}-{d['doc_end']:<6}  {_clip(d['id'], id_width):{id_width}} "
                         f"{_clip(d['source'], 10):10} {_clip(d['title'] or d['location'], 24):24}  {text}".rstrip())
    return "\n".join(lines)


def command(args) -> None:
    model_dir = args.model_dir or args.root / PRETRAIN.out("model")
    ckpt_dir = args.root / PRETRAIN.out("checkpoints")
    if (model_dir / "config.json").exists() or args.model_dir is not None:
        order = record_from_model(model_dir)
    elif (ckpt_dir / "state.json").exists():
        order = record_from_checkpoint(ckpt_dir)
    else:
        raise InputError(f"{model_dir}: no model, and no checkpoint in {ckpt_dir} (run `dvc repro pretrain`)")
    token_dir = args.root / PRETRAIN.inp("tokens")
    check_data(token_dir, order)
    tok_path = args.root / PRETRAIN.inp("tokenizer")
    tokenizer = None
    if tok_path.exists():
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(tok_path))
    result = step_lineage(token_dir, order, args.step, tokenizer)
    result["tokens_dir"] = PRETRAIN.inp("tokens").as_posix()  # as the repository names it
    print(json.dumps(result, ensure_ascii=False) if args.json else format_table(result))
