"""Data-stage shards through Prefect task runners (scrape, filter) and dedup's signature pass: local
processes and a real local Dask cluster give the same bytes as an in-process run."""

import os

import pytest

from llmpipe.stages import dedup, scrape
from llmpipe.stages import filter as filter_stage
from llmpipe.stages.params import parse_params
from llmpipe.stages.registry import output

pytestmark = pytest.mark.integration

SENTENCES = ["The tide came in over the flats before the village woke.",
             "A cart rattled down the lane with apples for the market.",
             "Smoke rose from the chimneys and the church bell rang seven.",
             "Children ran along the harbour wall, shouting at the gulls."]


def corpus(root):
    (root / "in").mkdir()
    for i in range(7):
        text = "\n".join(f"{SENTENCES[(i + j) % 4]} Line {j} of file {i}, said plainly and at length."
                         for j in range(12))
        (root / "in" / f"f{i}.txt").write_text(text)
    (root / "in" / "junk.txt").write_bytes(bytes(64))
    for f in (root / "in").iterdir():
        os.utime(f, (1_700_000_000, 1_700_000_000))  # fetched_at of a local file is its mtime


def run_data_stages(root, scale):
    params = parse_params({"scrape": {"sources": [{"kind": "local", "paths": ["in/*.txt"], "files_per_shard": 2}]},
                           "filter": {"min_chars": 100, "shard_docs": 2, "quality": {"gopher_repetition": {"enabled": False}}},
                           "dedup": {"shard_docs": 2, "workers": 2 if scale.get("workers") == 2 else 1},
                           "scale": scale})
    s = scrape.run(params, root).metrics
    f = filter_stage.run(params, root).metrics
    d = dedup.run(params, root).metrics
    assert d["docs_in"] == f["docs_out"] and d["shards_run"] >= 3  # pass 1 over several shards
    files = (sorted((root / output("scrape.docs")).glob("*.parquet")) + sorted((root / output("filter.docs")).glob("*.parquet"))
             + [root / output("dedup.docs"), root / output("dedup.removed")])
    return s, f, {p.relative_to(root).as_posix(): p.read_bytes() for p in files}


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    root = tmp_path_factory.mktemp("serial")
    corpus(root)
    return run_data_stages(root, {"workers": 1})


def check_same(result, serial):
    s, f, files = result
    assert s["shards"] == serial[0]["shards"] == 4 and f["shards"] == 4
    assert s["docs_out"] == 7 and s["skipped_binary"] == 1 and f["docs_out"] == serial[1]["docs_out"] > 0
    assert files.keys() == serial[2].keys() and files == serial[2]  # byte-identical parts


def test_local_process_pool_matches_in_process(tmp_path, serial):
    corpus(tmp_path)
    check_same(run_data_stages(tmp_path, {"workers": 2}), serial)


def test_dask_cluster_matches_in_process(tmp_path, serial):
    from distributed import Client, LocalCluster, get_task_stream

    corpus(tmp_path)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as client, get_task_stream(client) as ran:
            pids = client.run(os.getpid)
            check_same(run_data_stages(tmp_path, {"dask_address": cluster.scheduler_address}), serial)
            # scale.dask_restart_workers is off by default: the same workers, dedup's modules still loaded
            # (in both workers: scattered shards go to the workers in turn, and there are at least 3)
            assert client.run(os.getpid) == pids and all(client.run(eval, MINHASH_LOADED).values())
            assert restarts(client) == 0
    # dedup's signature pass ran on the cluster's workers, not on processes of the stage's own
    assert sum(t["key"].startswith("fingerprint_shard-") for t in ran.data) >= 3, [t["key"] for t in ran.data]


def fail_once(marker_dir: str, k: int) -> int:
    """Fails the first time it sees k (a marker file remembers it across worker processes)."""
    from pathlib import Path

    marker = Path(marker_dir) / f"seen-{k}"
    if k % 3 == 1 and not marker.exists():
        marker.touch()
        raise OSError(f"transient failure of shard {k}")
    return k * k


def always_fails(k: int) -> int:
    if k == 1:
        raise ValueError(f"shard {k} always fails")
    return k


def test_cluster_pass_keeps_order_retries_a_failed_shard_once_and_names_a_cluster_without_workers(tmp_path):
    from distributed import LocalCluster

    from llmpipe.util.executors import ordered_on_cluster
    from llmpipe.util.io import InputError

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        jobs = ((str(tmp_path), k) for k in range(10))
        assert list(ordered_on_cluster(fail_once, jobs, cluster.scheduler_address, "test")) == [k * k for k in range(10)]
        assert len(list(tmp_path.glob("seen-*"))) == 3  # shards 1, 4, 7 failed once each and were sent again
        with pytest.raises(ValueError, match="shard 1 always fails"):  # a second failure is raised
            list(ordered_on_cluster(always_fails, ((k,) for k in range(3)), cluster.scheduler_address, "test"))
    with LocalCluster(n_workers=0, dashboard_address=None) as empty:
        with pytest.raises(InputError, match="scale.dask_address: the Dask cluster at .* has no workers"):
            list(ordered_on_cluster(fail_once, iter([(str(tmp_path), 0)]), empty.scheduler_address, "test",
                                    wait_for_workers_s=2))


# probes sent to the workers as code, not as this module's functions: unpickling those would import this
# module, and with it the stages and dedup's modules, in the very workers being probed
MINHASH_LOADED = "'llmpipe.data.minhash' in __import__('sys').modules"


def worker_state(client):
    """{worker: (pid, whether dedup's signature module is loaded there)}"""
    pids, loaded = client.run(os.getpid), client.run(eval, MINHASH_LOADED)
    return {w: (pids[w], loaded[w]) for w in pids}


def restarts(client) -> int:
    return sum(event.get("action") == "restart-workers" for _, event in client.get_events("all"))


def test_restarting_workers_after_each_cluster_stage_frees_them_and_changes_no_byte(tmp_path, serial):
    import dask
    from distributed import Client, LocalCluster

    corpus(tmp_path)
    # A LocalCluster closes a worker's nanny for good when, lost-worker-timeout (15 s) after the worker
    # left, no worker of its name is registered (distributed/deploy/spec.py, _update_worker_status). The
    # stages restart the workers a few seconds apart, so the timer of one restart could fire while the next
    # restart had them down, and the nannies were closed: no worker came back (CI at 95d87be, 91b34e7).
    # `dask worker` processes under an external scheduler have no such timer (docs/scaling.md).
    with dask.config.set({"distributed.deploy.lost-worker-timeout": "1h"}), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            before = worker_state(client)
            check_same(run_data_stages(tmp_path, {"dask_address": cluster.scheduler_address,
                                                  "dask_restart_workers": True}), serial)
            client.wait_for_workers(2, timeout=240)  # their start is not what is tested
            after = worker_state(client)
            assert restarts(client) == 3  # after scrape's, filter's and dedup's shards
    # new worker processes, and dedup's modules (imported by its signature pass) are gone with the old ones
    assert {pid for pid, _ in before.values()}.isdisjoint(pid for pid, _ in after.values())
    assert not any(loaded for _, loaded in after.values())


def test_a_cluster_whose_workers_have_no_nanny_is_refused_before_any_is_stopped():
    from distributed import Client, LocalCluster

    from llmpipe.config.ops import ScaleParams
    from llmpipe.util.executors import release_cluster
    from llmpipe.util.io import InputError

    # workers in the cluster's own process have no nanny: a restart would shut them down for good
    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster:
        scale = ScaleParams(dask_address=cluster.scheduler_address, dask_restart_workers=True)
        with pytest.raises(InputError, match="scale.dask_restart_workers: the workers of the Dask cluster .* "
                                             "cannot be restarted .*nanny"):
            release_cluster(scale)
        with Client(cluster) as client:
            assert len(client.nthreads()) == 1 and restarts(client) == 0
