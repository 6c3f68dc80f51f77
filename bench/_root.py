"""Imported first by every benchmark script. bench/ holds tokenize.py, whose name shadows the standard
library's `tokenize` (which inspect, linecache and logging import) for any script run from here; so
take bench/ off the import path, and put the repository root on it for `llmpipe`."""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(_HERE)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


# scratch folders of this run, and why to keep them although the script exits normally
_SCRATCH: list[str] = []
_KEEP: list[str] = []


def scratch_dir(prefix: str) -> str:
    """A fresh folder in the system's temp directory for this run's files (logs, exports). `run_main`
    removes it when the script succeeds and keeps it, named on stderr, when it fails. Before, every run
    left its folder behind (two per CI run, from the smoke runs)."""
    import tempfile

    _SCRATCH.append(tempfile.mkdtemp(prefix=prefix))
    return _SCRATCH[-1]


def keep_scratch(reason: str) -> None:
    """A run that finished but measured a failure keeps its scratch folders (the server's logs, say)."""
    _KEEP.append(reason)


def run_main(main) -> None:
    """Run a script's main(): its scratch folders go when it succeeds, and stay when it fails: an exception,
    Ctrl-C, SIGTERM (a cancelled job, `timeout`), sys.exit with a message or a non-zero code, or
    keep_scratch. The decision is made here, where the outcome is known (atexit cannot see it)."""
    import shutil
    import signal

    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    ok = False
    try:
        main()
        ok = True
    except SystemExit as stop:
        ok = stop.code in (0, None)
        raise
    finally:
        why = "; ".join(_KEEP) if ok else "the run failed"
        for path in _SCRATCH:
            if ok and not _KEEP:
                shutil.rmtree(path, ignore_errors=True)
            else:
                print(f"kept {path} ({why})", file=sys.stderr)
