"""Sections read by the shells, never by a stage core: where runs are tracked, the schedule of
the Prefect deployment, and where the data stages' shards run. Outputs do not depend on them, so they
are no stage's DVC params."""

from __future__ import annotations

import zoneinfo
from typing import Annotated

from pydantic import Field, model_validator

from llmpipe.config.base import Section, known


class ScaleParams(Section):
    """How the data stages run their shards: local processes through Prefect's process-pool task runner,
    or a Dask cluster (prefect-dask) when dask_address is set. Outputs do not depend on these settings,
    so they are not DVC params of any stage."""

    workers: Annotated[int, Field(ge=0, le=4096)] = 0  # local processes; 0: one per core
    dask_address: str | None = None  # e.g. tcp://scheduler:8786
    # After a stage's shards ran on the cluster, restart its workers (Client.restart_workers; needs
    # nannies, as `dask worker` starts them): a worker otherwise keeps the stage's imports and heap for
    # good (bench/scale.py's idle cluster: 0.2 GB fresh, 1.25 GB after dedup). Off by default: on a shared
    # cluster it cuts other clients' running tasks short and loses the data their workers hold.
    dask_restart_workers: bool = False


class TrackingParams(Section):
    experiment: str = Field(default="llmpipe", min_length=1)
    # Each trained model becomes a new version of this registered model (null: do not register).
    registered_model: Annotated[str, Field(min_length=1)] | None = "llmpipe-gpt"


class ScheduleParams(Section):
    """The Prefect deployment of the pipeline flow (flows/deploy.py): its name, cron schedule, and the
    flow parameters of scheduled runs, e.g. {"overrides": {"scrape.sources": [...]}}."""

    name: str = Field(default="llmpipe-scheduled", min_length=1)
    cron: str = "0 3 * * *"
    timezone: Annotated[str, known(zoneinfo.ZoneInfo, "time zone")] = "UTC"
    parameters: dict[str, object] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _cron_has_five_fields(self) -> "ScheduleParams":
        if len(self.cron.split()) != 5:
            raise ValueError(f"cron must have 5 fields (minute hour day month weekday), got {self.cron!r}")
        return self
