"""Which epoch of a trial the running driver's Tune has taken (see ``paths.TAKEN``).

Tune logs a result (``result.json``, scheduler, searcher) before it has the checkpoint that came
with it: it asks the trial's process for that checkpoint in a second call. A trial process killed
between the two restarts from the previous checkpoint, so the epoch it was killed after would
reach Tune twice. The driver writes, as it takes each result, the epoch into the run folder; a
restarted trial under the same driver (same Ray job) trusts that record. A resumed driver (a new
job) restores Tune's saved state, which may lag: there Tune's checkpoint is the truth and the
run folder's reports after it are replayed (``trial.replay``)."""
from __future__ import annotations

import json
from pathlib import Path

import ray
import ray.tune

from diffseg import durable

from .paths import TAKEN


class RecordTaken(ray.tune.Callback):
    """In the driver: after each result, ``<storage>/trials/<name>/taken_by_driver.json``."""

    def __init__(self, storage: Path, name_of):
        self.storage, self.name_of = Path(storage), name_of
        self.job = ray.get_runtime_context().get_job_id()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "epoch" not in result:
            return
        run_dir = self.storage / "trials" / self.name_of(trial)
        if run_dir.is_dir():
            durable.write_text(run_dir / TAKEN, json.dumps({"job": self.job, "epoch": int(result["epoch"])}))


def last_taken(run_dir: Path, tune_epoch: int, job: str) -> int:
    """The last epoch Tune holds for this trial: Tune's checkpoint (``tune_epoch``), or the
    driver's record when the driver that wrote it (job ``job``) is the one running now."""
    try:
        record = json.loads((run_dir / TAKEN).read_text())
    except (FileNotFoundError, ValueError):
        return tune_epoch
    if record.get("job") != job:
        return tune_epoch
    return max(tune_epoch, int(record.get("epoch", -1)))
