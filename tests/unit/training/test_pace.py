"""A minutes budget kept while training (llmpipe.training.pace): the run's end moves to where the time
runs out while the learning rate is flat, never once the decay has begun, and a resumed run keeps the
length and the seconds of the processes before it. A clock driven by the step stands in for time, so
the tests decide exactly what a machine's speed would."""

import math

import torch
from safetensors.torch import load_file

from llmpipe.training.loop import train
from llmpipe.training.optim import decay_start
from llmpipe.training.pace import Pace

from tests.unit.training.test_train import VOCAB, cfg, token_dir  # noqa: F401  (fixture)


def paced(seconds: float, now: dict) -> Pace:
    return Pace(seconds, clock=lambda: now["t"])


def test_pace_moves_the_end_while_the_lr_is_flat_and_never_after():
    c = cfg(max_steps=100, warmup_steps=10, schedule="wsd", decay_frac=0.3)
    now = {"t": 0.0}
    pace = paced(60.0, now)
    pace.start(0, {})
    now["t"] = 10.0  # 20 steps in 10 s: 100 more fit in the 50 s left
    assert pace.max_steps(c, 20) == 120
    now["t"] = 20.0  # 1 s a step: 40 more
    assert pace.max_steps(c, 20) == 60
    now["t"] = 50.0  # far too slow: as short as it can be without step 20 falling inside the decay
    short = pace.max_steps(c, 20)
    assert decay_start(c.model_copy(update={"max_steps": short})) == 21
    assert pace.max_steps(c, 5) == 100  # still warming up
    frozen = paced(60.0, {"t": 3.0})
    frozen.start(0, {})
    assert frozen.max_steps(c, 20) == 100  # a clock that did not move times nothing
    assert pace.max_steps(c, 75) == 100  # decaying since step 70: the length is fixed
    assert paced(60.0, now).max_steps(cfg(max_steps=100, warmup_steps=10), 20) == 100  # cosine: always fixed


def test_pace_times_the_steps_after_the_sequence_warmup_not_its_cheaper_ones():
    c = cfg(max_steps=200, warmup_steps=10, schedule="wsd", decay_frac=0.3, seq_warmup_steps=50, seq_warmup_min=8)
    now = {"t": 0.0}
    pace = paced(300.0, now)
    pace.start(0, {})
    now["t"] = 25.0  # the warm-up's 50 steps at 0.5 s
    assert pace.max_steps(c, 50) == 50 + 550  # at its end: the process's average (0.5 s)
    now["t"] = 30.0  # 10 full-length steps at 0.5 s: the first log step past it starts a new timing
    assert pace.max_steps(c, 60) == 60 + 540
    now["t"] = 40.0  # 10 more at 1 s: the pace is the steps' since then, not the cheaper warm-up's
    assert pace.max_steps(c, 70) == 70 + 260
    plain = paced(300.0, {"t": 0.0})  # the same clock without the warm-up: the whole process's average
    plain.start(0, {})
    plain.clock = lambda: 40.0
    assert plain.max_steps(c.model_copy(update={"seq_warmup_steps": 0}), 70) == 70 + math.floor(260 / (40 / 70))


def test_paced_run_ends_on_time_and_resumes_to_the_same_weights(token_dir, tmp_path):  # noqa: F811
    # the planned 40 steps take 0.5 s each; the budget leaves 30 s: the run moves its end to step 60
    c = cfg(max_steps=40, warmup_steps=4, schedule="wsd", decay_frac=0.3, log_interval=5, checkpoint_interval=10)

    def run(ckpt, start_t=0.0, **kw):
        now = {"t": start_t}
        return train(c, token_dir, ckpt, VOCAB, {"id": 1}, pace=paced(30.0, now),
                     sink=lambda row, step: now.update(t=0.5 * step), **kw)

    full = run(tmp_path / "a")
    assert full.step == 60 and full.metrics["pace_seconds"] == 30.0
    assert full.history["train"][-1]["lr"] < full.history["train"][-3]["lr"]  # it decayed at the new end
    run(tmp_path / "b", stop_after=20)  # "killed" after the checkpoint of step 20
    resumed = run(tmp_path / "b", start_t=10.0)  # the machine's clock went on; the run's own seconds come from the checkpoint
    assert resumed.step == 60 and resumed.metrics["pace_seconds"] == 30.0
    a, b = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
