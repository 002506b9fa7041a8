"""The self-describing run directory: config, environment, splits, metrics, events, checkpoints."""
from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import torch

from . import config as config_mod, durable
from .errors import ConfigError

PACKAGES = ("torch", "torchvision", "numpy", "h5py", "timm", "tensorboardX", "ray", "optuna")


def git_commit() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment(device: torch.device) -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    info = {"python": sys.version.split()[0], "platform": platform.platform(), "packages": versions,
            "git_commit": git_commit(), "device": str(device), "cpu_count": os.cpu_count(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def recorded_data_root(run_dir: Path) -> str:
    """The data root a run folder's environment.json says it was trained on ('' when none)."""
    try:
        return str(json.loads((Path(run_dir) / "environment.json").read_text()).get("data_root") or "")
    except (OSError, ValueError, AttributeError):
        return ""


def _clean(value):
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    return value


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines file; none when it does not exist. A torn last line (a kill
    in the middle of an append) is left out; a damaged line elsewhere is an error naming it."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break  # torn by an interrupted append; a resume rewrites the file without it
            raise ConfigError(f"{path} line {i + 1} is not JSON (damaged file): {line[:80]!r}") from None
    return out


class RunDir:
    def __init__(self, path: str | Path):
        # absolute, symbolic links resolved: every message names the folder as `tune` does
        self.path = Path(path).expanduser().resolve()
        self.checkpoints = self.path / "checkpoints"
        self.last = self.checkpoints / "last.pt"
        self.best = self.checkpoints / "best.pt"

    def resumable(self) -> bool:
        from .checkpoint import previous

        return self.last.exists() or previous(self.last).exists()

    def create(self, cfg, device: torch.device, where: dict | None = None) -> bool:
        """Make the folder; returns True when an earlier run of the same config is to be resumed.
        ``where``: the data root and cache folder it runs with, recorded in environment.json (facts
        of where it ran, not hyperparameters: ``eval`` finds its data there)."""
        saved = self.path / "config.yaml"
        if self.resumable() and not saved.exists():
            raise ConfigError(f"run directory {self.path} holds checkpoints but no config.yaml (deleted?); "
                              f"refusing to guess which config made them: restore the file or choose a new --run-dir")
        with durable.writing(self.checkpoints):
            self.checkpoints.mkdir(parents=True, exist_ok=True)
        durable.remove_stale_temporaries(self.path, self.checkpoints)
        if saved.exists():
            old = config_mod.from_stored(config_mod.read_yaml(saved, "config"), str(saved))
            if config_mod.to_dict(old) != config_mod.to_dict(cfg):
                diff = {k: (v, config_mod.to_flat(cfg)[k]) for k, v in config_mod.to_flat(old).items()
                        if config_mod.to_flat(cfg)[k] != v}
                raise ConfigError(f"run directory {self.path} holds a run of another config "
                                  f"(differs in {diff}); choose a new --run-dir")
        else:
            config_mod.save(cfg, saved)
        durable.write_text(self.path / "environment.json", json.dumps(environment(device) | (where or {}), indent=1))
        return self.resumable()

    def log(self, record: dict) -> None:
        with durable.writing(self.path / "metrics.jsonl"), open(self.path / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def records(self) -> list[dict]:
        return read_jsonl(self.path / "metrics.jsonl")

    def truncate_log(self, stages: list[str], stage: str, epoch: int) -> None:
        """On resume drop records the checkpoint does not cover (written after it by a killed run).
        ``stages``: the method's stage names in the order they run."""
        # "done": every epoch is kept, the final record is written again. ``epoch``: the epochs of
        # ``stage`` done (records count from 1; a folder written when they counted from 0 is
        # renumbered here, as the resume rewrites the file anyway)
        order = {name: i for i, name in enumerate(stages)} | {"done": len(stages), "final": len(stages)}
        records = self.records()
        if any(r.get("stage") in stages and r.get("epoch") == 0 for r in records):
            records = [r | {"epoch": r["epoch"] + 1} if r.get("stage") in stages else r for r in records]
        at = order[stage]
        keep = [r for r in records if order.get(r.get("stage"), len(stages) + 1) < at
                or (r.get("stage") == stage and r.get("epoch", 0) <= epoch)]
        # rewritten whole: this also repairs a torn last line left by a kill mid-write
        durable.write_text(self.path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in keep))

    def write_json(self, name: str, data: dict) -> None:
        durable.write_text(self.path / name, json.dumps({k: _clean(v) for k, v in data.items()}, indent=1,
                                                        default=str))

    def writer(self):
        from tensorboardX import SummaryWriter

        return SummaryWriter(str(self.path / "tb"))
