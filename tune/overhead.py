"""Benchmark: one epoch's wall time inside Ray against the same epoch in-process.

Four runs of the same config in one invocation, one after the other (running them at once would
make them compete for the cores): in-process without Ray, in-process beside an idle Ray instance,
in a 1-worker TorchTrainer given every core (how a trial of several workers runs), and as a
one-worker Tune trial through the benchmark grid (how a one-worker trial or cell runs: in the
trial's own process). Epoch times come from each run's metrics.jsonl, so the Ray
figure excludes the worker start-up, which is reported separately as the whole-run wall time.
"""
from __future__ import annotations

import json
import os
import re
import statistics
import tempfile
import time
from pathlib import Path

import ray
import torch

from diffseg import config as config_mod
from diffseg.data import prepare
from diffseg.loop import fit
from diffseg.rundir import RunDir

from . import grid
from .resources import Resources, TrialSetup
from .trial import torch_trainer


def epoch_seconds(run_dir: Path) -> list[float]:
    return [r["seconds"] for r in RunDir(run_dir).records() if r.get("stage") == "train"]


def timed_local(cfg, run_dir: Path) -> float:
    t0 = time.time()
    fit(cfg, run_dir, log=lambda msg: None)
    return time.time() - t0


def measure_once(cfg, out_dir: Path) -> dict:
    wall = {"inprocess": timed_local(cfg, out_dir / "inprocess")}
    ray.init(include_dashboard=True, log_to_driver=False)
    try:
        # the same in-process run with an idle Ray instance beside it: separates what the Ray
        # processes take from the cores from what running inside a Train worker costs
        wall["inprocess_ray_up"] = timed_local(cfg, out_dir / "inprocess_ray_up")
        # the worker gets every core, as the in-process run does (Ray sets its thread count from this)
        cores = float(os.cpu_count() or 1)
        setup = TrialSetup(Resources(workers=1, cpus_per_worker=cores, max_failures=0))
        t0 = time.time()
        torch_trainer(setup, cfg, out_dir / "torchtrainer", out_dir, "overhead").fit()  # outside Tune: no reports
        wall["torchtrainer"] = time.time() - t0
        t0 = time.time()
        grid.run({"overhead": config_mod.to_dict(cfg)}, setup.resources, out_dir / "grid")
        wall["tune_trial"] = time.time() - t0
        (out_dir / "tune_trial").symlink_to(out_dir / "grid" / "trials" / "overhead")
    finally:
        ray.shutdown()
    # the first epoch of each run carries one-off costs (allocator warm-up); compare the rest
    epoch = {k: statistics.median(epoch_seconds(out_dir / k)[1:] or epoch_seconds(out_dir / k)) for k in wall}
    log = (out_dir / "torchtrainer" / "train.log").read_text()
    threads = re.search(r"(\d+) torch threads", log)
    return {"torch_threads_inprocess": torch.get_num_threads(),
            "torch_threads_torchtrainer": int(threads.group(1)) if threads else None,
            **{f"epoch_s_{k}": round(v, 4) for k, v in epoch.items()},
            "epoch_ratio": round(epoch["torchtrainer"] / epoch["inprocess"], 3),
            "epoch_ratio_vs_ray_up": round(epoch["torchtrainer"] / epoch["inprocess_ray_up"], 3),
            **{f"run_s_{k}": round(v, 3) for k, v in wall.items()},
            "run_ratio": round(wall["torchtrainer"] / wall["inprocess"], 3),
            "tune_trial_run_ratio": round(wall["tune_trial"] / wall["inprocess"], 3)}


def measure(cfg, out_dir: Path, repeat: int = 1) -> dict:
    """Runs the three side by side ``repeat`` times (2-core timings are noisy); medians of ratios."""
    if ray.is_initialized():
        raise RuntimeError("run the overhead benchmark in a fresh process: it starts and stops Ray itself")
    prepare(cfg.data, progress=True)  # build the cache before any clock starts
    rounds = []
    for i in range(repeat):
        rounds.append(measure_once(cfg, out_dir / f"r{i}"))
        print(f"repeat {i + 1}/{repeat}: epoch ratio {rounds[-1]['epoch_ratio']}", flush=True)
    keys = ("epoch_ratio", "epoch_ratio_vs_ray_up", "run_ratio", "tune_trial_run_ratio")
    return {"epochs": cfg.train.epochs, "repeats": repeat,
            **{f"median_{k}": round(statistics.median(r[k] for r in rounds), 3) for k in keys},
            "runs": rounds}


def main(config_name: str, overrides: list[str], output: str | None = None, repeat: int = 1) -> dict:
    cfg = config_mod.load(config_name, overrides)
    with tempfile.TemporaryDirectory(prefix="overhead") as tmp:
        result = measure(cfg, Path(tmp), repeat)
    result["config"] = config_name
    print(json.dumps(result, indent=1))
    if output:
        Path(output).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {output}")
    return result
