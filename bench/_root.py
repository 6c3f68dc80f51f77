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


def scratch_dir(prefix: str):
    """A fresh folder in the system's temp directory for one bench run's files (logs, exports). Removed
    when the script exits normally; kept, and named on stderr, when it fails, for the logs. Before this,
    every run left its folder behind (two per CI run, from the smoke runs)."""
    import atexit
    import shutil
    import tempfile

    path = tempfile.mkdtemp(prefix=prefix)
    failed = []
    previous = sys.excepthook

    def note_failure(kind, value, tb):
        failed.append(kind)
        previous(kind, value, tb)

    def cleanup():
        if failed:
            print(f"kept {path} (its logs) after the failure above", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)

    sys.excepthook = note_failure
    atexit.register(cleanup)
    return path
