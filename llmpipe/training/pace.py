"""Keeping a minutes budget while the run trains.

The dial (llmpipe.training.budget) turns minutes into steps from a few timed steps before training.
Those timings miss the evaluations and checkpoints, and a machine whose load changes (another job, a
CPU clocking down) makes them wrong. So while the learning rate does not yet depend on the run's
length (the flat part of `schedule: wsd` or `constant`; not the warmup, whose first steps are slow),
the loop asks `Pace` at every log step how many steps fit in the time left, at the average speed of
the run so far, evaluations included (after a sequence-length warm-up, of the steps since it: its short
rows are cheaper), and moves the end of the run there; the decay then starts from the corrected length.
Once the decay has begun the length is fixed.

The length and the seconds spent go into every checkpoint (history["pace"]), so a resumed run keeps
the length it had and counts the time of the processes before it."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

from llmpipe.config.training import TrainingRun
from llmpipe.training.optim import decay_start, seq_warmup_end


@dataclass
class Pace:
    seconds: float  # training seconds the whole run may take, its resumed parts together
    spent: float = 0.0  # seconds taken by earlier processes of this run (from the checkpoint)
    clock: Callable[[], float] = time.perf_counter
    started: float = field(default=0.0, init=False)
    first_step: int = field(default=0, init=False)
    after_warmup: tuple[float, int] | None = field(default=None, init=False)  # (clock, step) past it

    def start(self, step: int, history: dict) -> None:
        """Begin timing at `step`; a resumed run takes its spent seconds from the checkpoint's history."""
        self.spent = float(history.get("pace", {}).get("seconds", self.spent))
        self.started, self.first_step = self.clock(), step

    def elapsed(self) -> float:
        return self.spent + self.clock() - self.started

    def max_steps(self, cfg: TrainingRun, step: int) -> int:
        """The run's length that ends it at `seconds` at this process's speed so far; cfg.max_steps
        where it stays: in the warmup, once the decay has begun, or before a step was timed."""
        done_here = step - self.first_step
        if done_here < 1 or step < cfg.warmup_steps or step >= decay_start(cfg):
            return cfg.max_steps
        per_step = self.seconds_per_step(cfg, step)
        if per_step <= 0:  # a clock too coarse to time these steps: keep the plan
            return cfg.max_steps
        fit = step + max(0, math.floor((self.seconds - self.elapsed()) / per_step))
        # Never so short that this step would already be inside the decay: its lr would jump.
        fit = max(fit, step + 1)
        while decay_start(cfg.model_copy(update={"max_steps": fit})) <= step:
            fit += 1
        return fit

    def seconds_per_step(self, cfg: TrainingRun, step: int) -> float:
        """This process's seconds a step so far; once the sequence-length warm-up is over, from the first
        step timed after it: its short rows are cheaper, and counting them would overrun the budget."""
        end = seq_warmup_end(cfg)
        if end and step > end and self.first_step < end:
            if self.after_warmup is None:
                self.after_warmup = (self.clock(), step)
            since, first = self.after_warmup
            if step > first:
                return (self.clock() - since) / (step - first)
        return (self.clock() - self.started) / (step - self.first_step)

    def record(self, history: dict, cfg: TrainingRun) -> None:
        """What a checkpoint keeps of the pace: the length so far and the seconds spent."""
        history["pace"] = {"max_steps": cfg.max_steps, "seconds": round(self.elapsed(), 3)}
