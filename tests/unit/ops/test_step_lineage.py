"""`llmpipe lineage --step N`: the rows a step trained on, recomputed from the run's record, equal the
rows training drew, for 1 and 2 ranks and after a resume; each row's documents cover it exactly."""

import hashlib

import numpy as np
import pytest
import torch

from llmpipe.ops.step_lineage import check_data, record_from_checkpoint, step_lineage
from llmpipe.tokens.loader import TokenData
from llmpipe.training import data_order
from llmpipe.training.loop import train
from llmpipe.util.io import InputError

from tests.unit.training.test_train import VOCAB, cfg, token_dir  # noqa: F401  (fixture)

DOC_LEN = 41  # write_toy_tokens' documents: 40 tokens and <|endoftext|>


def rows_of(result: dict) -> list[tuple]:
    """What the lineage of a step says it trained on, row by row (provenance included)."""
    return [(r["micro_step"], r["row"], r["shard"], r["shard_offset"], tuple(r["ids"]),
             tuple((d["id"], d["doc_start"], d["doc_end"], d["row_start"]) for d in r["docs"])) for r in result["rows"]]


def record(world: int, rows: int, accum: int, doc_aligned: bool, steps: int = 10, repeat_share: float = 0.0) -> dict:
    order = data_order.record({}, seed=7, rows=rows, block=32, doc_aligned=doc_aligned, world=world, accum=accum,
                              start=0, repeat_share=repeat_share)
    return {**order, "steps": steps}


@pytest.mark.parametrize("doc_aligned,repeat_share", [(False, 0.0), (True, 0.0), (True, 0.25)])
def test_rows_of_a_step_are_the_rows_training_drew(token_dir, tmp_path, monkeypatch, doc_aligned,  # noqa: F811
                                                   repeat_share):
    drawn = {}
    original = TokenData.random_batch

    def recording(self, step, micro_step, *args, **kwargs):  # the real loader, its answers kept
        x, y = original(self, step, micro_step, *args, **kwargs)
        if kwargs.get("stream", 0) == 0:
            drawn[(step, micro_step)] = torch.cat([x, y[:, -1:]], dim=1)
        return x, y

    monkeypatch.setattr(TokenData, "random_batch", recording)
    c = cfg(max_steps=4, warmup_steps=1, grad_accum_steps=2, micro_batch_size=4, eval_interval=4,
            checkpoint_interval=4, seed=7, doc_aligned=doc_aligned, repeat_share=repeat_share)
    res = train(c, token_dir, tmp_path / "ckpt", VOCAB, {"id": 1})
    order = {**res.history[data_order.KEY], "steps": res.step}
    assert order["layout"] == [{"first_step": 1, "world_size": 1, "grad_accum_steps": 2}]
    for step in range(1, 5):
        result = step_lineage(token_dir, order, step)
        assert len(result["rows"]) == 8
        for micro in (0, 1):
            got = [r["ids"] for r in result["rows"] if r["micro_step"] == micro]
            assert torch.equal(torch.tensor(got), drawn[(step - 1, micro)]), (step, micro)
    with pytest.raises(InputError, match="trained 4 steps"):
        step_lineage(token_dir, order, 5)

    # two ranks of 4 rows (two random_batch calls, rank 0 and 1) draw what one rank of 8 does, and
    # lineage lists the same rows for both runs
    data = TokenData(token_dir, "train")
    one, two = (record(w, r, 1, doc_aligned, repeat_share=repeat_share) for w, r in ((1, 8), (2, 4)))
    for step in (1, 3, 10):
        ranks = torch.cat([torch.cat([x, y[:, -1:]], dim=1) for x, y in (
            original(data, step - 1, 0, 4, 32, 7, rank=r, world=2, doc_aligned=doc_aligned, repeat_share=repeat_share)
            for r in (0, 1))])
        assert torch.equal(torch.tensor([r["ids"] for r in step_lineage(token_dir, two, step)["rows"]]), ranks)
        assert rows_of(step_lineage(token_dir, one, step)) == rows_of(step_lineage(token_dir, two, step))


def test_each_row_lists_every_document_it_touches(token_dir):  # noqa: F811
    result = step_lineage(token_dir, record(1, 16, 1, False), 2)
    data = TokenData(token_dir, "train")
    split = np.concatenate([np.asarray(a, dtype=np.int64) for a in data.arrays])
    assert result["block_size"] == 32 and len(result["rows"]) == 16
    spanning = 0
    for row in result["rows"]:
        docs = row["docs"]
        assert sum(d["doc_end"] - d["doc_start"] for d in docs) == len(row["ids"]) == 33
        assert [d["row_start"] for d in docs] == [0] + list(np.cumsum([d["doc_end"] - d["doc_start"] for d in docs])[:-1])
        spanning += len(docs) > 1
        for d in docs:  # the document's own tokens, from its start in the split, are the row's
            index = int(d["id"].removeprefix("train-"))
            doc = split[index * DOC_LEN : (index + 1) * DOC_LEN]
            part = row["ids"][d["row_start"] : d["row_start"] + d["doc_end"] - d["doc_start"]]
            assert doc[d["doc_start"] : d["doc_end"]].tolist() == part
        assert split[row["split_offset"] : row["split_offset"] + 33].tolist() == row["ids"]
    assert spanning > 0  # rows of 33 tokens over documents of 41: most span two


def test_a_repeated_row_lists_only_the_documents_of_the_tokens_it_trained_on(token_dir):  # noqa: F811
    class Ids:  # a tokenizer whose text is the ids themselves
        def decode(self, ids, skip_special_tokens=False):
            return ",".join(map(str, ids))

    result = step_lineage(token_dir, record(1, 16, 1, False, repeat_share=0.25), 2, tokenizer=Ids())
    split = np.concatenate([np.asarray(a, dtype=np.int64) for a in TokenData(token_dir, "train").arrays])
    repeated = [row for row in result["rows"] if row["repeated"]]
    assert len(repeated) == 4 and result["repeat_share"] == 0.25
    for row in repeated:  # 33 tokens: the first 16, then the first 17 again; the documents cover those 17
        assert row["ids"][16:32] == row["ids"][:16]
        assert sum(d["doc_end"] - d["doc_start"] for d in row["docs"]) == 17
        held = split[row["split_offset"] : row["split_offset"] + 17]  # the documents' text: their stored tokens
        assert ",".join(d["text"] for d in row["docs"]) == ",".join(map(str, held))
    plain = [row for row in result["rows"] if not row["repeated"]]
    assert all(sum(d["doc_end"] - d["doc_start"] for d in row["docs"]) == 33 for row in plain)


def test_a_resumed_run_lists_what_the_uninterrupted_one_does(token_dir, tmp_path):  # noqa: F811
    c = cfg(max_steps=6, warmup_steps=1, checkpoint_interval=3, eval_interval=6, micro_batch_size=4, doc_aligned=True)
    whole = train(c, token_dir, tmp_path / "a", VOCAB, {"id": 1})
    whole_order = {**whole.history[data_order.KEY], "steps": whole.step}
    train(c, token_dir, tmp_path / "b", VOCAB, {"id": 1}, stop_after=3)
    stopped = record_from_checkpoint(tmp_path / "b")  # lineage of a run stopped at its checkpoint
    assert stopped["steps"] == 3
    for step in (1, 3):
        assert rows_of(step_lineage(token_dir, stopped, step)) == rows_of(step_lineage(token_dir, whole_order, step))
    resumed = train(c, token_dir, tmp_path / "b", VOCAB, {"id": 1})
    resumed_order = {**resumed.history[data_order.KEY], "steps": resumed.step}
    assert resumed_order == whole_order  # one layout: the resume changed nothing of the data order
    for step in range(1, 7):
        assert rows_of(step_lineage(token_dir, resumed_order, step)) == rows_of(step_lineage(token_dir, whole_order, step))


def test_a_run_resumed_on_more_ranks_keeps_both_layouts():
    history = {}
    data_order.record(history, 1, 4, 32, False, world=1, accum=2, start=0)
    data_order.record(history, 1, 4, 32, False, world=1, accum=2, start=3)  # same layout: no new entry
    order = data_order.record(history, 1, 4, 32, False, world=2, accum=1, start=6)
    assert order["layout"] == [{"first_step": 1, "world_size": 1, "grad_accum_steps": 2},
                               {"first_step": 7, "world_size": 2, "grad_accum_steps": 1}]
    assert data_order.layout_at(order, 6)["world_size"] == 1 and data_order.layout_at(order, 7)["world_size"] == 2


def test_tokens_other_than_the_trained_ones_are_refused(token_dir):  # noqa: F811
    trained = hashlib.sha256((token_dir / "manifest.json").read_bytes()).hexdigest()
    check_data(token_dir, {"data_sha256": trained})
    with pytest.raises(InputError, match="not the tokens this model was trained on .DVC hash abc.dir"):
        check_data(token_dir, {"data_sha256": "0" * 64, "data_dvc_md5": "abc.dir"})


def test_lineage_names_the_pieces_a_warm_up_step_cut_its_rows_into(token_dir, tmp_path):  # noqa: F811
    """The sequence-length warm-up trains each early row as shorter pieces; the record keeps the length
    each step used (the warm-up's end moves with a paced run's length), lineage reports it, and a
    resumed run's record equals the uninterrupted one's."""
    from llmpipe.ops.step_lineage import format_table
    from llmpipe.training.optim import row_length_at

    c = cfg(max_steps=12, warmup_steps=1, checkpoint_interval=4, eval_interval=12, micro_batch_size=4,
            seq_warmup_steps=6, seq_warmup_min=8)  # block 32: pieces of 8, then 16, then whole rows
    whole = train(c, token_dir, tmp_path / "a", VOCAB, {"id": 1})
    order = {**whole.history[data_order.KEY], "steps": whole.step}
    assert order["row_lengths"] == [{"first_step": 1, "length": 8}, {"first_step": 3, "length": 16},
                                    {"first_step": 7, "length": 32}]
    for step in range(1, 13):  # what the loop used, step by step (step N runs at loop index N - 1)
        assert step_lineage(token_dir, order, step)["row_length"] == row_length_at(step - 1, c)
    assert "4 pieces of 8 tokens" in format_table(step_lineage(token_dir, order, 2))
    assert "warm-up" not in format_table(step_lineage(token_dir, order, 7))  # whole rows: nothing said
    train(c, token_dir, tmp_path / "b", VOCAB, {"id": 1}, stop_after=4)  # stopped within the stretch of 16
    resumed = train(c, token_dir, tmp_path / "b", VOCAB, {"id": 1})
    assert {**resumed.history[data_order.KEY], "steps": resumed.step} == order
    # a record from before the warm-up existed says so rather than claim whole rows
    old = {k: v for k, v in order.items() if k != "row_lengths"}
    assert step_lineage(token_dir, old, 2)["row_length"] is None
    assert "not recorded" in format_table(step_lineage(token_dir, old, 2))
