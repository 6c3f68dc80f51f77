"""Reliability: faults, bad input and hostile files, with nothing lost. Runs on its own with
`bash scripts/test.sh -m reliability`.

Covered here: SIGKILL of every stage under `dvc repro` then a rerun (data outputs byte-equal to an
uninterrupted run, final weights bitwise equal); every params field with a wrong type, an
out-of-range value and an unknown key beside it; hostile files (a pickle disguised as weights or a
checkpoint, a gzip bomb, a 50 MB HTML page, a WARC with a wrong Content-Length, NUL bytes, archive
members escaping with `..` or absolute paths); an unreachable MLflow server; a Prefect shard task that
fails once; a read-only output folder and a full disk; two `dvc repro` at once. Elsewhere: SIGKILL
during pretraining then resume (test_resume_kill.py), a failing stage stopping the flow
(test_flow.py), HTTP errors, timeouts and oversized pages (test_fetch.py).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import tracemalloc
import types
import typing
from pathlib import Path

import psutil
import pytest
import yaml
from pydantic import BaseModel

from llmpipe import cli
from llmpipe.data.sources import KINDS
from llmpipe.stages.params import Params, parse_params
from llmpipe.stages.registry import STAGE_NAMES as STAGES
from llmpipe.stages.registry import STAGES as STAGES_DECLARED
from llmpipe.util.io import InputError

from tests.conftest import TINY_PARAMS, clone_repo, copy_repo, run

pytestmark = pytest.mark.reliability

REPO = Path(__file__).resolve().parents[2]
LLMPIPE = [sys.executable, "-m", "llmpipe.cli"]
PROSE = ("The river ran high after the rain, and the ferryman waited for the water to fall before he "
         "would take anyone across. ")


# --- bad params: every field, three ways ---------------------------------------------------------

SOURCE_KINDS = {kind: module.PARAMS for kind, module in KINDS.items()}  # the discovered plug-ins
BASE_SOURCES = [{"kind": "demo"}, {"kind": "local", "paths": ["*.txt"]}, {"kind": "warc", "paths": ["*.warc"]},
                {"kind": "http", "urls": ["https://example.org/"]}]


def _unwrap(annotation):
    """(inner type, constraint metadata) of Optional[...] / Annotated[...] annotations."""
    meta = []
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation, *extra = typing.get_args(annotation)
            for m in extra:  # Field(ge=...) inside Annotated carries its constraints as metadata
                meta += list(getattr(m, "metadata", [m]))
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation, meta
            annotation = args[0]
        else:
            return annotation, meta


def leaf_fields(model: type[BaseModel], prefix: str = ""):
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        inner, meta = _unwrap(field.annotation)
        meta = meta + list(field.metadata)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            yield from leaf_fields(inner, path + ".")
        elif path == "scrape.sources":
            for i, source in enumerate(BASE_SOURCES):
                yield from leaf_fields(SOURCE_KINDS[source["kind"]], f"scrape.sources.{i}.")
        elif not path.endswith(".kind"):
            yield path, inner, meta


def out_of_range(inner, meta):
    if typing.get_origin(inner) is typing.Literal:
        return "no-such-choice"
    for m in meta:
        name = type(m).__name__
        if name in ("Ge", "Gt"):
            return (m.ge if name == "Ge" else m.gt) - 1
        if name in ("Le", "Lt"):
            return (m.le if name == "Le" else m.lt) + 1
        if name == "MinLen" and m.min_length > 0:
            return [] if typing.get_origin(inner) is list else ""
    return None


def base_params() -> dict:
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    data["scrape"]["sources"] = [dict(s) for s in BASE_SOURCES]
    data.setdefault("scale", {})
    parse_params(data)  # the base itself is valid
    return data


def set_path(data: dict, path: str, value) -> None:
    keys = path.split(".")
    node = data
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    node[keys[-1]] = value


FIELDS = list(leaf_fields(Params))


def test_every_field_is_walked():
    paths = [p for p, _, _ in FIELDS]
    assert len(paths) > 100 and "pretrain.model.d_model" in paths and "scrape.sources.3.delay_s" in paths


def command_reading(section: str) -> str:
    """The first stage that reads `section` (a stage validates only the sections it reads, and the
    shell reads tracking for every stage); `validate` for a section no stage reads (schedule)."""
    readers = [s.name for s in STAGES_DECLARED if section in (*s.params, *s.settings, "tracking")]
    return readers[0] if readers else "validate"


@pytest.mark.parametrize("path, inner, meta", FIELDS, ids=[p for p, _, _ in FIELDS])
def test_bad_value_of_every_field_stops_before_any_work(path, inner, meta, tmp_path, capsys):
    sentinel = tmp_path / "data" / "keep.txt"
    sentinel.parent.mkdir()
    sentinel.write_text("untouched")
    wrong_type = [1, 2] if typing.get_origin(inner) is dict else {"wrong": "type"}
    cases = [("wrong type", path, wrong_type), ("out of range", path, out_of_range(inner, meta)),
             ("unknown key", path.rsplit(".", 1)[0] + "." + path.rsplit(".", 1)[1] + "_typo"
              if "." in path else path + "_typo", 1)]
    for what, key, value in cases:
        if value is None:
            continue  # a field without bounds or choices cannot be out of range
        data = base_params()
        set_path(data, key, value)
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
        code = cli.main(["--root", str(tmp_path), command_reading(path.split(".")[0])])
        err = capsys.readouterr().err
        assert code == 2, (what, key, err)
        assert key in err, (what, key, err)
        assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["keep.txt"]  # no work started
        assert sentinel.read_text() == "untouched" and not (tmp_path / "mlflow.db").exists()


# --- hostile files ---------------------------------------------------------------------------------

class Trap:
    """Unpickling this creates a file: proof that something was unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_disguised_as_weights_or_checkpoint_is_refused(tmp_path, capsys):
    import torch

    from llmpipe.model.gpt import GPT, GPTConfig
    from llmpipe.training.checkpoint import load_checkpoint
    from llmpipe.model.weights import save_model

    marker = tmp_path / "UNPICKLED"
    model = GPT(GPTConfig(vocab_size=64, n_layer=1, n_head=2, d_model=16, block_size=16))
    save_model(model, tmp_path / "data" / "model")
    (tmp_path / "data" / "model" / "model.safetensors").write_bytes(pickle.dumps({"w": Trap(marker)}))
    (tmp_path / "data" / "tokenizer").mkdir()
    (tmp_path / "data" / "tokenizer" / "tokenizer.json").write_text("{}")
    code = cli.main(["--root", str(tmp_path), "export", str(tmp_path / "hf")])
    err = capsys.readouterr().err
    assert code == 2 and "model.safetensors: not a safetensors file" in err and "never read from pickles" in err

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "state.json").write_text(json.dumps({"step": 5, "identity": {"run": 1}, "optimizer": {}, "history": {}}))
    torch.save({"w": Trap(marker)}, ckpt / "model.safetensors")  # torch's own pickle format
    opt = torch.optim.AdamW(model.parameters())
    with pytest.raises(InputError, match="ckpt/model.safetensors: not a safetensors file"):
        load_checkpoint(ckpt, model, opt, {"run": 1})
    assert not marker.exists()  # nothing was ever unpickled


def scrape_local(root: Path, **scrape) -> dict:
    from llmpipe.stages import scrape as stage

    params = parse_params({"scrape": {"sources": [{"kind": "local", "paths": ["in/**/*"]}], **scrape},
                           "scale": {"workers": 1}})
    return stage.run(params, root).metrics


def test_hostile_sources_are_counted_and_the_rest_is_read(tmp_path):
    from tests.unit.data.test_sources import RECORDS, warc_bytes

    src = tmp_path / "in"
    src.mkdir()
    (src / "good.txt").write_text(PROSE * 10)
    with gzip.open(src / "bomb.txt.gz", "wb") as f:  # 64 MiB of zeros-like text in ~64 KB
        for _ in range(64):
            f.write(b"a" * (1 << 20))
    (src / "nul.txt").write_bytes(b"\x00" * 1000 + PROSE.encode())
    good = warc_bytes(RECORDS[:1], gz=False)
    start = good.index(b"Content-Length: ") + len(b"Content-Length: ")
    end = good.index(b"\r\n", start)
    (src / "lying.warc").write_bytes(good[:start] + str(int(good[start:end]) + 500).encode() + good[end:])
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in ("../escape.txt", "/abs/path.txt", "fine.txt"):
            data = (PROSE * 5).encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (src / "pack.tar.gz").write_bytes(buf.getvalue())
    tracemalloc.start()
    metrics = scrape_local(tmp_path, max_doc_bytes=2_000_000)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert metrics["docs_out"] == 2  # good.txt and pack.tar.gz!fine.txt
    assert metrics["skipped_oversize"] == 1 and metrics["skipped_binary"] == 1
    assert metrics["skipped_unsafe_member_path"] == 2 and metrics["skipped_truncated_or_corrupt_warc"] == 1
    assert peak < 40e6, peak  # the 64 MiB bomb was never held in memory
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path.parent / "escape.txt").exists()


def test_a_50_mb_html_page(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "good.txt").write_text(PROSE * 10)
    page = b"<html><body>" + b"<div><p>" + PROSE.encode() * 20 + b"</p></div>" * 20_000 + b"</body></html>"
    page = page + b"<!--" + b" " * (50 * 2**20 - len(page) - 7) + b"-->"
    (src / "huge.html").write_bytes(page)
    assert (src / "huge.html").stat().st_size == 50 * 2**20
    t0 = time.monotonic()
    metrics = scrape_local(tmp_path)  # the default limit, 50,000,000 bytes: skipped unread
    assert metrics["docs_out"] == 1 and metrics["skipped_oversize"] == 1 and time.monotonic() - t0 < 30
    t0 = time.monotonic()  # allowed in: extraction is bounded by its timeout (or finishes), nothing hangs
    metrics = scrape_local(tmp_path, max_doc_bytes=60 * 2**20, extractor="trafilatura", extract_timeout_s=2)
    assert metrics["docs_out"] >= 1 and metrics["docs_out"] + metrics["skipped"] == 2, metrics
    assert time.monotonic() - t0 < 60


# --- service faults --------------------------------------------------------------------------------

def test_unreachable_mlflow_server_costs_a_warning_not_the_run(killed):
    """The kill test's reruns ran every stage of the pipeline with MLflow pointing at a port where
    nothing listens."""
    repo, reruns, seconds = killed
    for stage, log in reruns.items():
        ran = f"Running stage '{stage}'" in log  # a stage killed after it finished is not rerun
        assert log.count("tracking disabled") == (1 if ran else 0), (stage, log[-3000:])
        assert seconds[stage] < 300  # no minutes of retries per call (MLflow's defaults: ~4 min a call)
    for name in STAGES:  # the pipeline completed and its metrics stay local, in DVC's metrics files
        assert json.loads((repo / f"data/metrics/{name}.json").read_text())
    assert not (repo / "mlflow.db").exists()


def _fails_once(item, marker_dir):
    marker = Path(marker_dir) / f"{item}.attempted"
    if not marker.exists():
        marker.write_text("1")
        raise OSError("transient: a worker lost its connection")
    return item * 10


def test_a_shard_task_that_fails_once_is_retried_by_prefect(tmp_path):
    import functools

    from llmpipe.config.ops import ScaleParams
    from llmpipe.util.executors import map_shards

    fn = functools.partial(_fails_once, marker_dir=str(tmp_path))
    assert map_shards(fn, [1, 2, 3], ScaleParams(workers=2), "retry-test") == [10, 20, 30]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1.attempted", "2.attempted", "3.attempted"]


# --- write errors ----------------------------------------------------------------------------------

def _data_stage_root(tmp_path: Path) -> Path:
    src = tmp_path / "in"
    src.mkdir()
    rng = random.Random(0)
    words = PROSE.lower().replace(",", "").replace(".", "").split()
    for i in range(40):
        body = "\n\n".join(" ".join(rng.choice(words) for _ in range(60)).capitalize() + "." for _ in range(20))
        (src / f"d{i}.txt").write_text(body)
    params = {"scrape": {"sources": [{"kind": "local", "paths": ["in/*.txt"]}]},
              "filter": {"quality": {name: {"enabled": False} for name in
                                     ("gopher_repetition", "gopher_stop_words", "fineweb_dup_line_chars")}},
              "tracking": {"experiment": "write-errors"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    for stage in ("scrape", "filter"):
        proc = subprocess.run(LLMPIPE + ["--root", str(tmp_path), stage], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
    return tmp_path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_unwritable_output_folder_is_a_clear_error_and_loses_nothing(tmp_path):
    root = _data_stage_root(tmp_path)
    before = snapshot(root / "data")
    (root / "data" / "dedup").write_text("a file where the stage wants a folder")  # root ignores chmod
    proc = subprocess.run(LLMPIPE + ["--root", str(root), "dedup"], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "llmpipe dedup: failed: I/O error on" in proc.stderr and "data/dedup" in proc.stderr
    after = snapshot(root / "data")
    after.pop("dedup")
    assert after == before  # scrape's and filter's outputs and metrics intact


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return shutil.which("mount") is not None and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True).returncode == 0


def test_full_disk_is_a_clear_error_and_loses_nothing(tmp_path, monkeypatch):
    root = _data_stage_root(tmp_path)
    before = snapshot(root / "data")
    mounted = _mount_tmpfs(root / "data" / "dedup", "64k")
    try:
        if mounted:
            proc = subprocess.run(LLMPIPE + ["--root", str(root), "dedup"], capture_output=True, text=True)
            code, err = proc.returncode, proc.stderr
        else:  # no privilege to mount: the same error, injected where the stage writes
            import errno

            import pyarrow.parquet as pq

            def full(*args, **kwargs):
                raise OSError(errno.ENOSPC, "No space left on device", str(root / "data" / "dedup"))

            monkeypatch.setattr(pq.ParquetWriter, "write_table", full)
            monkeypatch.setattr("llmpipe.stages.dedup.write_parquet", full)
            code, err = cli.main(["--root", str(root), "dedup"]), "No space left on device"
        assert code == 1 and "No space left on device" in err, err[-2000:]
        left = sorted(p.name for p in (root / "data" / "dedup").rglob("*"))
        assert not any(n.endswith(".tmp") for n in left), left  # no half-written file stays behind
    finally:
        if mounted:
            subprocess.run(["umount", str(root / "data" / "dedup")], check=True)
    after = snapshot(root / "data")
    # nothing else changed; the signature shards finished before the disk filled stay in the work folder,
    # each with its completion record, for the next run to resume (llmpipe/util/resume.py)
    assert {k: v for k, v in after.items() if not k.startswith(("dedup/", ".llmpipe-work/dedup/"))} == before
    work = sorted(k for k in after if k.startswith(".llmpipe-work/"))
    assert all(k.startswith(".llmpipe-work/dedup/") for k in work), work


# --- SIGKILL of every stage under dvc repro, and two dvc repro at once --------------------------------

DATA_OUTS = ["scrape/docs", "scrape/report.json", "filter/docs", "filter/report.json", "dedup/docs.parquet",
             "dedup/removed.parquet", "dedup/report.json", "dedup/index", "split/assignments.parquet",
             "split/report.json", "tokenizer/tokenizer.json", "tokens",
             "evals/tasks", "evals/inloop.jsonl", "evals/index", "evals/contamination.json",
             "sft/train", "sft/val", "sft/report.json"]


def outs_snapshot(repo: Path) -> dict[str, bytes]:
    files = {}
    for out in DATA_OUTS:
        path = repo / "data" / out
        for f in [path] if path.is_file() else sorted(path.rglob("*")) if path.exists() else []:
            if f.is_file():
                files[f.relative_to(repo / "data").as_posix()] = f.read_bytes()
    return files


def weights(repo: Path, model: str = "model") -> dict:
    from safetensors.torch import load_file

    return load_file(str(repo / "data" / model / "model.safetensors"))


@pytest.fixture(scope="module")
def reference(tiny_pipeline, tmp_path_factory):
    """An uninterrupted `dvc repro` of the tiny pipeline (a copy of the session's run)."""
    return clone_repo(tiny_pipeline, tmp_path_factory.mktemp("reference") / "repo")


DEAD_MLFLOW = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}  # the discard port: nothing listens


def stage_command_running(dvc_pid: int) -> bool:
    try:
        return any("llmpipe" in " ".join(c.cmdline()) for c in psutil.Process(dvc_pid).children(recursive=True))
    except psutil.Error:  # a child ended while being looked at
        return False


@pytest.fixture(scope="module")
def killed(reference, tmp_path_factory):
    """Every stage in turn started under `dvc repro`, SIGKILLed at a random point, checked, and rerun;
    all of it with the MLflow server unreachable. Returns (repo, {stage: rerun output}, rerun seconds)."""
    repo = copy_repo(tmp_path_factory.mktemp("killed") / "repo", TINY_PARAMS)
    expected = outs_snapshot(reference)
    rng = random.Random(int(os.environ.get("LLMPIPE_KILL_SEED", "7")))
    reruns, seconds = {}, {}
    for stage in STAGES:
        proc = subprocess.Popen(["dvc", "repro", "--single-item", stage], cwd=repo, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True,
                                env={**os.environ, **DEAD_MLFLOW})
        for line in proc.stdout:  # wait until the stage's own command starts, then kill at a random point
            if f"Running stage '{stage}'" in line:
                break
        time.sleep(rng.uniform(0.5, 4.0 if stage != "pretrain" else 12.0))
        # The kill lands while the stage's command runs. One that finished already is left to DVC, whose
        # own dvc.lock write is not atomic (a kill there truncates dvc.lock: DVC's, not a stage's, output).
        if stage_command_running(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        # Whatever the killed stage left is complete and right, or absent: never a half-written output.
        got = outs_snapshot(repo)
        assert all(got[k] == expected[k] for k in got if k in expected), stage
        # Each stage reruns to completion before the next is killed (its outputs feed the next).
        t0 = time.monotonic()
        done = run(["dvc", "repro", "--single-item", stage], repo, DEAD_MLFLOW)
        seconds[stage] = time.monotonic() - t0
        assert done.returncode == 0, (stage, done.stdout[-3000:] + done.stderr[-3000:])
        reruns[stage] = done.stdout + done.stderr
    return repo, reruns, seconds


def test_sigkill_of_each_stage_then_repro_loses_nothing(reference, killed):
    import torch

    repo = killed[0]
    final = run(["dvc", "repro"], repo, DEAD_MLFLOW)
    assert final.returncode == 0 and "Running stage" not in final.stdout
    assert outs_snapshot(repo) == outs_snapshot(reference)  # the data stages' outputs, byte for byte
    a, b = weights(reference), weights(repo)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # training resumed exactly
    a, b = weights(reference, "finetune/model"), weights(repo, "finetune/model")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # and so did finetuning
    a, b = weights(reference, "rl/model"), weights(repo, "rl/model")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # and the reward stage
    assert not list((repo / "data").rglob("*.tmp"))  # the reruns cleared what the kills left


def test_two_dvc_repro_at_once_the_second_fails_fast(reference):
    first = subprocess.Popen(["dvc", "repro", "--force", "--single-item", "evaluate"], cwd=reference,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in first.stdout:
        if "Running stage 'evaluate'" in line:
            break
    t0 = time.monotonic()
    second = run(["dvc", "repro"], reference)
    assert second.returncode != 0 and time.monotonic() - t0 < 30
    assert "lock" in (second.stdout + second.stderr).lower()
    rest = first.stdout.read()
    assert first.wait() == 0, rest[-2000:]
    status = run(["dvc", "status"], reference)
    assert status.returncode == 0 and "changed" not in status.stdout  # nothing corrupted
