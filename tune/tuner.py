"""The one place a Tuner is built and a driver joins its cluster: studies (``driver``) and the
benchmark grid (``grid``) both come here with their ``Resources``."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import optuna
import ray
import ray.tune

from .cluster_checks import (alive_nodes, check_storage, check_temp_space, check_worker_fits,
                             free_dead_jobs_placement_groups)
from .loggers import each_epoch_once
from .resources import Resources
from .taken import RecordTaken


def connect(address: str | None, resources: Resources, verbose: bool, storage_root: Path, seeds: int = 1) -> None:
    """Join (or start) the cluster and check that one trial fits and the storage is shared."""
    # Tune saves its state every few seconds, so a killed driver loses little
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    if not verbose:
        quiet()
    if not ray.is_initialized():
        check_temp_space()  # the driver's own session files go there, also when it joins a cluster
        # without an address, RAY_ADDRESS (set inside `ray job submit`) or a new local instance.
        # The workers' own output (Ray Train's per-report lines, actor warnings) would drown the
        # progress lines; it stays in each trial's train.log and Ray's session logs.
        ray.init(address=address, log_to_driver=verbose,
                 logging_level=logging.INFO if verbose else logging.ERROR)
    freed = free_dead_jobs_placement_groups()
    if freed:
        cpus = sum(b.get("CPU", 0) for group in freed for b in group.values())
        say(f"freed {len(freed)} placement group(s) ({cpus:g} CPUs) left by killed drivers")
    check_worker_fits(resources.cpus_per_worker, resources.gpus_per_worker, resources.workers * seeds)
    storage_root.mkdir(parents=True, exist_ok=True)
    check_storage(storage_root)
    have = ray.cluster_resources()
    say(f"ray cluster: {len(alive_nodes())} node(s), {have.get('CPU', 0):g} CPUs, {have.get('GPU', 0):g} GPUs; "
        f"up to {resources.concurrency} trials at once, each {resources.workers} worker(s); storage {storage_root} "
        f"writable from every node")


def trial_function(fn, resources: Resources, seeds: int = 1, **parameters):
    """A trial function with its fixed parameters. A trial of one worker trains in its own
    process, so it asks for that worker's CPUs and GPUs. A trial of several only waits on its
    TorchTrainer, so it asks for no CPU (the workers get every core; the concurrency bounds how
    many run at once); Ray wants a non-empty request: a little logical memory, roughly what that
    waiting process holds. A seed group's trial (``seeds`` > 1) waits the same way on its members,
    one bundle of one worker's resources each (tune/group.py)."""
    waiting = {"CPU": 0, "memory": 256 * 2**20}
    if seeds > 1:
        member = {"CPU": resources.cpus_per_worker} | ({"GPU": resources.gpus_per_worker}
                                                       if resources.gpus_per_worker else {})
        ask = ray.tune.PlacementGroupFactory([waiting] + [member] * seeds)
        return ray.tune.with_resources(ray.tune.with_parameters(fn, **parameters), ask)
    if resources.workers == 1:
        ask = {"CPU": resources.cpus_per_worker} | ({"GPU": resources.gpus_per_worker}
                                                    if resources.gpus_per_worker else {})
    else:
        ask = waiting
    return ray.tune.with_resources(ray.tune.with_parameters(fn, **parameters), ask)


def build(trainable, resources: Resources, storage: Path, name: str, callbacks: list, *, num_samples: int = 1,
          param_space: dict | None = None, search_alg=None, scheduler=None, trial_name=None) -> ray.tune.Tuner:
    """A Tuner over ``trainable`` whose trials are named ``trial_name(trial)`` (default: the
    trial id), at most ``resources.concurrency`` at once, each restarted up to ``max_failures``
    times (a trial whose node was lost resumes from its run folder on the shared storage).
    Run folders are ``<storage>/trials/<trial_name(trial)>``; the driver records in each the
    epochs Tune has taken (``taken.RecordTaken``); Tune's own files hold each epoch once
    (``loggers.each_epoch_once``)."""
    name_of = trial_name or (lambda t: t.trial_id)
    # a one-worker trial's process is kept for the next trial (torch imported once per slot)
    tune_config = ray.tune.TuneConfig(search_alg=search_alg, scheduler=scheduler, num_samples=num_samples,
                                      max_concurrent_trials=resources.concurrency,
                                      reuse_actors=resources.workers == 1,
                                      trial_name_creator=name_of, trial_dirname_creator=name_of)
    callbacks = [*callbacks, RecordTaken(storage, name_of), *each_epoch_once()]
    run_config = ray.tune.RunConfig(name=name, storage_path=str(storage), callbacks=callbacks, verbose=0,
                                    failure_config=ray.tune.FailureConfig(max_failures=trial_restarts(resources)))
    return ray.tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)


def trial_restarts(resources: Resources) -> int:
    """Tune's restarts of a failed trial. A trial of several workers has Train's restarts of its
    worker group beneath these. A one-worker trial has no such layer: its process is its worker,
    and a lost node can cost it two failures (the process, then a restart Tune placed on that
    node before Ray had marked it dead; seen in one of two node-loss runs), so it gets twice the
    restarts, the budget the two layers gave it before."""
    return resources.max_failures * (2 if resources.workers == 1 else 1)


HARMLESS = "worker processes have been started"


def drop_harmless_raylet_warning() -> None:
    """Ray warns "N PYTHON worker processes have been started ... fractional CPU requests" once a
    node holds four times its CPU count in worker processes: here trial functions and Train
    controllers ask for 0 CPU by design (see ``trial_function``) and each trial brings several
    processes, so the warning is misleading. It is no log record: the raylet publishes it and the
    driver's error listener prints it straight to stdout (``ray._private.worker``'s
    ``print_to_stdstream``, looked up by name on each message), so that is the one place it can be
    held back. Other messages pass unchanged."""
    import ray._private.worker as ray_worker

    show = ray_worker.print_to_stdstream
    if getattr(show, "drops_harmless", False):
        return

    def print_to_stdstream(data, ignore_prefix: bool):
        lines = [line for line in data.get("lines", []) if HARMLESS not in line]
        if lines:
            show({**data, "lines": lines}, ignore_prefix=ignore_prefix)

    print_to_stdstream.drops_harmless = True
    ray_worker.print_to_stdstream = print_to_stdstream


class NoRestoreAdvice(logging.Filter):
    """Tune's "Resume experiment with: Tuner.restore(...)" is not how a study resumes: the driver
    says `python -m tune resume NAME` itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore(" not in record.getMessage()


_NO_RESTORE_ADVICE = NoRestoreAdvice()


def quiet() -> None:
    """Keep the console to the study's own progress lines: no Ray, Tune or Optuna banners, no
    Tune TensorBoard hint (it names a driver-artifacts folder, not the study's), no raylet warning
    about worker processes (``drop_harmless_raylet_warning``), no advice to
    resume with ``Tuner.restore``; ``--verbose`` brings them back."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's classic output, silent at verbose=0
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    drop_harmless_raylet_warning()
    logging.getLogger("ray.tune.tune").addFilter(_NO_RESTORE_ADVICE)  # one object: a logger keeps one copy
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def say(msg: str) -> None:
    print(f"[tune] {msg}", flush=True)
