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
import threading
import time
import uuid
from collections import deque
from typing import Any, Callable, Iterable, Iterator, Sequence

from llmpipe.config.ops import ScaleParams
from llmpipe.util.io import InputError

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
            results = flow(_run_shard_job, name=f"llmpipe-{name}-shards", task_runner=runner,
                           validate_parameters=False)(token)
    finally:
        del _SHARD_JOBS[token]
    release_cluster(scale)
    return results


RESTART_TIMEOUT_S = 120  # for the workers to shut down and come back


def release_cluster(scale: ScaleParams) -> None:
    """After a stage's shards ran on the Dask cluster, restart its workers if scale.dask_restart_workers.
    A worker serves every stage and keeps what each one imported and allocated (releasing_memory trims
    the heap, but not the modules, caches and fragments): bench/scale.py's idle cluster held 0.2 GB fresh
    and 1.25 GB after dedup, which the next stages' peaks then carried. Client.restart_workers, not
    Client.restart: it refuses workers without a nanny before stopping any (Client.restart would shut them
    down for good) and does not release other clients' keys; still, their running tasks are cut short and
    the data the workers held is lost, so this is for a cluster of the pipeline's own (off by default)."""
    if not (scale.dask_address and scale.dask_restart_workers):
        return
    from distributed import Client

    t0 = time.perf_counter()
    where = f"scale.dask_restart_workers: the workers of the Dask cluster {scale.dask_address}"
    with Client(scale.dask_address, set_as_default=False) as client:  # an unreachable scheduler: its own error
        workers = list(client.scheduler_info(n_workers=-1)["workers"])
        try:
            client.restart_workers(workers, timeout=RESTART_TIMEOUT_S)
        except KeyError as err:  # a worker left between the listing and the restart; the others were restarted
            log.warning("%s: worker %s left the cluster during the restart", where, err)
        except ValueError as err:  # a worker without a nanny: refused before any worker was stopped
            raise InputError(f"{where} cannot be restarted ({err}); start them with a nanny (`dask worker`'s "
                             "default) or set scale.dask_restart_workers: false") from err
        except TimeoutError as err:
            raise InputError(f"{where} did not come back within {RESTART_TIMEOUT_S} s ({err}); this stage's "
                             "shards are done, and a rerun resumes from them") from err
        except Exception as err:  # noqa: BLE001 - a nanny's own failure, passed on by the scheduler as it is
            raise InputError(f"{where} could not be restarted ({type(err).__name__}: {err}); this stage's "
                             "shards are done, and a rerun resumes from them") from err
    log.info("restarted the %d workers of Dask cluster %s in %.1f s (scale.dask_restart_workers)", len(workers),
             scale.dask_address, time.perf_counter() - t0)


def releasing_memory(fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """fn(*args, **kwargs) in a worker that outlives its shards (a Dask worker serves every stage), then the freed
    memory handed back to the system: without that a worker kept what its largest shard had freed, in
    pyarrow's mimalloc pool and in glibc's heap (an idle 2-worker cluster: 0.98 GB at 0.2 GB of text)."""
    with glibc_thresholds_for_a_shard():
        try:
            return fn(*args, **kwargs)
        finally:
            gc.collect()
            if "pyarrow" in sys.modules:
                sys.modules["pyarrow"].default_memory_pool().release_unused()
            _glibc("malloc_trim", 0)


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters (malloc.h)
GLIBC_MMAP_THRESHOLD = 128 * 1024  # glibc's initial mmap threshold, fixed once MALLOC_TRIM_THRESHOLD_ is set
_lifted = {"shards": 0}  # shards running in this process with the thresholds lifted (a worker may run several)
_lifted_lock = threading.Lock()


@contextlib.contextmanager
def glibc_thresholds_for_a_shard() -> Iterator[None]:
    """For the shard's duration, lift the malloc thresholds that Dask's nanny fixes in its workers
    (MALLOC_TRIM_THRESHOLD_=65536, which also pins glibc's mmap threshold at 128 KB): every larger
    numpy temporary was then a fresh mmap and its page faults, and dedup's signature pass ran 2x slower
    in a Dask worker (a 60 MB shard: 7.5 s against 3.6 s). The worker's settings come back when its last
    running shard ends (other tasks on a shared cluster keep them), and the shard's freed memory is
    trimmed either way. Elsewhere (no such variable) glibc's own adaptive thresholds are left alone."""
    trim = os.environ.get("MALLOC_TRIM_THRESHOLD_", "")
    if not (trim.isascii() and trim.isdigit()) or int(trim) >= 2**31 or os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        yield  # not the nanny's setting (or one we could not put back exactly): left as it is
        return
    with _lifted_lock:
        _lifted["shards"] += 1
        if _lifted["shards"] == 1:
            _glibc("mallopt", M_MMAP_THRESHOLD, 32 << 20)  # the largest glibc allows on 64-bit
            _glibc("mallopt", M_TRIM_THRESHOLD, 128 << 20)
    try:
        yield
    finally:
        with _lifted_lock:
            _lifted["shards"] -= 1
            if _lifted["shards"] == 0:
                _glibc("mallopt", M_TRIM_THRESHOLD, int(trim))
                _glibc("mallopt", M_MMAP_THRESHOLD, GLIBC_MMAP_THRESHOLD)


def _glibc(name: str, *args: int) -> None:
    with contextlib.suppress(Exception):  # not glibc (musl, macOS): nothing to tune or trim
        import ctypes

        getattr(ctypes.CDLL(None), name)(*args)


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


def ordered_on_cluster(fn: Callable, jobs: Iterable[tuple], address: str, name: str,
                       wait_for_workers_s: float = 60) -> Iterator:
    """fn(*job) for each job on the Dask cluster at `address`, yielded in job order, with at most two jobs
    per worker thread in flight: for passes that stream their inputs (dedup's signatures), which
    map_shards' all-at-once submission would hold in memory whole. A job that fails (a transient I/O
    error, a worker lost while running it) is sent once more, as map_shards' tasks are retried once; a job
    whose data was lost with its worker fails (a rerun resumes from the completion records)."""
    from distributed import Client

    with Client(address, set_as_default=False) as client:
        try:
            client.wait_for_workers(1, timeout=wait_for_workers_s)
        except TimeoutError:
            raise InputError(f"scale.dask_address: the Dask cluster at {address} has no workers (waited "
                             f"{wait_for_workers_s:.0f} s); start some, or set scale.dask_address: null") from None
        window = 2 * max(1, sum(client.nthreads().values()))
        log.info("%s: shards on Dask cluster %s, %d in flight", name, address, window)

        def submit(data):
            # the key names the pass in the cluster's task stream
            return client.submit(_unpacked, fn, data, key=f"{fn.__name__}-{uuid.uuid4().hex}")

        def result(data, future):
            try:
                return future.result()
            except Exception as err:  # noqa: BLE001 - any failure gets the one retry; a second one is raised
                log.warning("%s: a shard failed on the cluster (%s: %s); sending it once more", name,
                            type(err).__name__, err)
                return submit(data).result()  # a shard whose data went with a lost worker fails again here

        def send(job):
            # scattered, the job's data is held by a worker, where the task then runs, rather than in the
            # task's definition (which the scheduler would keep for every shard in flight) or here
            [data] = client.scatter([job], hash=False)
            return data, submit(data)

        yield from in_order(jobs, send, window, lambda sent: result(*sent))


def in_order(jobs: Iterable, submit: Callable[[Any], Any], window: int, result: Callable[[Any], Any]) -> Iterator:
    """result(submit(job)) for each job, in job order, with at most `window` submitted and not yet
    collected: a bounded pipeline over a stream of shards (local processes or a cluster)."""
    pending: deque = deque()
    for job in jobs:
        pending.append(submit(job))
        del job  # not held here while the oldest result is awaited (a job can be a whole shard's text)
        if len(pending) >= window:
            yield result(pending.popleft())
    while pending:
        yield result(pending.popleft())
