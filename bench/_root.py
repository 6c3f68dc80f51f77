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
