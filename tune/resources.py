"""What every trial of a study, and every cell of a benchmark, runs with: its resources, its
objectives and where its nodes find the data. No Ray import (study files are read without it)."""
from __future__ import annotations

from dataclasses import dataclass, field

from diffseg.errors import ConfigError
from diffseg.schema import spec


@dataclass(frozen=True)
class Resources:
    """One trial is a Ray Train run of ``workers`` workers; ``concurrency`` trials run at once."""
    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    concurrency: int = 1
    max_failures: int = 1  # restarts of a failed trial's workers (see tuner.trial_restarts)

    def check(self) -> "Resources":
        if self.cpus_per_worker <= 0 and self.gpus_per_worker <= 0:
            raise ConfigError("resources: a worker needs cpus_per_worker > 0 or gpus_per_worker > 0")
        g = self.gpus_per_worker
        if g < 0 or self.cpus_per_worker < 0:
            raise ConfigError("resources: cpus_per_worker and gpus_per_worker must be >= 0")
        if g and g != int(g) and (self.workers > 1 or g > 1):
            raise ConfigError(f"resources.gpus_per_worker = {g}: fractions are allowed only below 1 and only "
                              f"for single-worker trials (workers = {self.workers})")
        return self


@dataclass(frozen=True)
class WorkerSection:
    """``resources:`` of a study or benchmark file: one trial's Train workers."""
    workers: int = spec(1, low=1)
    cpus_per_worker: float = spec(1.0, low=0.0)
    gpus_per_worker: float = spec(0.0, low=0.0)

    def with_trials(self, concurrency: int, max_failures: int) -> Resources:
        return Resources(self.workers, self.cpus_per_worker, self.gpus_per_worker, concurrency, max_failures).check()


@dataclass(frozen=True)
class TrialSetup:
    resources: Resources = field(default_factory=Resources)
    objectives: dict = field(default_factory=lambda: {"val_dice": "max"})  # metric -> mode
    # where the trials find the data and the cache: not part of the config (see diffseg.config.MOVED)
    data_root: str = ""
    cache_dir: str = ""
    seeds: int = 1  # a trial trains its configuration with this many seeds (tune/group.py)
