"""Issue 29: SIGKILL during scrape, filter, dedup or tokenize (`python -m llmpipe.cli <stage>`) between
shards, inside a shard (its output written, its record not), and at a seeded random point anywhere in the
run, then the same command again: it skips the shards the killed run finished (their completion records
match) and ends with outputs byte-identical to an uninterrupted run's, the work folder gone."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

from llmpipe.stages import dedup, filter as filter_stage, split, tokenize, tokenizer
from llmpipe.stages.params import parse_params
from llmpipe.stages.registry import stage
from llmpipe.util.resume import HELD_FILE, HOLD_ENV, PAUSE_ENV, WORK_DIR

pytestmark = pytest.mark.integration

PAUSE_S = 0.6  # after each shard's record in the killed runs: a tiny corpus's stage lasts long enough
PARAMS = {
    "scrape": {"sources": [{"kind": "local", "paths": ["in/*.txt"], "files_per_shard": 2}]},
    "filter": {"min_chars": 100, "shard_docs": 2, "quality": {"gopher_repetition": {"enabled": False}}},
    "dedup": {"shard_docs": 2, "workers": 1},
    "split": {"val_fraction": 0.3, "seed": 0},
    "tokenizer": {"vocab_size": 300, "min_frequency": 2},
    "tokenize": {"shard_tokens": 1024, "batch_bytes": 1024, "workers": 1},
    "scale": {"workers": 1},
    "tracking": {"experiment": "resume-shards-test", "registered_model": None},
}
WORDS = ("tide flats village cart apples market smoke chimneys church bell children harbour wall gulls "
         "river bridge miller lantern orchard shepherd meadow baker rain thunder").split()
EXPECTED_SHARDS = {"scrape": 4, "filter": 4, "dedup": 4, "tokenize": 4}


def corpus(root, files=8):
    """Distinct English-looking documents (none a near-duplicate of another), 2 files per scrape unit."""
    rng = random.Random(7)
    (root / "in").mkdir(parents=True)
    for i in range(files):
        lines = [f"The {rng.choice(WORDS)} and the {rng.choice(WORDS)} were seen by the {rng.choice(WORDS)} "
                 f"near the {rng.choice(WORDS)} on day {i * 100 + j}, as the {rng.choice(WORDS)} said."
                 for j in range(10)]
        (root / "in" / f"f{i}.txt").write_text("\n".join(lines))
        os.utime(root / "in" / f"f{i}.txt", (1_700_000_000, 1_700_000_000))


def stage_files(root, name):
    """Every file of a stage's outs (registry), relative path -> bytes."""
    files = {}
    for out in stage(name).outputs.values():
        path = root / out.path
        paths = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        files.update({p.relative_to(root).as_posix(): p.read_bytes() for p in paths})
    return files


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run of the data stages: scrape through the CLI (which also creates the MLflow
    database the copies reuse), the others in this process."""
    root = tmp_path_factory.mktemp("full")
    corpus(root)
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    first = cli(root, "scrape")
    assert first.wait(300) == 0, first.stdout.read()[-3000:]
    params = parse_params(PARAMS)
    metrics = {"scrape": json.loads((root / "data" / "metrics" / "scrape.json").read_text()),
               **{name: module.run(params, root).metrics
                  for name, module in [("filter", filter_stage), ("dedup", dedup), ("split", split),
                                       ("tokenizer", tokenizer), ("tokenize", tokenize)]}}
    for name, n in EXPECTED_SHARDS.items():  # several shards each, none resumed
        assert (metrics[name]["shards_run"], metrics[name]["shards_resumed"]) == (n, 0), (name, metrics[name])
    assert not (root / WORK_DIR).exists()
    return root


def cli(root, name, **env):
    # a hold or pause left in the developer's environment would stall the reference and restarted runs
    inherited = {k: v for k, v in os.environ.items() if k not in (HOLD_ENV, PAUSE_ENV)}
    return subprocess.Popen([sys.executable, "-m", "llmpipe.cli", name], cwd=root, env={**inherited, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(proc, ready):
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline and not ready():
        time.sleep(0.02)


def unrecorded_outputs(folder):
    """Finished shard files (not temporaries) that no completion record names."""
    named = {n for r in (folder / "records").glob("*.json") for n in json.loads(r.read_text())["outputs"]}
    present = {p.name for p in (folder / "shards").glob("*") if not p.name.startswith(".")}
    return present - named


# Where the kill lands. The stage holds (HOLD_ENV: writes HELD_FILE and waits to be killed) at a fixed
# record, so the point does not depend on how loaded the machine is:
# - between: held just after the first shard's record, before the next shard starts;
# - unrecorded: held inside the second shard, its output files written and its record not (a restart must
#   run it again);
# - anywhere: a seeded random delay from the moment the stage's work folder appears (each shard pauses
#   PAUSE_S before its record and PAUSE_S after it, so the delay spans the run); held before its last
#   shard's record at the latest, so the kill always comes before the stage ends.
HOLD = {"between": lambda n: "after:1", "unrecorded": lambda n: "before:2", "anywhere": lambda n: f"before:{n}"}
FINISHED = {"between": 1, "unrecorded": 1}  # records when the kill lands (anywhere: 0 to n - 1)


@pytest.mark.parametrize("where", list(HOLD))
@pytest.mark.parametrize("name", list(EXPECTED_SHARDS))
def test_sigkill_then_restart_resumes_shards_byte_identical(tmp_path, reference, name, where):
    root = tmp_path / "ws"
    shutil.copytree(reference, root)
    for out in stage(name).outputs.values():  # as DVC does before it re-runs a stage
        shutil.rmtree(root / out.path) if (root / out.path).is_dir() else (root / out.path).unlink()
    folder = root / WORK_DIR / name
    records = folder / "records"

    n = EXPECTED_SHARDS[name]
    if where == "anywhere":
        proc = cli(root, name, **{PAUSE_ENV: str(PAUSE_S), HOLD_ENV: HOLD[where](n)})
        wait_for(proc, folder.is_dir)
        time.sleep(random.Random(f"resume-{name}-{where}").uniform(0.0, (2 * n - 1.5) * PAUSE_S))
    else:
        proc = cli(root, name, **{HOLD_ENV: HOLD[where](n)})
        wait_for(proc, (folder / HELD_FILE).is_file)
    assert proc.poll() is None, f"{name} finished before it could be killed:\n{proc.stdout.read()[-3000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.3)  # the pool's worker gets its own SIGKILL as its parent dies (PR_SET_PDEATHSIG)
    finished = len(list(records.glob("*.json")))
    if where == "anywhere":
        assert 0 <= finished < n
    else:
        assert finished == FINISHED[where], sorted(p.name for p in folder.rglob("*"))
    if where == "unrecorded":  # a shard's output without its record: a restart must not trust it
        assert unrecorded_outputs(folder), sorted(p.name for p in folder.rglob("*"))
    assert not any((root / out.path).exists() for out in stage(name).outputs.values())  # nothing published

    again = cli(root, name)
    log = again.communicate(timeout=300)[0]
    assert again.returncode == 0, log[-3000:]
    metrics = json.loads((root / "data" / "metrics" / f"{name}.json").read_text())
    assert metrics["shards_resumed"] == finished and metrics["shards_run"] == n - finished
    assert f"{finished} shards resumed from an earlier run" in log
    assert stage_files(root, name) == stage_files(reference, name)  # byte-identical outputs
    assert not (root / WORK_DIR / name).exists()
