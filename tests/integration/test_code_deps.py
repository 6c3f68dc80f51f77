"""Code deps against real runs: what each stage's process imported is among its deps in dvc.yaml, and
editing a module makes `dvc status` report exactly the stages that can run it."""

from __future__ import annotations

import json

import pytest
import yaml

from llmpipe.ops.codedeps import NOT_CODE_DEPS
from tests.conftest import clone_repo, run

pytestmark = pytest.mark.integration


def test_every_module_a_stage_process_imported_is_a_dep(tiny_pipeline):
    deps = {name: set(s["deps"]) for name, s in yaml.safe_load((tiny_pipeline / "dvc.yaml").read_text())["stages"].items()}
    traced = [json.loads(line) for line in (tiny_pipeline.parent / "imports.jsonl").read_text().splitlines()]
    assert {t["stage"] for t in traced} == set(deps)  # every stage ran and reported
    for t in traced:
        files = {m.replace(".", "/") + ".py" for m in t["modules"]}
        files = {f if (tiny_pipeline / f).exists() else f.removesuffix(".py") + "/__init__.py" for f in files}
        # tracking and what only it imports (envlock) never write an output: no code deps (codedeps.NOT_CODE_DEPS)
        missing = sorted(files - deps[t["stage"]] - {m.replace(".", "/") + ".py" for m in NOT_CODE_DEPS})
        assert not missing, f"{t['stage']} imported modules that are not its deps: {missing}"


# module -> the stages whose process can run it (what the architecture intends, written by hand)
EDITS = {
    "llmpipe/data/quality.py": {"filter"},
    "llmpipe/tokens/split.py": {"split", "tokenizer", "tokenize", "tasks", "sft-data"},
    "llmpipe/data/ngrams.py": {"split", "tokenize", "tasks", "sft-data"},
    "llmpipe/model/decode.py": {"pretrain", "evaluate", "benchmark", "sample", "finetune", "rl", "chat-eval"},
    "llmpipe/evals/contamination.py": {"tasks"},
    "llmpipe/training/generate.py": {"sample", "rl", "chat-eval"},
    "llmpipe/config/pretrain.py": {"pretrain", "evaluate", "benchmark", "sample", "finetune", "rl", "chat-eval"},
    "llmpipe/stages/registry.py": {"scrape", "filter", "dedup", "split", "tokenizer", "tokenize", "trace-index",
                                   "tasks", "pretrain",
                                   "evaluate", "benchmark", "sample", "sft-data", "finetune", "rl", "chat-eval"},
    "llmpipe/tokens/chat.py": {"sft-data", "finetune", "rl", "chat-eval"},
}


@pytest.mark.parametrize("module", list(EDITS))
def test_editing_a_module_reruns_exactly_the_stages_that_can_run_it(tiny_pipeline, tmp_path, module):
    repo = clone_repo(tiny_pipeline, tmp_path / "repo")
    assert json.loads(run(["dvc", "status", "--json"], repo).stdout or "{}") == {}
    with open(repo / module, "a", encoding="utf-8") as f:
        f.write("\n# an edit\n")
    status = json.loads(run(["dvc", "status", "--json"], repo).stdout)
    changed = {name for name, entries in status.items()
               if any(module in e.get("changed deps", {}) for e in entries if isinstance(e, dict))}
    assert changed == EDITS[module], status
