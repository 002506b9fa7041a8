"""One trial: a Ray Tune function trainable that runs a Ray Train ``TorchTrainer``.

Names are stable (the Tune trial id), so a trial restarted after a driver crash resumes its own
Train run and run folder instead of starting a new one.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import ray.train
import ray.tune
from ray.train.torch import TorchConfig, TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from diffseg import config as config_mod

from .study import Study
from .worker import train_loop


def run_trial(params: dict, study: Study, study_dir: str) -> None:
    trial_id = ray.tune.get_context().get_trial_id()
    cfg = study.trial_config(params, trial_id)
    run_dir = Path(study_dir) / "trials" / trial_id
    run_dir.mkdir(parents=True, exist_ok=True)
    # one line per start: the report counts attempts, and tests check completed trials never rerun
    with open(Path(study_dir) / "trial_starts.jsonl", "a") as fh:
        fh.write(json.dumps({"trial_id": trial_id, "time": time.time(), "params": params}) + "\n")
    (run_dir / "params.json").write_text(json.dumps(params, indent=1))
    torch_trainer(study, cfg, run_dir, Path(study_dir), trial_id).fit()


def torch_trainer(study: Study, cfg, run_dir: Path, study_dir: Path, trial_id: str, in_tune: bool = True) -> TorchTrainer:
    use_gpu = study.gpus_per_worker > 0
    per_worker = {"CPU": study.cpus_per_worker} | ({"GPU": study.gpus_per_worker} if use_gpu else {})
    return TorchTrainer(
        train_loop,
        train_loop_config={"config": config_mod.to_dict(cfg), "run_dir": str(run_dir),
                           "study_dir": str(study_dir), "data_root": study.data_root,
                           "cache_dir": study.cache_dir},
        # explicit gradient all-reduce over this process group (see diffseg/runtime.py for why
        # not the DDP module wrapper): gloo on CPU, nccl on GPU
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=study.workers, use_gpu=use_gpu,
                                               resources_per_worker=per_worker),
        run_config=ray.train.RunConfig(
            name=trial_id, storage_path=str(study_dir / "train"),
            failure_config=ray.train.FailureConfig(max_failures=study.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            callbacks=[TuneReportCallback()] if in_tune else [],
            # Train's per-report INFO lines drown the study's progress output
            logging_config=ray.train.LoggingConfig(log_level="WARNING")),
    )
