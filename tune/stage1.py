"""Stage-1 reuse: trials whose pretraining keys agree share one set of pretrained networks.

They live in ``<study>/pretrained/<key>.pt``. The first trial to need it takes a file
lock, pretrains, publishes the file atomically and releases the lock; trials that arrive while
it works wait on the lock, then load the file. A lock held by a process that dies is released
by the operating system, so a crashed trial never blocks the others.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from filelock import FileLock, Timeout

from diffseg.methods import stage1_config, stage1_key


class SharedPretrained:
    """The study's copy of one stage-1 result; the method says which config keys it depends on."""

    def __init__(self, study_dir: Path, cfg, numerics: dict):
        self.key = stage1_key(cfg, numerics)
        folder = Path(study_dir) / "pretrained"
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{self.key}.pt"
        self.keys = stage1_config(cfg, numerics)
        self.lock = FileLock(str(folder / f"{self.key}.lock"))

    def claim(self, log) -> bool:
        """True: the pretrained networks exist, reuse it. False: this trial pretrains (and holds the lock)."""
        waited = 0.0
        while True:
            try:
                self.lock.acquire(timeout=30)
                break
            except Timeout:
                waited += 30
                log(f"waiting {waited:.0f}s for another trial's stage 1 (key {self.key})")
        if self.path.exists():
            self.lock.release()
            return True
        return False

    def publish(self, pretrained_file: Path) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        shutil.copyfile(pretrained_file, tmp)
        os.replace(tmp, self.path)
        (self.path.with_suffix(".json")).write_text(json.dumps(self.keys, indent=1, default=str))
        self.release()

    def release(self) -> None:
        if self.lock.is_locked:
            self.lock.release(force=True)


def decide(shared: SharedPretrained, run_dir: Path, log) -> bool:
    """Main rank only: reuse the shared pretrained networks or pretrain here; the first decision of a trial is
    kept in ``stage1.json`` so a restarted trial neither recounts nor re-decides."""
    record = Path(run_dir) / "stage1.json"
    if record.exists():
        prior = json.loads(record.read_text())
        if not prior["reused"] and not shared.path.exists():
            shared.claim(log)  # resuming its own interrupted stage 1: hold the lock again
        return prior["reused"]
    t0 = time.time()
    reused = shared.claim(log)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"key": shared.key, "reused": reused, "pretrained": str(shared.path),
                                  "waited_s": round(time.time() - t0, 1)}))
    log(f"stage 1 {'reused' if reused else 'runs here'}: key {shared.key}")
    return reused
