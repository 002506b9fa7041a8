"""Tiny configs and runs for the tests: one place, so every test trains the same small things."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import optuna
import yaml

from diffseg import config
from tune.paths import journal

ROOT = Path(__file__).resolve().parent.parent

# 32x32 synthetic images, width 4, two short epochs of each stage: seconds on a CPU
TINY = {"data.size": 32, "data.synthetic_count": 16, "model.width": 4, "model.depth": 2, "pretrain.epochs": 1,
        "train.epochs": 2, "train.iters_per_epoch": 2, "pretrain.iters_per_epoch": 2, "train.batch_size": 4,
        "pretrain.batch_size": 4, "diffusion_cps.diffusion.steps": 50, "diffusion_cps.diffusion.start_t": -1,
        "diffusion_cps.rounds": 2}
QUIET = {"log": lambda m: None}


def tiny(base: str = "debug", **overrides):
    """The tiny config with ``overrides`` (dotted keys as keyword arguments via ``**{...}``)."""
    return config.load(base, TINY | overrides)


# ------------------------------------------------------------------ studies
# the study-wide changes of the smoke-sized studies: 32 px, width 8, two iterations an epoch
STUDY_SET = {"data.size": 32, "model.width": 8, "model.depth": 2, "pretrain.epochs": 1,
        "pretrain.iters_per_epoch": 2, "train.iters_per_epoch": 2, "train.batch_size": 4,
        "pretrain.batch_size": 4}


def write_study(path: Path, **changes) -> Path:
    study = {"config": "debug", "set": dict(STUDY_SET),
             "space": {"diffusion_cps.diffusion.steps": {"choice": [100, 200]},
                       "diffusion_cps.diffusion.sample_steps": {"choice": [1, 2]},
                       "diffusion_cps.rounds": {"int": [1, 2]},
                       "diffusion_cps.round_mode": {"choice": ["independent", "chained"], "when": {"diffusion_cps.rounds": [2]}},
                       "diffusion_cps.loss.cps": {"float": [0.1, 2.0], "log": True},
                       "train.lr": {"float": [0.0003, 0.03], "log": True}},
             "trials": 6, "concurrency": 2, "searcher": {"type": "tpe", "seed": 0},
             "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2}}
    for key, value in changes.items():
        if key == "set":
            study["set"].update(value)
        else:
            study[key] = value
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def start_tune(command: str, target, storage: Path, address: str) -> subprocess.Popen:
    """`python -m tune search FILE` or `resume NAME` in its own process group (a test may kill
    it), output captured."""
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "tune", command, str(target), "--storage", str(storage),
                             "--address", address], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def journal_states(study_dir: Path, name: str) -> dict[str, str]:
    ot = optuna.load_study(study_name=name, storage=journal(study_dir))
    return {t.user_attrs.get("tune_trial_id", f"#{t.number}"): t.state.name for t in ot.get_trials()}


def read_csv(path: Path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh))
