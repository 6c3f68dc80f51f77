"""What every stage returns to the CLI shell: metrics for DVC and MLflow, files worth tracking."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

# (metrics, step) -> None. The CLI passes one that buffers into MLflow; tests pass None.
MetricsSink = Callable[[dict[str, float], int], None]


@dataclass
class StageResult:
    metrics: dict[str, float | int | str]
    artifacts: list[Path] = field(default_factory=list)
    # A model folder to log as the run's "model" artifact and register in the MLflow Model Registry.
    model_dir: Path | None = None

