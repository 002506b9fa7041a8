"""Tune's per-trial files (``result.json``, ``progress.csv``, TensorBoard events) with each
epoch once.

Tune's loggers append every result they get. A resumed driver restores Tune's saved state,
which can lag what the killed driver had taken, and the trial replays the epochs in between
(``trial.replay``) so that the restored Tune, its scheduler and searcher see them; the files the
killed driver wrote already hold them, so ``result.json`` came to list an epoch twice (found by
``tests/test_chaos.py``: epochs 1, 2, 2, 3), and so would ``ExperimentAnalysis`` and
``Tuner.restore(...).get_results()``. These loggers read, when a trial (re)starts, which epochs
its file holds and skip a result of an epoch already there; results without an epoch pass."""
from __future__ import annotations

import csv
from pathlib import Path

from ray.air.constants import EXPR_PROGRESS_FILE, EXPR_RESULT_FILE
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback

from diffseg.errors import DiffsegError
from diffseg.rundir import read_jsonl


def epochs_in_results(path: Path) -> set[int]:
    """Epochs of a ``result.json`` (``rundir.read_jsonl``: a torn last line is left out). A
    file damaged elsewhere counts as holding none: the logger appends as Tune's own would."""
    try:
        return {int(r["epoch"]) for r in read_jsonl(path) if isinstance(r.get("epoch"), (int, float))}
    except (OSError, DiffsegError):
        return set()


def epochs_in_progress(path: Path) -> set[int]:
    """Epochs of a ``progress.csv``."""
    try:
        with path.open(newline="") as f:
            return {int(float(row["epoch"])) for row in csv.DictReader(f) if row.get("epoch") not in (None, "")}
    except (OSError, ValueError, KeyError, csv.Error):
        return set()


class EachEpochOnce:
    """Mixin over one of Tune's logger callbacks; ``FILE`` and ``READ``: the file whose epochs
    count and how to read them."""

    FILE, READ = EXPR_RESULT_FILE, staticmethod(epochs_in_results)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._logged: dict = {}  # trial -> epochs its file holds

    def log_trial_start(self, trial):
        super().log_trial_start(trial)
        self._logged[trial] = self.READ(Path(trial.local_path, self.FILE))

    def log_trial_result(self, iteration, trial, result):
        if trial not in self._logged:
            self.log_trial_start(trial)  # what Tune's loggers do for a result before a start
        epoch = result.get("epoch")
        if isinstance(epoch, (int, float)) and int(epoch) in self._logged[trial]:
            return
        super().log_trial_result(iteration, trial, result)
        if isinstance(epoch, (int, float)):
            self._logged[trial].add(int(epoch))


class JsonOnce(EachEpochOnce, JsonLoggerCallback):
    pass


class CsvOnce(EachEpochOnce, CSVLoggerCallback):
    FILE, READ = EXPR_PROGRESS_FILE, staticmethod(epochs_in_progress)


class TensorBoardOnce(EachEpochOnce, TBXLoggerCallback):
    """Its events file is not read back: the epochs of ``result.json``, written beside it."""


def each_epoch_once() -> list:
    """The three loggers Tune would add by itself; given explicitly, Tune adds none of its own."""
    loggers = [JsonOnce(), CsvOnce()]
    try:
        loggers.append(TensorBoardOnce())
    except ImportError:  # tensorboardX missing: Tune itself would only warn
        pass
    return loggers
