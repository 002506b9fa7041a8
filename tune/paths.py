"""Where a study lives, and its Optuna journal. No Ray here: the report needs these too."""
from __future__ import annotations

from pathlib import Path

import optuna

from diffseg.config import ConfigError

DEFAULT_STORAGE = "studies"
JOURNAL = "optuna.journal"
STARTS = "trial_starts"  # one JSON file per trial (re)start
WORKER_STARTS = "worker_starts.jsonl"  # in a trial's run folder: one line per start of its worker group
# in a trial's run folder: every epoch's report, written before it goes to Tune, so that a trial
# restarted by a resumed driver can hand Tune the epochs the dead driver took but never saved
REPORTS = "reports.jsonl"
# in a trial's run folder: the last epoch the driver's Tune took, with the driver's Ray job id.
# Tune's own checkpoint of that epoch arrives a moment later (a second call to the trial's
# process): a trial process killed in between restarts with the epoch before, and this says the
# epoch is already Tune's, so it is not handed over twice
TAKEN = "taken_by_driver.json"


def study_dir_for(name: str, storage: str | None) -> Path:
    """``<storage>/<name>``; storage defaults to ``$DIFFSEG_STUDIES``, else ``studies``."""
    import os

    storage = storage or os.environ.get("DIFFSEG_STUDIES") or None
    if storage and "://" in storage:
        raise ConfigError(f"--storage {storage!r}: object storage (a URI) is not supported: trials "
                          f"resume from run folders on a file system; give a folder every node can read (a local path or an NFS mount)")
    return (Path(storage or DEFAULT_STORAGE) / name).resolve()


def existing_study_dir(name: str, storage: str | None) -> Path:
    study_dir = study_dir_for(name, storage)
    if not (study_dir / "study.yaml").exists():
        raise ConfigError(f"no study '{name}' at {study_dir} (missing study.yaml)")
    return study_dir


def journal(study_dir: Path) -> optuna.storages.JournalStorage:
    """Optuna's file journal: safe with concurrent writers (SQLite is not) and it opens in
    optuna-dashboard."""
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(Path(study_dir) / JOURNAL)))


def trial_starts(study_dir: Path) -> list[dict]:
    """Every trial start record of a study, oldest first."""
    import json

    records = [json.loads(p.read_text()) for p in (Path(study_dir) / STARTS).glob("*.json")]
    return sorted(records, key=lambda r: r["time"])
