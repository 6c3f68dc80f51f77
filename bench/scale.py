"""The data stages at scale: scrape -> filter -> dedup -> split -> tokenizer -> tokenize through the real
CLI on a corpus of --gb GB, on the local executor and on a local Dask cluster, against the same stages on
the demo corpus alone (~5 MB), and a tokenize run killed midway and re-run against the uninterrupted one.

    python bench/scale.py [--gb 2] [--workdir /tmp/llmpipe-scale] [--skip-dask | --skip-local]
                          [--skip-demo] [--skip-resume] [--seed 0] [--dask-restart-workers]

(--skip-local: the Dask run alone, half the time; then the rates and peak_rss_mb are the Dask run's,
cluster processes included, and there is no resume run. --dask-restart-workers: the Dask run with
scale.dask_restart_workers, each cluster stage's workers restarted after its shards.)

The corpus: the demo corpus (the Gutenberg Shakespeare, fetched as the scrape stage does) cut into
documents of 1,500-9,000 words, each from a random window of a random play, its paragraphs shuffled and
one word in 8-20 replaced by another word of the corpus (so the documents differ from each other and from
the plays: 5-gram Jaccard well below dedup's 0.75); 8% of the documents are exact copies of an earlier one
and 8% near-copies (one edit in 100-400 words), so dedup has real work of both kinds. About one document
in 12 is written as an HTML page (<title>, navigation, <article>), the rest as .txt files, 256 files a
scrape shard, named after the play (split.group.by: path_regex keeps a play's variations on one side, as
the demo's split keeps a play's editions). Every run is seeded: the same --gb and --seed give the same corpus.

Each stage runs as `python -m llmpipe.cli --root W --params W/params.yaml <stage>` (a subprocess, so
its peak memory and times are its own) with a params.yaml that is the repository's with scrape.sources
replaced by the local files (and scale.dask_address set for the Dask run). Measured per stage:
- MB/s: the stage's input text in MB (scrape: the files' bytes on disk; filter: its bytes_in; dedup:
  filter's bytes_out; split, tokenize: the documents dedup kept; tokenizer: the train split's bytes),
  over the CLI process's wall time (interpreter start and imports included: ~3-5 s, which is why the
  demo corpus's rates are low; `stage_s` beside it is the stage's own timer, and `own x demo` and the
  RESULT's x_demo_<stage> compare the rates on those own timers);
- peak RSS: the largest sum of the resident memory of the stage process and all its descendants,
  sampled every 0.2 s with psutil (for the Dask run the cluster's worker processes are added, as the
  shards run there; `idle MB` is theirs at rest just before the stage, and the RESULT's
  peak_rss_mb_dask_over_idle the largest peak less it); a peak shorter than 0.2 s can be missed;
- cpu: the CPU seconds of the process and its descendants (psutil, children included once waited;
  the Dask cluster's processes counted from their cpu_times before the stage, a restarted worker's last
  sample and a final reading) over the wall time, in cores.
  `wait` = 1 - cpu / (wall x cores) is the share of the machine's CPU time the stage left idle: I/O
  waits, start-up, and stretches where fewer shards than cores ran. It is an upper bound on the I/O
  share, not a measurement of I/O alone (block-I/O delay accounting is off on this kernel); `read_mb`
  and `write_mb` (/proc/<pid>/io read_bytes and write_bytes, summed over the tree) say how much of it
  touched the disk.
- resumed_identical: after the uninterrupted run, tokenize is started again, sent SIGKILL after half
  its measured wall time, re-run to completion, and every file of data/tokens compared byte for byte
  (sha256) with the uninterrupted run's.
Last line: RESULT gb= seconds= executor=<local|dask> mb_per_s_<stage>= ... peak_rss_mb= (that executor's
at --gb) peak_rss_mb_dask_over_idle= x_demo_<stage>= dask_restart_workers=<0|1> (with a Dask run)
resumed_identical=<1|0|skipped>
"""

from __future__ import annotations

import _root  # noqa: F401  (first: takes bench/ off the import path, see bench/_root.py)

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import psutil
import yaml

from bench._scale_corpus import FILES_PER_SHARD, build_corpus

ROOT = Path(__file__).resolve().parent.parent
STAGES = ["scrape", "filter", "dedup", "split", "tokenizer", "tokenize"]


# --- running and measuring a stage -----------------------------------------------------------------

def workspace(path: Path, sources: list[dict] | None, dask_address: str | None,
              restart_workers: bool = False) -> None:
    """path/params.yaml: the repository's, with these sources (None: the demo's), grouped by the work
    named in each file's name, and this Dask address."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())  # may name a few sections only
    if sources is not None:
        params.setdefault("scrape", {})["sources"] = sources
        params.setdefault("split", {})["group"] = {"by": "path_regex", "path_regex": r"([^/]+)--doc\d+\.\w+$"}
    params.setdefault("scale", {})["dask_address"] = dask_address
    params["scale"]["dask_restart_workers"] = restart_workers
    path.mkdir(parents=True, exist_ok=True)
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def tree(proc: psutil.Process) -> list[psutil.Process]:
    with contextlib.suppress(psutil.NoSuchProcess):
        return [proc, *proc.children(recursive=True)]
    return []


class Sampler(threading.Thread):
    """Peak summed RSS, and the last seen I/O counters, of a process tree (plus extra processes)."""

    def __init__(self, pid: int, extra: Callable[[], list[psutil.Process]]):
        super().__init__(daemon=True)
        self.root, self.extra = psutil.Process(pid), extra  # re-read each time: restarted workers are new processes
        self.peak = 0
        self.io: dict[int, tuple[int, int]] = {}
        self.cpu: dict[int, float] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            rss = 0
            extra = self.extra()
            for p in tree(self.root) + extra:
                try:
                    with p.oneshot():
                        rss += p.memory_info().rss
                        t = p.cpu_times()
                        self.cpu[p.pid] = t.user + t.system  # the last seen: a process that ends keeps its share
                        if p not in extra:
                            io = p.io_counters()
                            self.io[p.pid] = (io.read_bytes, io.write_bytes)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
            self.peak = max(self.peak, rss)
            self.done.wait(0.2)


def sum_of(procs: list[psutil.Process], read: Callable[[psutil.Process], float]) -> float:
    """A reading summed over processes (those gone are skipped)."""
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += read(p)
    return total


def cpu_of(procs: list[psutil.Process]) -> float:
    return sum_of(procs, lambda p: p.cpu_times().user + p.cpu_times().system)


# Away from pyproject.toml's [tool.prefect] (its longer start-up timeout for a loaded machine): set here.
QUIET_PREFECT = {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120", "DO_NOT_TRACK": "true",
                 "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def run_stage(work: Path, name: str, extra: Callable[[], list[psutil.Process]], kill_after: float | None = None,
              api_url: str | None = None) -> dict:
    """Run one stage through the CLI; its wall time, peak RSS, CPU and I/O (see the docstring)."""
    env = {**os.environ, **QUIET_PREFECT, "PYTHONPATH": str(ROOT), "PREFECT_HOME": str(work / ".prefect"),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    if api_url:
        env["PREFECT_API_URL"] = api_url
    log = open(work / f"{name}.log", "ab")
    before = extra()
    extra_cpu0 = {p.pid: cpu_of([p]) for p in before}  # the cluster's CPU before the stage (new workers: 0)
    idle_mb = sum_of(before, lambda p: p.memory_info().rss) / 2**20  # the Dask cluster's own processes at rest, before the stage's shards
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "llmpipe.cli", "--root", str(work), "--params",
                             str(work / "params.yaml"), name], cwd=work, env=env, stdout=log, stderr=log)
    sampler = Sampler(proc.pid, extra)
    sampler.start()
    try:
        rc = proc.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        for p in reversed(tree(psutil.Process(proc.pid))):  # the stage and its pool's processes, at once
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        rc = proc.wait()
    wall = time.perf_counter() - t0
    sampler.done.set()
    sampler.join()
    for p in extra():  # the cluster's CPU up to the end, not to the last 0.2 s sample (cpu_of skips the gone)
        sampler.cpu[p.pid] = max(sampler.cpu.get(p.pid, 0.0), cpu_of([p]))
    log.close()
    if rc != 0 and kill_after is None:
        raise SystemExit(f"{name} failed (exit {rc}); see {work / (name + '.log')}")
    cpu = sum(t - extra_cpu0.get(pid, 0.0) for pid, t in sampler.cpu.items())
    metrics_file = work / "data" / "metrics" / f"{name}.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() and rc == 0 else {}
    return {"wall": wall, "rc": rc, "peak_mb": sampler.peak / 2**20, "idle_mb": idle_mb, "cpu": cpu,
            "read_mb": sum(r for r, _ in sampler.io.values()) / 1e6,
            "write_mb": sum(w for _, w in sampler.io.values()) / 1e6, "stage_s": metrics.get("seconds"),
            "metrics": metrics}


def input_mb(name: str, runs: dict, scraped_bytes: int) -> float:
    m = {k: v["metrics"] for k, v in runs.items()}
    kept = m["split"].get("train_bytes", 0) + m["split"].get("val_bytes", 0)
    return {"scrape": scraped_bytes, "filter": m["filter"]["bytes_in"], "dedup": m["filter"]["bytes_out"],
            "split": kept, "tokenizer": m["split"].get("train_bytes", 0), "tokenize": kept}[name] / 1e6


def pipeline(work: Path, extra: Callable[[], list[psutil.Process]], scraped_bytes: int,
             api_url: str | None = None) -> dict:
    runs = {}
    for name in STAGES:
        runs[name] = run_stage(work, name, extra, api_url=api_url)
        print(f"  {name}: {runs[name]['wall']:.1f} s, peak {runs[name]['peak_mb']:.0f} MB", flush=True)
    for name, r in runs.items():
        r["mb"] = input_mb(name, runs, scraped_bytes)
        r["mb_per_s"] = r["mb"] / r["wall"]
        r["wait"] = max(0.0, 1 - r["cpu"] / (r["wall"] * (os.cpu_count() or 1)))
        r["own_mb_per_s"] = r["mb"] / max(r["stage_s"] or r["wall"], 1e-9)
    return runs


CLUSTER = """
import sys, time
from distributed import LocalCluster
cluster = LocalCluster(n_workers=int(sys.argv[1]), threads_per_worker=1, processes=True, dashboard_address=None)
print(cluster.scheduler_address, flush=True)
sys.stdin.read()  # until the bench closes our stdin
cluster.close()
"""


@contextlib.contextmanager
def prefect_api():
    """A temporary Prefect API server (as the stages' own ephemeral one), for the Dask run; yields its URL."""
    from prefect.server.api.server import SubprocessASGIServer

    os.environ.update(QUIET_PREFECT)  # the server process inherits it (else it tries to send telemetry, offline)
    server = SubprocessASGIServer()
    server.start(timeout=120)
    try:
        yield server.api_url
    finally:
        server.stop()


@contextlib.contextmanager
def dask_cluster(workers: int, api_url: str):
    """A LocalCluster in a process of its own (its workers would re-import this script): (address, process)."""
    env = {**os.environ, **QUIET_PREFECT, "PYTHONPATH": str(ROOT), "PREFECT_API_URL": api_url}
    proc = subprocess.Popen([sys.executable, "-c", CLUSTER, str(workers)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=env, text=True)
    address = proc.stdout.readline().strip()
    if not address.startswith("tcp://"):
        proc.kill()
        raise SystemExit(f"the Dask cluster did not start (it printed {address!r})")
    try:
        yield address, psutil.Process(proc.pid)
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def table(label: str, runs: dict, demo: dict | None) -> None:
    print(f"\n{label}")
    print(f"{'stage':10} {'in MB':>9} {'wall s':>8} {'stage s':>8} {'MB/s':>7} {'demo MB/s':>9} {'x demo':>7} "
          f"{'own x demo':>10} {'peak MB':>8} {'idle MB':>8} {'cores':>6} {'wait':>5} {'read MB':>8} {'write MB':>8}")
    for name, r in runs.items():
        d = demo[name]["mb_per_s"] if demo else float("nan")
        own = r["own_mb_per_s"] / demo[name]["own_mb_per_s"] if demo else float("nan")
        print(f"{name:10} {r['mb']:9.1f} {r['wall']:8.1f} {r['stage_s'] or 0:8.1f} {r['mb_per_s']:7.2f} {d:9.2f} "
              f"{r['mb_per_s'] / d if demo else float('nan'):7.2f} {own:10.2f} {r['peak_mb']:8.0f} {r['idle_mb']:8.0f} {r['cpu'] / r['wall']:6.2f} "
              f"{r['wait']:5.2f} {r['read_mb']:8.0f} {r['write_mb']:8.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=2.0, help="corpus size in GB (e.g. 0.05 for a smoke run)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/llmpipe-scale"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-dask", action="store_true", help="no run on a local Dask cluster")
    parser.add_argument("--dask-restart-workers", action="store_true",
                        help="the Dask run with scale.dask_restart_workers: true (workers restarted after each "
                             "stage's shards)")
    parser.add_argument("--skip-demo", action="store_true", help="no demo-corpus baseline run")
    parser.add_argument("--skip-resume", action="store_true", help="no killed-and-resumed tokenize run")
    parser.add_argument("--skip-local", action="store_true",
                        help="no run on the local executor (the Dask run alone; implies --skip-resume)")
    args = parser.parse_args()
    if args.skip_local and args.skip_dask:
        parser.error("--skip-local and --skip-dask leave nothing to run")
    if args.dask_restart_workers and args.skip_dask:
        parser.error("--dask-restart-workers applies to the Dask run, which --skip-dask leaves out")
    t_start = time.perf_counter()
    base = args.workdir.resolve()
    if base.exists():
        shutil.rmtree(base)
    corpus = base / "corpus"
    stats = build_corpus(corpus, args.gb, args.seed)
    print(f"corpus: {stats}", flush=True)
    local_sources = [{"kind": "local", "paths": [f"{corpus}/**/*.txt", f"{corpus}/**/*.html"],
                      "files_per_shard": FILES_PER_SHARD}]

    demo = None
    if not args.skip_demo:
        print("demo corpus, local executor", flush=True)
        workspace(base / "demo", None, None)
        demo = pipeline(base / "demo", list, 0)
        d = demo["scrape"]
        d["mb"] = d["metrics"]["bytes_out"] / 1e6  # the demo's input is an archive: its text
        d["mb_per_s"], d["own_mb_per_s"] = d["mb"] / d["wall"], d["mb"] / d["stage_s"]

    local = None
    if not args.skip_local:
        print(f"{args.gb} GB, local executor", flush=True)
        workspace(base / "local", local_sources, None)
        local = pipeline(base / "local", list, stats["bytes"])
        table(f"{args.gb} GB corpus, local executor ({os.cpu_count()} cores)", local, demo)
    if demo:
        table("demo corpus, local executor", demo, None)

    if not args.skip_dask:
        print(f"\n{args.gb} GB, local Dask cluster", flush=True)
        # one Prefect API for the stages and the cluster's workers: tasks run there report to it (without
        # one, each worker's Prefect client retries a missing server and the shards slow down 2x)
        with prefect_api() as api_url, dask_cluster(os.cpu_count() or 1, api_url) as (address, cluster_proc):
            workspace(base / "dask", local_sources, address, restart_workers=args.dask_restart_workers)
            dask = pipeline(base / "dask", lambda: tree(cluster_proc), stats["bytes"], api_url)
        table(f"{args.gb} GB corpus, local Dask cluster ({os.cpu_count()} worker processes; their RSS and "
              "CPU included)", dask, demo)
        if local:
            same = digest(base / "dask" / "data" / "tokens") == digest(base / "local" / "data" / "tokens")
            print(f"dask tokens identical to the local executor's: {same}")

    dask_peak = "" if args.skip_dask else (  # the stages' own peak on the cluster: its idle processes' memory off
        f"peak_rss_mb_dask_over_idle={max(r['peak_mb'] - r['idle_mb'] for r in dask.values()):.0f} ")
    resumed = "skipped"
    if not (args.skip_resume or args.skip_local):
        tokens = base / "local" / "data" / "tokens"
        before = digest(tokens)
        killed = run_stage(base / "local", "tokenize", list, kill_after=local["tokenize"]["wall"] / 2)
        rerun = run_stage(base / "local", "tokenize", list)
        resumed = int(digest(tokens) == before)  # 1: identical (the RESULT key)
        print(f"\nresume: tokenize killed after {killed['wall']:.1f} s (exit {killed['rc']}), re-run "
              f"{rerun['wall']:.1f} s (uninterrupted {local['tokenize']['wall']:.1f} s); identical: {resumed}")

    seconds = time.perf_counter() - t_start
    runs = local or dask  # the rates and peaks below: the local executor's, or with --skip-local the Dask run's
    rates = " ".join(f"mb_per_s_{n}={runs[n]['mb_per_s']:.2f}" for n in STAGES)
    # against the demo on the stages' own timers: the ~3-5 s of start-up would otherwise be most of the demo's time
    ratios = " ".join(f"x_demo_{n}={runs[n]['own_mb_per_s'] / demo[n]['own_mb_per_s']:.2f}" for n in STAGES) if demo else ""
    print(f"RESULT gb={stats['bytes'] / 1e9:.3f} seconds={seconds:.0f} executor={'local' if local else 'dask'} "
          f"{rates} peak_rss_mb={max(r['peak_mb'] for r in runs.values()):.0f} {dask_peak}{ratios} "
          f"{'' if args.skip_dask else f'dask_restart_workers={int(args.dask_restart_workers)} '}"
          f"resumed_identical={resumed}")


if __name__ == "__main__":
    main()
