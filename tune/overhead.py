"""Benchmark: one epoch's wall time inside a 1-worker TorchTrainer against the same epoch in-process.

Both runs use the same config in one invocation, one after the other (running them at once would
make them compete for the cores). Epoch times come from each run's metrics.jsonl, so the Ray
figure excludes the worker start-up, which is reported separately as the whole-run wall time.
"""
from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import ray

from diffseg import config as config_mod
from diffseg.data import prepare
from diffseg.run import train

from .study import Study
from .trial import trainer


def epoch_seconds(run_dir: Path) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["seconds"] for r in records if r.get("stage") == "train"]


def measure(cfg, out_dir: Path) -> dict:
    prepare(cfg.data, progress=True)  # build the cache before either clock starts
    t0 = time.time()
    train(cfg, out_dir / "inprocess", log=lambda msg: None)
    wall_local = time.time() - t0
    if not ray.is_initialized():
        ray.init(include_dashboard=True, log_to_driver=False)
    study = Study(name="overhead", base="", config=config_mod.to_dict(cfg), space=(), workers=1,
                  cpus_per_worker=1.0, max_failures=0)
    t0 = time.time()
    trainer(study, cfg, out_dir / "torchtrainer", out_dir, "overhead", in_tune=False).fit()
    wall_ray = time.time() - t0
    local, inray = epoch_seconds(out_dir / "inprocess"), epoch_seconds(out_dir / "torchtrainer")
    # the first epoch of each run carries one-off costs (allocator warm-up); compare the rest
    a, b = statistics.median(local[1:] or local), statistics.median(inray[1:] or inray)
    return {"epochs": len(local), "epoch_s_inprocess": round(a, 3), "epoch_s_torchtrainer": round(b, 3),
            "epoch_ratio": round(b / a, 3), "run_s_inprocess": round(wall_local, 1),
            "run_s_torchtrainer": round(wall_ray, 1), "run_ratio": round(wall_ray / wall_local, 3)}


def main(config_name: str, overrides: list[str]) -> dict:
    cfg = config_mod.load(config_name, overrides)
    with tempfile.TemporaryDirectory(prefix="overhead") as tmp:
        result = measure(cfg, Path(tmp))
    result["config"] = config_name
    print(json.dumps(result, indent=1))
    return result
