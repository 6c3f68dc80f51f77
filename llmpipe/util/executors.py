"""Run a data stage's shards in parallel through a Prefect task runner.

Local processes (Prefect's ProcessPoolTaskRunner) by default; a Dask cluster through prefect-dask's
DaskTaskRunner when scale.dask_address names a scheduler (every worker must see the repository's
data/ folder: a shared file system). One shard, or one worker, runs in-process with no pool to start.
Each shard function writes its own output file atomically and returns small stats, so a retried or
repeated shard changes nothing, and the outputs do not depend on where or in what order shards ran.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
from typing import Any, Callable, Iterator, Sequence

from llmpipe.config.ops import ScaleParams

log = logging.getLogger(__name__)


def exit_with_parent() -> None:
    """A process-pool initializer (Linux): the worker is killed when the stage process dies. A SIGKILLed
    stage would otherwise leave workers finishing their shards into the work folder while the restarted
    stage writes the same shards (llmpipe.util.resume)."""
    with contextlib.suppress(Exception):  # not Linux, no libc: workers outlive a killed parent as before
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG


@contextlib.contextmanager
def shared_prefect_api() -> Iterator[None]:
    """Make worker processes use this process's Prefect API. With no server configured, Prefect starts a
    temporary one per process (8-15 s each here); starting it once and handing its URL down through the
    environment lets every worker process share it."""
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    url = os.environ.get("PREFECT_API_URL") or get_current_settings().api.url
    if not url:
        from prefect.server.api.server import SubprocessASGIServer

        server = SubprocessASGIServer()  # the instance Prefect's own ephemeral mode uses in this process
        server.start(timeout=get_current_settings().server.ephemeral.startup_timeout_seconds)
        url = server.api_url
    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = url  # spawned workers read their settings from the environment
    try:
        with temporary_settings({PREFECT_API_URL: url}):
            yield
    finally:
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous


def map_shards(fn: Callable[[Any], Any], items: Sequence, scale: ScaleParams, name: str) -> list:
    """[fn(item) for item in items], run through the configured task runner; results in item order."""
    workers = scale.workers or os.cpu_count() or 1
    if not scale.dask_address and (len(items) <= 1 or workers == 1):
        return [fn(item) for item in items]

    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE

    if scale.dask_address:
        from prefect_dask import DaskTaskRunner

        runner = DaskTaskRunner(address=scale.dask_address)
        where = f"Dask cluster {scale.dask_address}"
    else:
        from prefect.task_runners import ProcessPoolTaskRunner

        runner = ProcessPoolTaskRunner(max_workers=min(workers, len(items)), initializer=exit_with_parent)
        where = f"{min(workers, len(items))} local processes"
    log.info("%s: %d shards on %s", name, len(items), where)
    # A shard that fails once (a worker lost, a transient I/O error) is retried; its output is atomic.
    shard_task = task(fn, name=f"{name}-shard", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=1)
    token = next(_JOB_TOKENS)
    _SHARD_JOBS[token] = (shard_task, items)
    try:
        with shared_prefect_api():
            return flow(_run_shard_job, name=f"llmpipe-{name}-shards", task_runner=runner,
                        validate_parameters=False)(token)
    finally:
        del _SHARD_JOBS[token]


# Prefect pickles the running flow (its function, closure and parameters) into every task it submits.
# A flow that closed over the items made each of N shards carry all N items: memory quadratic in the
# shards (bench/scale.py at 2 GB: 1.8 GB in the local stage, 1.9 GB in the Dask scheduler). The flow's
# function is module-level (pickled by name) and its one parameter is a token for this table.
_SHARD_JOBS: dict[int, tuple[Any, Sequence]] = {}
_JOB_TOKENS = itertools.count()


def _run_shard_job(token: int) -> list:
    shard_task, items = _SHARD_JOBS[token]
    futures = [shard_task.submit(item) for item in items]
    return [f.result() for f in futures]
