"""Progress lines printed by the study driver: one per trial event and per epoch."""
from __future__ import annotations

import time

from ray.tune import Callback

STOPPED_BY = {"asha": "ASHA", "paired": "the paired test"}  # the schedulers that stop trials early


class Progress(Callback):
    def __init__(self, study_name: str, metric: str, mode: str, max_epochs: int, total: int, scheduler: str = "asha"):
        self.name, self.metric, self.mode, self.scheduler = study_name, metric, mode, scheduler
        self.max_epochs, self.total = max_epochs, total
        self.best: tuple[float, str] | None = None
        self.done = 0
        self.t0 = time.time()

    def say(self, msg: str) -> None:
        print(f"[{self.name} {time.time() - self.t0:6.0f}s] {msg}", flush=True)

    def on_trial_start(self, iteration, trials, trial, **info):
        params = ", ".join(f"{k}={_short(v)}" for k, v in trial.config.items())
        self.say(f"trial {trial.trial_id} started: {params}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(self.metric)
        if value is None or result.get("diverged"):
            return
        better = self.best is None or (value > self.best[0] if self.mode == "max" else value < self.best[0])
        if better:
            self.best = (value, trial.trial_id)
        seeds = result.get(f"{self.metric}_seeds")  # a seed group's members (tune/group.py)
        spread = (f" ± {result[f'{self.metric}_ci95']:.4f} over {len(seeds)} seeds ("
                  + ", ".join(f"{v:.4f}" for v in seeds) + ")") if isinstance(seeds, list) else ""
        self.say(f"trial {trial.trial_id} epoch {result.get('epoch')}/{self.max_epochs} "
                 f"{self.metric} {value:.4f}{spread} (study best {self.best[0]:.4f}, trial {self.best[1]})")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done += 1
        last = trial.last_result or {}
        epoch = last.get("epoch", 0)
        how = (f"DIVERGED at epoch {epoch}: {last.get('diverged_reason', '')}" if last.get("diverged") else
               "finished" if epoch >= self.max_epochs else f"stopped early by {STOPPED_BY[self.scheduler]} after epoch {epoch}"
               if self.scheduler in STOPPED_BY else f"ended after epoch {epoch} of {self.max_epochs}")
        self.say(f"trial {trial.trial_id} {how} ({self.done}/{self.total} trials ended)")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.done += 1
        self.say(f"trial {trial.trial_id} FAILED; its error is in {trial.path}/error.txt "
                 f"({self.done}/{self.total} trials ended)")


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
