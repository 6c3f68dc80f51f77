"""Issue 29: each shard sent to a worker carries its own item, not every item. Prefect pickles the running
flow into every task it submits; when the shard flow closed over the items, each of N tasks carried all N
(memory quadratic in the shards: found by the 2 GB rehearsal, fixed in llmpipe/util/executors.py). Here
the real process-pool task runner runs FEW and then MANY shards of 1 MB items, and each worker reports
its own peak resident set: with every item in every task, MANY x 1 MB more would arrive in each worker."""

import os
import sys
from pathlib import Path

import pytest

from llmpipe.config.ops import ScaleParams
from llmpipe.util.executors import map_shards

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")]

MB = 1 << 20
FEW, MANY = 4, 48
ALLOWED_GROWTH_KB = 16 * 1024  # measured with the old closure: 134 -> 314 MB; now within a few MB


def worker_peak_kb(item: bytes) -> int:
    """The shard: this worker process's peak resident set (VmHWM) so far, in kB."""
    assert len(item) == MB
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("/proc/self/status has no VmHWM")


def largest_worker_peak(n_items: int) -> int:
    items = [os.urandom(MB) for _ in range(n_items)]  # distinct, incompressible: nothing pickles them away
    peaks = map_shards(worker_peak_kb, items, ScaleParams(workers=2), name="payload-test")
    assert len(peaks) == n_items
    return max(peaks)


def test_a_shards_payload_does_not_grow_with_the_number_of_shards():
    few, many = largest_worker_peak(FEW), largest_worker_peak(MANY)
    assert many - few <= ALLOWED_GROWTH_KB, (
        f"a worker's peak grew from {few / 1024:.0f} MB ({FEW} shards of 1 MB) to {many / 1024:.0f} MB "
        f"({MANY} shards): each task carries the other shards' items")
