"""Run one data stage core in this process and print its memory figures as JSON (used by
tests/integration/test_memory_bounds.py, which starts one such process per stage so that each peak is that
stage's alone).

usage: python tests/integration/_memory_stage.py ROOT STAGE PARAMS_JSON
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path


def status_kb(field: str) -> int:
    """A field of /proc/self/status in kB: VmRSS (now) or VmHWM (the peak resident set so far)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def main() -> None:
    root, stage, overrides = Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
    from llmpipe.stages.params import parse_params

    params = parse_params(overrides)
    module = importlib.import_module(f"llmpipe.stages.{stage}")
    # What every stage process pays before it reads a byte: the interpreter, pyarrow, pandas, numpy...
    import pandas, pyarrow.parquet, tokenizers, numpy  # noqa: E401,F401  (the same set for every stage)
    baseline = status_kb("VmRSS")
    result = module.run(params, root, sink=None)
    print(json.dumps({"baseline_kb": baseline, "peak_kb": status_kb("VmHWM"), "metrics": result.metrics}))


if __name__ == "__main__":
    main()
