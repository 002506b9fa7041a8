"""Stage-1 reuse: trials whose pretraining keys agree share one pretrained teacher.

The teacher lives in ``<study>/pretrained/<key>.pt``. The first trial to need it takes a file
lock, pretrains, publishes the file atomically and releases the lock; trials that arrive while
it works wait on the lock, then load the file. A lock held by a process that dies is released
by the operating system, so a crashed trial never blocks the others.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from filelock import FileLock, Timeout

from diffseg import config as config_mod

# stage 1 reads only these keys (plus the worker count, which sets the global batch)
STAGE1_PREFIXES = ("seed", "amp", "data.", "diffusion.steps", "diffusion.schedule", "model.", "pretrain.")
NOT_STAGE1 = ("data.num_workers", "data.cache_dir")


def stage1_keys(cfg, workers: int) -> dict:
    flat = config_mod.to_flat(cfg)
    keys = {k: v for k, v in flat.items() if k.startswith(STAGE1_PREFIXES) and k not in NOT_STAGE1}
    return keys | {"workers": workers}


def stage1_key(cfg, workers: int) -> str:
    text = json.dumps(stage1_keys(cfg, workers), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class SharedTeacher:
    def __init__(self, study_dir: Path, cfg, workers: int):
        self.key = stage1_key(cfg, workers)
        folder = Path(study_dir) / "pretrained"
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{self.key}.pt"
        self.keys = stage1_keys(cfg, workers)
        self.lock = FileLock(str(folder / f"{self.key}.lock"))

    def claim(self, log) -> bool:
        """True: the teacher exists, reuse it. False: this trial pretrains (and holds the lock)."""
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

    def publish(self, teacher_file: Path) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        shutil.copyfile(teacher_file, tmp)
        os.replace(tmp, self.path)
        (self.path.with_suffix(".json")).write_text(json.dumps(self.keys, indent=1, default=str))
        self.release()

    def release(self) -> None:
        if self.lock.is_locked:
            self.lock.release(force=True)


def decide(shared: SharedTeacher, run_dir: Path, log) -> bool:
    """Main rank only: reuse the shared teacher or pretrain here; the first decision of a trial is
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
    record.write_text(json.dumps({"key": shared.key, "reused": reused, "teacher": str(shared.path),
                                  "waited_s": round(time.time() - t0, 1)}))
    log(f"stage 1 {'reused' if reused else 'runs here'}: key {shared.key}")
    return reused
