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


def train_from_state(run, token_dir, vocab: int, state: dict | None, tag: str, batches=None):
    """llmpipe's training loop on the PretrainParams `run`, from the weights `state` (None: the loop's own
    initial ones), under the context manager `batches` (a patch of the loader's batches, say) -> (model,
    seconds). The loop builds its model itself, so the weights go in through its GPT class."""
    import contextlib
    import tempfile
    import time
    from pathlib import Path
    from unittest import mock

    from llmpipe.training import loop

    original = loop.GPT

    def from_state(mcfg):
        model = original(mcfg)
        if state is not None:
            model.load_state_dict(state)
        return model

    t0 = time.perf_counter()
    with mock.patch.object(loop, "GPT", from_state), tempfile.TemporaryDirectory() as tmp, \
            (batches or contextlib.nullcontext()):
        res = loop.train(run, token_dir, Path(tmp) / "ckpt", vocab, {"bench": tag})
    return res.model, time.perf_counter() - t0


def swapped_rows(shares: dict, alphabet, low: int, high: int):
    """A patch of the loader's training batches (TokenData.random_batch, stream 0; val batches stay as
    they are): shares["periodic"] of a micro-batch's rows become a random sequence of P ids of `alphabet`
    (P from low to high per row) repeated to fill the row, shares["text_periodic"] of them repeat their own
    first P tokens so; drawn from (seed, step, micro-step) alone, rounded to whole rows. Only copying by
    content predicts the repeats, at a distance that changes from row to row (docs/assistant.md)."""
    from unittest import mock

    import numpy as np
    import torch

    from llmpipe.tokens.loader import TokenData

    original = TokenData.random_batch

    def random_batch(self, step, micro_step, rows, block, seed, rank=0, world=1, stream=0, doc_aligned=False,
                     repeat_share=0.0):
        x, y = original(self, step, micro_step, rows, block, seed, rank, world, stream, doc_aligned, repeat_share)
        if stream != 0:
            return x, y
        rng = np.random.default_rng([seed, 77, step, micro_step])
        order = rng.permutation(rows)
        n_random, n_text = (int(shares.get(k, 0.0) * rows + 0.5) for k in ("periodic", "text_periodic"))
        batch = torch.cat([x, y[:, -1:]], dim=1).numpy()
        for r in order[:n_random]:
            batch[r] = np.resize(alphabet[rng.integers(0, len(alphabet), size=int(rng.integers(low, high + 1)))], block + 1)
        for r in order[n_random : n_random + n_text]:
            batch[r] = np.resize(batch[r, : int(rng.integers(low, high + 1))].copy(), block + 1)
        batch = torch.from_numpy(batch)
        return batch[:, :-1], batch[:, 1:]

    return mock.patch.object(TokenData, "random_batch", random_batch)


def commonest_ids(token_dir, vocab: int, count: int, excluded) -> "np.ndarray":
    """The `count` most frequent ids of the train split's tokens, leaving out `excluded` (the special
    tokens), in a stable order; ValueError naming the shortfall when fewer distinct ids occur."""
    import numpy as np

    from llmpipe.tokens.loader import TokenData

    counts = np.bincount(np.concatenate([np.asarray(a) for a in TokenData(token_dir, "train").arrays]), minlength=vocab)
    counts[list(excluded)] = 0
    seen = np.flatnonzero(counts)
    if len(seen) < count:
        raise ValueError(f"the train split has {len(seen)} distinct ids besides the special tokens")
    return seen[np.argsort(-counts[seen], kind="stable")][:count]
