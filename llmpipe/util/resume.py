"""Resuming a data stage shard by shard (issue 29), as datatrove's and NeMo Curator's completion markers.

A stage writes each output shard atomically into its work folder, data/.llmpipe-work/<stage>/ (ignored
by git and DVC, never an out), then a small JSON completion record beside it naming:
- `inputs`: a hash of what the shard read (each stage says what: a content hash of the input part,
  of the batch's texts, or for scrape the unit's inputs' names, sizes and mtimes);
- `params`: the sha256 of the stage's params section (plus what else the shard depends on, such as
  dedup's boilerplate lines) without the keys that set only how many workers or threads run (lowering
  them is the natural answer to an out-of-memory kill and must not throw finished shards away), and of
  the installed packages' versions (trafilatura, tokenizers, pyarrow... decide the bytes too: a lock
  refreshed between the kill and the restart redoes every shard);
- `code`: the sha256 of the source of the stage module and every project module it imports;
- `outputs`: the sha256 of every file the shard wrote, and `result`: its stats, for the stage's totals.

A restarted stage (after a SIGKILL, an OOM, a lost machine) skips a shard only when its record matches
all three hashes and every output it names is there with its recorded hash; any other record is
deleted and the shard runs again. At the end the stage publishes its outputs atomically as before
(one rename of a finished folder or file), so DVC sees the same outs with the same hashes as an
uninterrupted run, and deletes the work folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Iterable

from llmpipe.util.envlock import installed
from llmpipe.util.imports import closure, module_file
from llmpipe.util.io import atomic_path, file_sha256, write_json

log = logging.getLogger(__name__)

WORK_DIR = Path("data/.llmpipe-work")  # relative to the repository root; in .gitignore and .dvcignore
# Seconds to sleep before and after each shard's record: stretches a tiny corpus's stage so that the kill
# test's random point can land anywhere in it (tests/integration/test_resume_shards.py). Unset in real runs.
PAUSE_ENV = "LLMPIPE_SHARD_PAUSE_S"
# "before:K" or "after:K": the stage stops at the K-th record of its work folder (before or after writing
# it), writes the file HELD_FILE there and waits to be killed, so that the kill test's point does not
# depend on the machine's load. Tests only, with one worker (two workers could both count K-1 records and
# both hold). Unset in real runs.
HOLD_ENV = "LLMPIPE_SHARD_HOLD"
HELD_FILE = "held"
HOLD_LIMIT_S = 600
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def json_hash(obj: Any) -> str:
    """sha256 of an object's canonical JSON (sorted keys): a params section's model_dump(mode="json")."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def text_hash(texts: Iterable[str]) -> str:
    """sha256 of a sequence of strings, each length-prefixed (so ["ab", "c"] and ["a", "bc"] differ)."""
    h = hashlib.sha256()
    for t in texts:
        data = ("" if t is None else str(t)).encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


SPEED_ONLY_KEYS = frozenset({"workers", "threads"})  # change how fast a shard runs, never its bytes


def without_speed_keys(obj: Any) -> Any:
    """A params section (nested dicts) without the keys that only set parallelism."""
    if isinstance(obj, dict):
        return {k: without_speed_keys(v) for k, v in obj.items() if k not in SPEED_ONLY_KEYS}
    return obj


@cache
def environment_hash() -> str:
    """sha256 of the installed packages and their versions."""
    return json_hash(sorted(installed().items()))


@cache
def code_hash(module: str) -> str:
    """sha256 of the source files of `module` and of every project module it can import (the import
    graph DVC's code deps use), in module-name order."""
    h = hashlib.sha256()
    for name in sorted(closure(PACKAGE_ROOT, [module])):
        path = module_file(PACKAGE_ROOT, name)
        if path is not None:
            h.update(name.encode("utf-8") + b"\0")
            h.update(path.read_bytes())
    return h.hexdigest()


@dataclass(frozen=True)
class ShardLedger:
    """The work folder of one stage run: finished shards under shards/, their records under records/.
    Frozen and small, so it pickles to the process-pool and Dask workers that run the shards."""

    folder: Path
    params: str
    code: str

    @classmethod
    def open(cls, root: Path, stage: str, module: str, params: Any) -> "ShardLedger":
        """The ledger of `stage` (its work folder under `root`), for this params section and module."""
        section = params.model_dump(mode="json") if hasattr(params, "model_dump") else params
        return cls(Path(root) / WORK_DIR / stage, json_hash([without_speed_keys(section), environment_hash()]),
                   code_hash(module))

    def path(self, name: str) -> Path:
        """Where a shard writes its output file `name` (write it with util.io.atomic_path)."""
        return self.folder / "shards" / name

    def record_path(self, shard: str) -> Path:
        return self.folder / "records" / f"{shard}.json"

    def lookup(self, shard: str, inputs: str) -> dict | None:
        """The recorded result of `shard` when it finished with these inputs, params and code and its
        outputs are intact; else None (a stale or broken record is deleted: the shard runs again)."""
        path = self.record_path(shard)
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        why = self._mismatch(record, inputs)
        if why is None:
            return record["result"]
        log.info("shard %s runs again: %s", shard, why)
        path.unlink(missing_ok=True)
        return None

    def _mismatch(self, record: dict, inputs: str) -> str | None:
        for key, want in (("inputs", inputs), ("params", self.params), ("code", self.code)):
            if record.get(key) != want:
                return f"its {key} changed"
        if not isinstance(record.get("outputs"), dict) or "result" not in record:
            return "malformed record"
        for name, digest in record["outputs"].items():
            out = self.path(name)
            if not out.is_file():
                return f"output {name} is missing"
            if file_sha256(out) != digest:
                return f"output {name} was altered"
        return None

    def commit(self, shard: str, inputs: str, outputs: Iterable[str], result: Any) -> None:
        """Record `shard` as finished: call after its output files (names under shards/) are written."""
        pause = float(os.environ.get(PAUSE_ENV) or 0)
        time.sleep(pause)  # a kill here: the outputs are written, the record is not
        self._hold("before")
        record = {"shard": shard, "inputs": inputs, "params": self.params, "code": self.code,
                  "outputs": {name: file_sha256(self.path(name)) for name in sorted(outputs)}, "result": result}
        write_json(self.record_path(shard), record)
        time.sleep(pause)
        self._hold("after")

    def _hold(self, when: str) -> None:
        """Wait to be killed at the point HOLD_ENV names (tests only)."""
        spec = os.environ.get(HOLD_ENV)
        if not spec:
            return
        at, _, k = spec.partition(":")
        if at not in ("before", "after") or not k.isdigit() or int(k) < 1:
            raise ValueError(f"{HOLD_ENV}={spec!r}: expected before:K or after:K, K >= 1")
        records = len(list((self.folder / "records").glob("*.json")))
        if at == when and records == int(k) - (at == "before"):
            (self.folder / HELD_FILE).write_text(spec)
            time.sleep(HOLD_LIMIT_S)
            raise RuntimeError(f"{HOLD_ENV}={spec}: held {HOLD_LIMIT_S} s and nobody killed the stage")

    def publish(self, names: Iterable[str], dest: Path) -> None:
        """Put the finished shards' files `names` into folder `dest` (a stage's temporary out folder):
        hard links when the file system allows (no copy), else copies."""
        dest.mkdir(parents=True, exist_ok=True)
        for name in names:
            target = dest / name
            target.unlink(missing_ok=True)
            try:
                os.link(self.path(name), target)
            except OSError:
                with atomic_path(target) as tmp:
                    shutil.copyfile(self.path(name), tmp)

    def clear(self) -> None:
        """Delete the work folder (and data/.llmpipe-work when no other stage's is left): call once the
        stage's outputs are published."""
        shutil.rmtree(self.folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.folder.parent.rmdir()


class ShardCount:
    """How many shards a run resumed and how many it ran, for the log and the stage's metrics."""

    def __init__(self, stage: str, resumed: Iterable[bool] = ()):
        self.stage, self.resumed, self.ran = stage, 0, 0
        for flag in resumed:
            self.add(flag)

    def add(self, resumed: bool) -> None:
        if resumed:
            self.resumed += 1
        else:
            self.ran += 1

    def metrics(self) -> dict[str, int]:
        log.info("%s: %d shards resumed from an earlier run, %d run", self.stage, self.resumed, self.ran)
        return {"shards_resumed": self.resumed, "shards_run": self.ran}
