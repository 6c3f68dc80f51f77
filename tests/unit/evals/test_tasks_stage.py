"""The tasks stage on a small corpus: user task files, the in-domain task and the
index; a bad task file stops it with exit status 2 naming the file and the line."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml

from llmpipe.config.evals import TasksParams
from llmpipe.config.tokens import SplitParams
from llmpipe.stages import split as split_stage
from llmpipe.stages import tasks as tasks_stage
from llmpipe.util.io import InputError

RNG = np.random.default_rng(0)
WORDS = [f"w{i}" for i in range(300)]


@pytest.fixture
def root(tmp_path):
    texts = [" ".join(RNG.choice(WORDS, 800)) for _ in range(6)]
    (tmp_path / "data/dedup").mkdir(parents=True)
    pd.DataFrame({"id": [f"doc{i}" for i in range(6)], "text": texts}).to_parquet(tmp_path / "data/dedup/docs.parquet")
    (tmp_path / "tasks").mkdir()
    return tmp_path


def params_for(custom, indomain=8, inloop=("indomain",)) -> dict:
    return {"split": {"val_fraction": 0.34, "seed": 0},
            "tasks": {"builtin": {}, "custom": custom, "indomain": {"items": indomain, "context_chars": 100,
                                                                     "continuation_chars": 30},
                      "inloop": {"tasks": list(inloop), "items": 3}}}


def run_tasks(root, custom, indomain=8, inloop=("indomain",)):
    """The stage's run() on validated sections, as the shell calls it (the CLI's exit status: below)."""
    params = params_for(custom, indomain, inloop)
    split_stage.run(SimpleNamespace(split=SplitParams(**params["split"])), root)
    return tasks_stage.run(SimpleNamespace(tasks=TasksParams(**params["tasks"])), root)


def test_user_tasks_indomain_and_inloop_items(root):
    lines = [{"query": f"q{i}", "choices": ["a", "b", "c"], "gold": i % 3} for i in range(10)]
    (root / "tasks/mc.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    result = run_tasks(root, [{"name": "mine", "path": "tasks/mc.jsonl", "kind": "multiple_choice", "items": 4}],
                       inloop=("indomain", "mine"))
    manifest = json.loads((root / "data/evals/tasks/manifest.json").read_text())
    assert manifest["tasks"] == ["mine", "indomain"] and len(manifest["ids"]["mine"]) == 4
    inloop = [json.loads(x) for x in (root / "data/evals/inloop.jsonl").read_text().splitlines()]
    assert [i["task"] for i in inloop] == ["indomain"] * 3 + ["mine"] * 3
    metrics = result.metrics
    assert metrics["indomain_items"] == 8 and metrics["indomain_contaminated"] == 0  # val documents only
    assert metrics["index_documents"] >= 3
    # resizing the benchmark's subsets leaves the in-loop items (pretraining's input) byte for byte alone
    before = (root / "data/evals/inloop.jsonl").read_bytes()
    run_tasks(root, [{"name": "mine", "path": "tasks/mc.jsonl", "kind": "multiple_choice", "items": 7}],
              indomain=12, inloop=("indomain", "mine"))
    assert (root / "data/evals/inloop.jsonl").read_bytes() == before
    assert len(json.loads((root / "data/evals/tasks/manifest.json").read_text())["ids"]["mine"]) == 7


@pytest.mark.parametrize("content, message", [
    ('{"query": "q", "choices": ["a", "b"], "gold": 0}\n{"query": "q", "choices": ["a", "b"]}\n',
     "mc.jsonl:2: missing field 'gold'"),
    ('{"query": "q", "choices": ["a", "b"], "gold": 5}\n', "mc.jsonl:1: answer index gold=5 out of range"),
    ('{"query": "q", "choices": ["a", "b"], "gold": 0}\n\n{not json\n', "mc.jsonl:3: malformed JSON"),
    ("\n", "task 'mine' has no items"),
])
def test_a_bad_task_file_stops_the_stage_naming_file_and_line(root, content, message):
    (root / "tasks/mc.jsonl").write_text(content)
    with pytest.raises(InputError) as err:
        run_tasks(root, [{"name": "mine", "path": "tasks/mc.jsonl", "kind": "multiple_choice"}], indomain=0, inloop=())
    assert message in str(err.value)
    assert not (root / "data/evals/tasks").exists()


def test_the_command_exits_2_naming_the_file_and_line(root):
    (root / "tasks/mc.jsonl").write_text('{"query": "q", "choices": ["a", "b"], "gold": 0}\n{"query": 1}\n')
    params = params_for([{"name": "mine", "path": "tasks/mc.jsonl", "kind": "multiple_choice"}], 0, ())
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    split_stage.run(SimpleNamespace(split=SplitParams(**params["split"])), root)
    proc = subprocess.run([sys.executable, "-m", "llmpipe.cli", "--root", str(root), "tasks"], capture_output=True,
                          text=True)
    assert proc.returncode == 2, proc.stderr
    assert f"{root / 'tasks/mc.jsonl'}:2: field 'query' must be str" in proc.stderr
