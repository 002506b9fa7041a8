"""One trial: a Ray Tune function trainable. A trial of several workers runs a Ray Train
``TorchTrainer``; a trial of one worker runs the core in its own process (no Train controller and
worker to start: about 20 s less per trial on 2 CPU cores, and with ``reuse_actors`` torch is
imported once per trial slot, not once per trial).

Names are stable (the Tune trial id), so a trial restarted after a driver crash resumes its own
Train run and run folder instead of starting a new one.

With Train, each epoch's report travels worker -> Train controller -> this function -> Tune, and
the worker waits until Tune has taken it (an acknowledgement file in the run folder) before it trains the
next epoch. So a trial that a scheduler stops after epoch k has trained exactly k epochs: Tune,
Optuna, the run folder and the report agree on where it stopped. In a one-worker trial
``ray.tune.report`` itself waits for Tune, which ends the trial's thread when it stops the trial.
"""
from __future__ import annotations

import json
import os
import queue as queue_mod
import tempfile
import threading
import time
from pathlib import Path

import ray
import ray.train
import ray.tune
from ray.train import UserCallback
from ray.train.torch import TorchConfig, TorchTrainer
from ray.util.queue import Empty, Queue

from diffseg import config as config_mod

from .paths import REPORTS, STARTS
from .resources import TrialSetup
from .study import Study
from .taken import last_taken
from . import group
from .worker import ACK_FILE, STOP, logger, record_report, run_member, train_loop, trial_device, work


class ForwardReports(UserCallback):
    """In the Train controller: hands every report to the trial function's queue."""

    def __init__(self, queue: Queue):
        self.queue = queue

    def after_report(self, run_context, metrics, checkpoint):
        self.queue.put(dict(metrics[0]))


def run_trial(params: dict, study: Study, study_dir: str) -> None:
    """A study's trial: the study's base config with this trial's sampled parameters."""
    trial_id = ray.tune.get_context().get_trial_id()
    run_config(study.trial_config(params, trial_id), trial_id, params, study.setup(), Path(study_dir))


def run_config(cfg, name: str, params: dict, setup: TrialSetup, study_dir: Path) -> None:
    """Run one config as a Tune trial through a TorchTrainer, in ``<study_dir>/trials/<name>``;
    a study's trials and a benchmark's cells both come here."""
    run_dir = study_dir / "trials" / name
    run_dir.mkdir(parents=True, exist_ok=True)
    record_start(study_dir, name, params)
    (run_dir / "params.json").write_text(json.dumps(params, indent=1))
    # Tune's saved state may lag what the last driver took (it saves every few seconds): the
    # worker's acknowledgements restart from what Tune holds, and the epochs in between are
    # handed to Tune again from the run folder, a finished run's last one included. Under the
    # same driver, the epoch whose checkpoint never came back is Tune's already (see taken.py)
    held = last_taken(run_dir, held_by_tune(), ray.get_runtime_context().get_job_id())
    acknowledge(run_dir, held)
    try:
        last = replay(run_dir, held)
    except BaseException:
        acknowledge(run_dir, STOP)
        raise
    if last is not None and finished(run_dir, last, cfg):
        return  # it ended while the driver was away: its real result is now Tune's
    if setup.seeds > 1:
        in_group(setup, cfg, run_dir, study_dir, max(held, int(last["epoch"]) if last else -1))
        return
    if setup.resources.workers == 1:
        in_trial(setup, cfg, run_dir, study_dir, max(held, int(last["epoch"]) if last else -1))
        return
    reports = Queue(actor_options={"num_cpus": 0})
    trainer = torch_trainer(setup, cfg, run_dir, study_dir, name, reports=reports)
    outcome: dict = {}

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as exc:  # re-raised in the trial's own thread below
            outcome["error"] = exc

    thread = threading.Thread(target=fit, name=f"trainer-{name}", daemon=True)
    thread.start()
    while thread.is_alive() or not reports.empty():
        try:
            metrics = reports.get(timeout=1.0)
        except (Empty, queue_mod.Empty):
            continue
        try:
            to_tune(metrics)  # returns only if Tune lets the trial go on
        except BaseException:  # Tune stopped the trial (a scheduler's decision) or the driver is going
            acknowledge(run_dir, STOP)  # the worker ends now rather than wait, and frees its resources
            raise
        acknowledge(run_dir, int(metrics["epoch"]))
    thread.join()
    if "error" in outcome:
        raise outcome["error"]


def in_trial(setup: TrialSetup, cfg, run_dir: Path, study_dir: Path, taken: int) -> None:
    """A one-worker trial: the core in this process, each epoch's report straight to Tune (after
    the run folder has it, so a restarted trial can replay it); ``taken``: the last epoch Tune has."""
    seen = [taken]

    def report(metrics: dict) -> None:
        epoch = int(metrics["epoch"])
        if epoch <= seen[0]:  # a resumed run re-sends the epoch it restored: Tune has it
            return
        record_report(run_dir, metrics)
        to_tune(metrics)  # returns when Tune lets the trial go on; a stop ends this thread
        seen[0] = epoch

    work(loop_config(setup, cfg, run_dir, study_dir, wait_for_ack=False), 0, 1, trial_device(), report,
         logger(run_dir, 0), "trial process")


def in_group(setup: TrialSetup, cfg, run_dir: Path, study_dir: Path, taken: int) -> None:
    """A seed group's trial (tune/group.py): its members train as Ray actors in the trial's
    placement group, bundles 1.. (bundle 0 is this waiting process); this process hands Tune the
    members' mean of each epoch and answers every member. ``taken``: the last epoch Tune has."""
    from ray.util import get_current_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    folders = [run_dir / group.MEMBER.format(i) for i in range(setup.seeds)]
    # who waits on the members (its process owns their actors: when it dies, they die)
    (run_dir / group.GROUP_FILE).write_text(json.dumps({"pid": os.getpid(), "seeds": setup.seeds}))
    for folder in folders:
        folder.mkdir(exist_ok=True)
        acknowledge(folder, taken)  # also clears a stop meant for an earlier attempt
    res, pg = setup.resources, get_current_placement_group()
    actors = []
    for i, folder in enumerate(folders):
        where = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i + 1) if pg else None
        actors.append(SeedMember.options(num_cpus=res.cpus_per_worker, num_gpus=res.gpus_per_worker,
                                         scheduling_strategy=where).remote())
    refs = [a.run.remote(loop_config(setup, group.member_config(cfg, i), folder, study_dir, wait_for_ack=True))
            for i, (a, folder) in enumerate(zip(actors, folders))]

    def summarise() -> None:
        group.write_group_files(run_dir, setup.seeds)
        if all((f / "summary.json").exists() for f in folders):
            group.write_group_summary(run_dir, setup.seeds)

    def hand_over(report: dict) -> None:
        record_report(run_dir, report)
        # a member reports its final epoch once its summary exists: so does the group (Tune may
        # stop the trial on that epoch, as ASHA does at its last rung)
        summarise()
        to_tune(report)  # returns only if Tune lets the trial go on

    def go_on(epoch: int) -> None:
        for folder in folders:
            acknowledge(folder, epoch)

    try:
        group.lockstep(folders, max(taken, 0) + 1, lambda: group.members_ended(refs), hand_over, go_on)  # epochs count from 1
        for folder in folders:  # a diverged member ended the group: the others stop where it did
            acknowledge(folder, STOP)
        ray.get(refs)
        summarise()
    except BaseException:  # Tune stopped the trial, or a member failed
        for folder in folders:
            acknowledge(folder, STOP)
        ray.wait(refs, num_returns=len(refs), timeout=30)
        raise
    finally:
        for actor in actors:
            ray.kill(actor)


@ray.remote(max_restarts=0)
class SeedMember:
    """One member of a seed group: a run of its own in its own process (see tune/group.py)."""

    def run(self, loop_cfg: dict) -> None:
        run_member(loop_cfg)


def loop_config(setup: TrialSetup, cfg, run_dir: Path, study_dir: Path, wait_for_ack: bool) -> dict:
    return {"config": config_mod.to_dict(cfg), "run_dir": str(run_dir), "study_dir": str(study_dir),
            "data_root": setup.data_root, "cache_dir": setup.cache_dir, "wait_for_ack": wait_for_ack,
            "objectives": dict(setup.objectives)}


CHECKPOINT_FILE = "epoch.json"


def to_tune(metrics: dict) -> None:
    """``ray.tune.report`` with a checkpoint holding only the epoch: Tune saves the checkpoint
    with the trial's state, so a restarted trial learns which epochs Tune holds (held_by_tune).
    The model's checkpoints stay in the run folder."""
    with tempfile.TemporaryDirectory(prefix="dsck") as folder:
        (Path(folder) / CHECKPOINT_FILE).write_text(json.dumps({"epoch": int(metrics["epoch"])}))
        ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(folder))


def held_by_tune() -> int:
    """The last epoch in Tune's saved state of this trial (-1: none)."""
    checkpoint = ray.tune.get_checkpoint()
    if checkpoint is None:
        return -1
    with checkpoint.as_directory() as folder:
        return int(json.loads((Path(folder) / CHECKPOINT_FILE).read_text())["epoch"])


def replay(run_dir: Path, held: int) -> dict | None:
    """Hands Tune, in order, the run folder's reports of epochs after ``held``, the last one Tune
    holds; returns the last report of the run folder (None: nothing reported yet)."""
    from diffseg.rundir import read_jsonl

    reports = read_jsonl(run_dir / REPORTS)
    for metrics in reports:
        if int(metrics["epoch"]) > held:
            to_tune(metrics)
            acknowledge(run_dir, int(metrics["epoch"]))
    return reports[-1] if reports else None


def finished(run_dir: Path, last: dict, cfg) -> bool:
    """The run ended (its summary exists) and its last report, the final epoch or the
    divergence, is in the run folder: nothing is left to train."""
    return (run_dir / "summary.json").exists() and (bool(last.get("diverged"))
                                                     or int(last["epoch"]) >= cfg.train.epochs)


def record_start(study_dir: Path, trial_id: str, params: dict) -> None:
    """One file per (re)start: the report counts attempts, and tests check that completed trials
    never rerun. Files, not lines appended to one file: trials on several nodes write at once,
    and appends to a shared file system are not atomic."""
    folder = study_dir / STARTS
    folder.mkdir(exist_ok=True)
    stamp = time.time()
    record = {"trial_id": trial_id, "time": stamp, "params": params, "node": ray.get_runtime_context().get_node_id()}
    (folder / f"{trial_id}-{time.time_ns()}.json").write_text(json.dumps(record))


def acknowledge(run_dir: Path, epoch: int | str) -> None:
    tmp = run_dir / f".{ACK_FILE}.tmp"
    tmp.write_text(str(epoch))
    tmp.replace(run_dir / ACK_FILE)


def torch_trainer(setup: TrialSetup, cfg, run_dir: Path, study_dir: Path, trial_id: str,
                  reports: Queue | None = None) -> TorchTrainer:
    """The trial's Train run; ``reports`` None runs it outside Tune (no acknowledgements)."""
    res = setup.resources
    use_gpu = res.gpus_per_worker > 0
    per_worker = {"CPU": res.cpus_per_worker} | ({"GPU": res.gpus_per_worker} if use_gpu else {})
    return TorchTrainer(
        train_loop,
        train_loop_config=loop_config(setup, cfg, run_dir, study_dir, wait_for_ack=reports is not None),
        # explicit gradient all-reduce over this process group (see diffseg/runtime.py for why
        # not the DDP module wrapper): gloo on CPU, nccl on GPU
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=res.workers, use_gpu=use_gpu,
                                               resources_per_worker=per_worker),
        run_config=ray.train.RunConfig(
            name=trial_id, storage_path=str(study_dir / "train"),
            failure_config=ray.train.FailureConfig(max_failures=res.max_failures),
            callbacks=[ForwardReports(reports)] if reports is not None else [],
            # Train's per-report INFO lines drown the study's progress output
            logging_config=ray.train.LoggingConfig(log_level="WARNING")),
    )
