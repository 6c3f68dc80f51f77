"""Signal-to-noise ratio of a benchmark over one pretraining run's in-loop evaluations.

"Signal and Noise" (Heineman et al., AI2, 2025; the DataDecide suite) defines, for one benchmark metric m:
  signal = max_{j,k} |m_j - m_k| / mean(m)   over models that should be told apart (each the mean of
           its last 5 checkpoints' scores),
  noise  = std(m) / mean(m)                  over the final checkpoints of one training run,
  SNR    = signal / noise.
One run has no second model, so the models to tell apart are the run itself early and late: with k =
`window` evaluations, the "models" are the mean of the first k in-loop scores and the mean of the last
k (the paper's checkpoint averaging), and signal = |late - early| / mean(early, late). Noise is the
paper's: the population std of the last k scores over their mean. A curve that does not move has a
signal of the order of noise * sqrt(2 / k): with k = 5 its SNR is about 0.5 (median), and it exceeds 1
about one time in four (23% of 4,000 simulated flat curves); a curve that climbs or falls by more than
its checkpoint-to-checkpoint jitter has SNR > 1 (the last window's own trend counts as noise, so a
straight line's SNR stays finite). The max over all windows is not used: on a flat curve the largest of
several noisy window means is itself noise.

It needs 2k evaluations; with fewer, k shrinks to half of them (at least 2), else there is no SNR.

One addition for accuracies over few in-loop items (the paper's benchmarks hold thousands): the same n
items are scored at every checkpoint, so an accuracy moves in steps of 1/n and its jitter is often 0
over k checkpoints, while one item more or less right between the two windows looks like signal (with
10 items, 6 of 10 chance-level tasks passed SNR > 1 in a 96-step run). The noise of an accuracy
therefore adds, in quadrature, the binomial standard error sqrt(p (1 - p) / n) of an accuracy p over
n items: the noise of the draw of items, which thousands of items make negligible. Bits per byte, a
continuous mean, gets no such term.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

SNR_CAP = 1000.0  # a tail without any jitter (std 0) under a moving curve: reported as this, not infinity


def snr(values: list[float], window: int = 5, n_items: int | None = None) -> float | None:
    """SNR of one metric's in-loop curve (in evaluation order); None when too short or never non-zero.
    n_items: the curve is an accuracy over that many items (adds their binomial error to the noise)."""
    k = min(window, len(values) // 2)
    if k < 2:
        return None
    v = np.asarray(values, dtype=float)
    early, late = v[:k].mean(), v[-k:].mean()
    scale = abs((early + late) / 2)
    if scale == 0 or late == 0:
        return None  # a metric stuck at 0 (e.g. exact-match accuracy of an untrained model): undefined
    signal = abs(late - early) / scale
    jitter = v[-k:].std()
    if n_items:
        jitter = float(np.sqrt(jitter**2 + late * (1 - late) / n_items))
    noise = jitter / abs(late)
    if noise == 0:
        return SNR_CAP if signal > 0 else 0.0
    return float(min(signal / noise, SNR_CAP))


def read_curves(path: Path) -> dict[str, list[float]]:
    """Columns of pretraining's bench.tsv (step, tokens, <task>_acc_norm, <task>_gold_bpb, ...) as float
    lists; an absent or empty file (no in-loop evaluation) gives no curves."""
    path = Path(path)
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    curves: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            if value not in ("", None):
                curves.setdefault(key, []).append(float(value))
    return curves


def task_snr(curves: dict[str, list[float]], task: str, window: int, n_items: int | None) -> dict:
    """{snr (of acc_norm over n_items in-loop items), snr_bpb (of gold bits per byte), snr_evaluations}."""
    acc, bpb = curves.get(f"{task}_acc_norm", []), curves.get(f"{task}_gold_bpb", [])
    return {"snr": snr(acc, window, n_items), "snr_bpb": snr(bpb, window), "snr_evaluations": len(acc),
            "snr_items": n_items}
