"""Run a data stage's shards in parallel through a Prefect task runner.

Local processes (Prefect's ProcessPoolTaskRunner) by default; a Dask cluster through prefect-dask's
DaskTaskRunner when scale.dask_address names a scheduler (every worker must see the repository's
data/ folder: a shared file system). One shard, or one worker, runs in-process with no pool to start.
Each shard function writes its own output file atomically and returns small stats, so a retried or
repeated shard changes nothing, and the outputs do not depend on where or in what order shards ran.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import itertools
import logging
import os
import sys
import uuid
from collections import deque
from typing import Any, Callable, Iterable, Iterator, Sequence

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
    shard_task = task(functools.partial(releasing_memory, fn), name=f"{name}-shard", cache_policy=NO_CACHE,
                      retries=1, retry_delay_seconds=1)
    token = next(_JOB_TOKENS)
    _SHARD_JOBS[token] = (shard_task, items)
    try:
        with shared_prefect_api():
            return flow(_run_shard_job, name=f"llmpipe-{name}-shards", task_runner=runner,
                        validate_parameters=False)(token)
    finally:
        del _SHARD_JOBS[token]


def releasing_memory(fn: Callable, *args: Any) -> Any:
    """fn(*args) in a worker that outlives its shards (a Dask worker serves every stage), then the freed
    memory handed back to the system: without that a worker kept what its largest shard had freed, in
    pyarrow's mimalloc pool and in glibc's heap (an idle 2-worker cluster: 0.98 GB at 0.2 GB of text)."""
    _tune_glibc_malloc()
    try:
        return fn(*args)
    finally:
        gc.collect()
        if "pyarrow" in sys.modules:
            sys.modules["pyarrow"].default_memory_pool().release_unused()
        with contextlib.suppress(Exception):  # not glibc: nothing to trim
            import ctypes

            ctypes.CDLL(None).malloc_trim(0)


def _tune_glibc_malloc() -> None:
    """Undo the fixed 64 KB trim threshold that Dask's nanny gives its workers (MALLOC_TRIM_THRESHOLD_):
    it also pins glibc's mmap threshold at 128 KB, so every larger numpy temporary is a fresh mmap and
    its page faults; dedup's signature pass ran 2x slower in a Dask worker (7.5 s against 3.6 s for a
    60 MB shard). Memory still goes back to the system after each shard (releasing_memory)."""
    with contextlib.suppress(Exception):  # not glibc
        import ctypes

        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: the largest glibc allows on 64-bit
        libc.mallopt(-1, 128 << 20)  # M_TRIM_THRESHOLD


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


def _unpacked(fn: Callable, job: tuple) -> Any:
    return releasing_memory(fn, *job)


def ordered_on_cluster(fn: Callable, jobs: Iterable[tuple], address: str, name: str) -> Iterator:
    """fn(*job) for each job on the Dask cluster at `address`, yielded in job order, with at most two jobs
    per worker thread in flight: for passes that stream their inputs (dedup's signatures), which
    map_shards' all-at-once submission would hold in memory whole."""
    from distributed import Client

    with Client(address, set_as_default=False) as client:
        window = 2 * max(1, sum(client.nthreads().values()))
        log.info("%s: shards on Dask cluster %s, %d in flight", name, address, window)
        pending: deque = deque()
        for job in jobs:
            # the job's data straight to a worker (the task then runs there), not through the scheduler,
            # which would hold every in-flight shard's text; the key names the pass in the task stream
            [data] = client.scatter([job], hash=False)
            pending.append(client.submit(_unpacked, fn, data, key=f"{fn.__name__}-{uuid.uuid4().hex}"))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
