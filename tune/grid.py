"""A grid of fixed configs as Ray trials: the methods benchmark's cells (``experiments/benchmark.py``
says which). Each cell runs through the same trial and worker code as a study's trial, in
``<bench_dir>/trials/<cell>/``."""
from __future__ import annotations

import time
from pathlib import Path

import ray.tune

from diffseg import config as config_mod
from diffseg.data import prepare

from . import tuner
from .resources import Resources, TrialSetup
from .trial import run_config


def run(cells: dict[str, dict], resources: Resources, bench_dir: Path, address: str | None = None,
        data_root: str = "", title: str = "grid", total: int | None = None, done: int = 0) -> None:
    """Run the named cell configs (dicts of full configs) ``resources.concurrency`` at a time."""
    for cfg in {c["data"]["dataset"]: c for c in cells.values()}.values():  # caches built once, before any cell
        prepare(config_mod.from_dict(cfg).data, progress=True, root=data_root)
    setup = TrialSetup(resources, {"val_dice": "max"}, str(Path(data_root).resolve()) if data_root else "")
    tuner.connect(address, resources, False, bench_dir.parent)
    trainable = tuner.trial_function(run_cell, resources, cells=cells, setup=setup, bench_dir=str(bench_dir))
    progress = CellProgress(title, total or len(cells), done, resources.concurrency)
    tuner.build(trainable, resources, bench_dir, f"tune-{time.strftime('%Y%m%d-%H%M%S')}", [progress],
                param_space={"cell": ray.tune.grid_search(list(cells))},
                trial_name=lambda t: t.config["cell"]).fit()


def run_cell(params: dict, cells: dict, setup: TrialSetup, bench_dir: str) -> None:
    """One cell: its config through the same trial code as a study's trial."""
    name = params["cell"]
    run_config(config_mod.from_dict(cells[name]), name, params, setup, Path(bench_dir))


class CellProgress(ray.tune.Callback):
    """One line per cell event, with the count done and an estimate of the time left."""

    def __init__(self, name: str, total: int, done: int, concurrency: int):
        self.name, self.total, self.done, self.concurrency = name, total, done, concurrency
        self.t0, self.durations, self.started = time.time(), [], {}

    def say(self, msg: str) -> None:
        print(f"[{self.name} {time.time() - self.t0:6.0f}s] {msg}", flush=True)

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started[trial.trial_id] = time.time()
        self.say(f"cell {trial.config['cell']} started")

    def _ended(self, trial, how: str) -> None:
        self.done += 1
        self.durations.append(time.time() - self.started.get(trial.trial_id, time.time()))
        left = self.total - self.done
        eta = sum(self.durations) / len(self.durations) * left / max(1, self.concurrency)
        value = (trial.last_result or {}).get("val_dice")
        self.say(f"cell {trial.config['cell']} {how}" + (f" (val Dice {value:.4f})" if value is not None else "")
                 + f"; {self.done}/{self.total} done, about {eta / 60:.0f} min left")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._ended(trial, "finished")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._ended(trial, f"FAILED (see {trial.path}/error.txt)")
