"""Issue 29: a shard's completion record is trusted only when its inputs, params, code and outputs all
match (llmpipe.util.resume); a stage redoes an altered shard and one whose record has a wrong hash."""

import json
import os

from llmpipe.stages import filter as filter_stage
from llmpipe.stages import scrape
from llmpipe.stages.params import parse_params
from llmpipe.stages.registry import output
from llmpipe.util.imports import closure
from llmpipe.util.resume import PACKAGE_ROOT, WORK_DIR, ShardLedger, code_hash, json_hash, text_hash
from llmpipe.util.tally import Tally


def finished_shard(tmp_path, params="p", code="c"):
    ledger = ShardLedger(tmp_path / "work", params, code)
    ledger.path("a.bin").parent.mkdir(parents=True)
    ledger.path("a.bin").write_bytes(b"shard bytes")
    ledger.commit("a", "in-1", ["a.bin"], {"docs": 3})
    return ledger


def test_a_matching_record_is_resumed(tmp_path):
    ledger = finished_shard(tmp_path)
    assert ledger.lookup("a", "in-1") == {"docs": 3}
    assert ShardLedger(tmp_path / "work", "p", "c").lookup("a", "in-1") == {"docs": 3}  # a new process


def test_changed_inputs_params_or_code_run_the_shard_again(tmp_path):
    assert finished_shard(tmp_path / "1").lookup("a", "in-2") is None
    finished_shard(tmp_path / "2")
    assert ShardLedger(tmp_path / "2" / "work", "p2", "c").lookup("a", "in-1") is None
    finished_shard(tmp_path / "3")
    assert ShardLedger(tmp_path / "3" / "work", "p", "c2").lookup("a", "in-1") is None


def test_an_altered_or_missing_output_runs_the_shard_again(tmp_path):
    ledger = finished_shard(tmp_path / "altered")
    ledger.path("a.bin").write_bytes(b"shard bytez")  # same size, other bytes
    assert ledger.lookup("a", "in-1") is None
    assert not ledger.record_path("a").exists()  # the stale record is gone
    ledger = finished_shard(tmp_path / "missing")
    ledger.path("a.bin").unlink()
    assert ledger.lookup("a", "in-1") is None


def test_a_record_with_a_wrong_hash_or_broken_json_runs_the_shard_again(tmp_path):
    ledger = finished_shard(tmp_path / "hash")
    record = json.loads(ledger.record_path("a").read_text())
    record["outputs"]["a.bin"] = "0" * 64
    ledger.record_path("a").write_text(json.dumps(record))
    assert ledger.lookup("a", "in-1") is None
    ledger = finished_shard(tmp_path / "json")
    ledger.record_path("a").write_text('{"shard": "a", "inp')  # cut short (cannot happen: written atomically)
    assert ledger.lookup("a", "in-1") is None


def test_hashes_tell_apart_what_matters():
    assert text_hash(["ab", "c"]) != text_hash(["a", "bc"])
    assert json_hash({"a": 1, "b": 2}) == json_hash({"b": 2, "a": 1}) != json_hash({"a": 1, "b": 3})
    # the code hash covers the modules that make the output, not just the stage's file
    assert "llmpipe.data.quality" in closure(PACKAGE_ROOT, ["llmpipe.stages.filter"])
    assert code_hash("llmpipe.stages.filter") != code_hash("llmpipe.stages.scrape")


def test_tally_survives_a_record():
    tally = Tally(2)
    tally.count("docs_in", 5)
    tally.note("removed_docs", "language", example={"id": "x", "reason": "fr (0.99)"})
    back = Tally.from_dict(json.loads(json.dumps(tally.to_dict())))
    assert (back.totals, back.groups, back.examples, back.max_examples) == \
        (tally.totals, tally.groups, tally.examples, 2)


def test_filter_redoes_the_altered_shard_and_the_one_with_a_wrong_record(tmp_path):
    (tmp_path / "in").mkdir()
    for i in range(8):
        (tmp_path / "in" / f"f{i}.txt").write_text(
            "\n".join(f"Line {j} of file {i}: the tide came in over the flats before the village woke." for j in range(8)))
        os.utime(tmp_path / "in" / f"f{i}.txt", (1_700_000_000, 1_700_000_000))
    params = parse_params({"scrape": {"sources": [{"kind": "local", "paths": ["in/*.txt"], "files_per_shard": 2}]},
                           "filter": {"min_chars": 100, "quality": {"gopher_repetition": {"enabled": False}}},
                           "scale": {"workers": 1}})
    scrape.run(params, tmp_path)
    reference = filter_stage.run(params, tmp_path).metrics
    out = tmp_path / output("filter.docs")
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    assert reference["shards_run"] == len(files) == 4 and reference["shards_resumed"] == 0
    assert not (tmp_path / WORK_DIR).exists()

    # an interrupted run left every shard finished; then one shard's file and another's record are spoilt
    ledger = ShardLedger.open(tmp_path, "filter", filter_stage.__name__, params.filter)
    parts = sorted((tmp_path / output("scrape.docs")).iterdir())
    for part in parts:
        filter_stage.resumable_part(part, params.filter, ledger)
    with open(ledger.path(parts[1].name), "ab") as f:
        f.write(b"\0")
    record = json.loads(ledger.record_path(parts[2].name).read_text())
    record["outputs"][parts[2].name] = "f" * 64
    ledger.record_path(parts[2].name).write_text(json.dumps(record))

    again = filter_stage.run(params, tmp_path).metrics
    assert (again["shards_resumed"], again["shards_run"]) == (2, 2)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files
    assert {k: v for k, v in again.items() if not k.startswith(("shards_", "seconds"))} == \
        {k: v for k, v in reference.items() if not k.startswith(("shards_", "seconds"))}


def test_worker_counts_keep_records_but_package_versions_do_not(tmp_path, monkeypatch):
    """Lowering tokenize.workers after an out-of-memory kill keeps the finished shards; another version
    of an installed package (a refreshed lock) redoes them."""
    import llmpipe.util.resume as resume

    section = {"tokenize": {"batch_bytes": 1000, "workers": 4}, "tokenizer": "abc"}
    fewer = {"tokenize": {"batch_bytes": 1000, "workers": 1}, "tokenizer": "abc"}
    other_batches = {"tokenize": {"batch_bytes": 2000, "workers": 4}, "tokenizer": "abc"}
    ledger = ShardLedger.open(tmp_path, "tokenize", "llmpipe.stages.tokenize", section)
    assert ShardLedger.open(tmp_path, "tokenize", "llmpipe.stages.tokenize", fewer).params == ledger.params
    assert ShardLedger.open(tmp_path, "tokenize", "llmpipe.stages.tokenize", other_batches).params != ledger.params
    resume.environment_hash.cache_clear()
    real = resume.installed()
    monkeypatch.setattr(resume, "installed", lambda: {**real, "tokenizers": "0.0.1"})
    try:
        assert ShardLedger.open(tmp_path, "tokenize", "llmpipe.stages.tokenize", section).params != ledger.params
    finally:
        resume.environment_hash.cache_clear()


def test_a_malformed_hold_is_refused_and_an_unset_one_does_nothing(tmp_path, monkeypatch):
    import pytest

    from llmpipe.util.resume import HELD_FILE, HOLD_ENV

    monkeypatch.delenv(HOLD_ENV, raising=False)
    assert not (finished_shard(tmp_path / "unset").folder / HELD_FILE).exists()
    for spec in ("before:0", "during:1", "after:x"):
        monkeypatch.setenv(HOLD_ENV, spec)
        with pytest.raises(ValueError, match=HOLD_ENV):
            finished_shard(tmp_path / spec.replace(":", "-"))
