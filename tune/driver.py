"""The study driver: builds the Tuner (searcher, scheduler, trainable), starts or resumes it.

Experiment directory ``<storage>/<name>/``:
  study.yaml           the resolved study (base config with every key, space, settings)
  optuna.journal       Optuna's JournalStorage (opens in optuna-dashboard)
  tune/                Tune's restorable state and per-trial results and TensorBoard events
  train/               Ray Train's runs, one per trial, with the last reported checkpoint
  trials/<trial id>/   the diffseg run folder of each trial (config, metrics, tb, checkpoints)
  pretrained/          stage-1 teachers shared between trials, by stage-1 key
  trials.csv, best.yaml, report.md, plots/   written by the report
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
from pathlib import Path

import optuna
import ray
import ray.tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from diffseg.config import ConfigError
from diffseg.data import prepare

from . import report, seal
from .cluster_checks import alive_nodes, check_storage, check_worker_fits, free_dead_jobs_placement_groups
from .jobs import storage_for
from .paths import existing_study_dir, journal, study_dir_for
from .progress import Progress
from .searcher import StudySearch
from .study import Study, check_name, load_study, study_from_yaml, suggest
from .trial import run_trial

def search(study_file: str, overrides: list[str] | None = None, name: str | None = None,
           storage: str | None = None, address: str | None = None, verbose: bool = False,
           data_root: str = "", cache_dir: str = "") -> Path:
    """Check everything, make the experiment directory, run the study, write its report."""
    study = load_study(study_file, overrides, data_root, cache_dir)
    if name:
        study = dataclasses.replace(study, name=check_name(name))
    study_dir = study_dir_for(study.name, storage_for(storage))
    if study_dir.exists() and any(study_dir.iterdir()):
        raise ConfigError(f"study '{study.name}' already exists at {study_dir}; continue it with "
                          f"`python -m tune resume {study.name}` or choose another --name")
    say(f"study {study.name}: {study.trials} trials of {len(study.space)} parameters "
        f"({', '.join(p.key for p in study.space)}), {study.searcher} search, scheduler {study.scheduler}")
    say("checking the data (and building its cache once, before any trial starts)")
    prepare(study.base_config().data, progress=True, root=study.data_root, cache_dir=study.cache_dir)
    # the cluster check comes before the folder exists: a refusal must not take the name
    _connect(address, study, verbose, study_dir.parent)
    study_dir.mkdir(parents=True, exist_ok=True)
    (study_dir / "study.yaml").write_text(study.to_yaml())
    tuner = ray.tune.Tuner(trainable(study, study_dir), tune_config=tune_config(study, study_dir),
                           run_config=run_config(study, study_dir))
    return _fit(tuner, study, study_dir)


def resume(name: str, storage: str | None = None, address: str | None = None, verbose: bool = False,
           trust: bool = False) -> Path:
    study_dir = existing_study_dir(name, storage_for(storage))
    study = study_from_yaml((study_dir / "study.yaml").read_text())
    # before anything is unpickled: the state is the one this installation sealed (tune/seal.py)
    trials_saved = seal.verify(study_dir, trust, say)
    _connect(address, study, verbose, study_dir.parent)
    if not trials_saved or not ray.tune.Tuner.can_restore(str(study_dir / "tune")):
        # the driver was killed before Tune first saved its state (it saves a few seconds in):
        # no Tune trial can have got far, so the study starts over under its name; parameters
        # Optuna had drawn for it are reused (StudySearch._orphan)
        say(f"study {name} at {study_dir} was stopped before Tune saved any state: starting its trials")
        tuner = ray.tune.Tuner(trainable(study, study_dir), tune_config=tune_config(study, study_dir),
                               run_config=run_config(study, study_dir))
        return _fit(tuner, study, study_dir)
    say(f"resuming study {name} from {study_dir}: unfinished and errored trials continue, "
        f"finished ones are kept")
    try:
        tuner = ray.tune.Tuner.restore(str(study_dir / "tune"), trainable=trainable(study, study_dir),
                                       resume_unfinished=True, resume_errored=True)
    except Exception as exc:  # sealed, so whole when sealed; read by Ray all the same
        raise ConfigError(f"study '{name}': Ray could not restore the Tune state in {study_dir / 'tune'} "
                          f"({type(exc).__name__}: {str(exc)[:300]})") from exc
    return _fit(tuner, study, study_dir)


def _fit(tuner, study: Study, study_dir: Path) -> Path:
    try:
        tuner.fit()
    except KeyboardInterrupt:
        say(f"interrupted; continue with `python -m tune resume {study.name}`")
        raise
    seal.seal(study_dir)  # the final state, once Tune's last copy into tune/ is done
    # Tune turns Ctrl-C into a clean return with trials left unfinished: count what really ended
    ot = optuna.load_study(study_name=study.name, storage=journal(study_dir))
    ended = ended_trials(ot)
    if ended < study.trials:
        report.write(study_dir)
        say(f"stopped after {ended} of {study.trials} trials ended; continue with "
            f"`python -m tune resume {study.name}`")
        return study_dir
    close_lost_trials(ot)
    out = report.write(study_dir)
    best = study_dir / "best.yaml"
    if best.exists():
        say(best.read_text().splitlines()[0].lstrip("# ") + f"; config: {best}")
    say(f"report: {out}")
    return study_dir


def ended_trials(ot: optuna.Study) -> int:
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    return sum("tune_trial_id" in t.user_attrs for t in ot.get_trials(deepcopy=False, states=states))


def close_lost_trials(ot: optuna.Study) -> None:
    """Once every trial has ended, an Optuna trial still RUNNING was asked by a driver that died
    before Tune saved it; Tune never ran it, so it is told FAIL rather than left open."""
    for t in ot.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        ot.tell(t.number, state=optuna.trial.TrialState.FAIL)
        say(f"optuna trial {t.number} was never run (its driver was killed): marked FAIL")


def trainable(study: Study, study_dir: Path):
    # the trial function only waits on its TorchTrainer, so it asks for no CPU (the workers get
    # every core; max_concurrent_trials bounds how many run at once). Ray wants a non-empty
    # request: a little logical memory, roughly what that waiting process holds.
    fn = ray.tune.with_parameters(run_trial, study=study, study_dir=str(study_dir))
    return ray.tune.with_resources(fn, {"CPU": 0, "memory": 256 * 2**20})


def searcher(study: Study, study_dir: Path) -> StudySearch:
    multi = bool(study.second_metric)
    sampler = (optuna.samplers.RandomSampler(seed=study.seed) if study.searcher == "random"
               else optuna.samplers.TPESampler(seed=study.seed))
    return StudySearch(space=functools.partial(suggest, space=study.space),
                       metric=study.metrics if multi else study.metric,
                       mode=study.modes if multi else study.mode,
                       sampler=sampler, study_name=study.name, storage=journal(study_dir),
                       max_epochs=study.max_epochs)


def tune_config(study: Study, study_dir: Path) -> ray.tune.TuneConfig:
    if study.scheduler == "asha":
        # epochs, not Tune's iteration count: that restarts when a trial resumes
        scheduler = ASHAScheduler(time_attr="epoch", metric=study.metric, mode=study.mode,
                                  max_t=study.max_epochs, grace_period=study.grace_period,
                                  reduction_factor=study.reduction_factor)
    else:
        scheduler = FIFOScheduler()
    return ray.tune.TuneConfig(search_alg=searcher(study, study_dir), scheduler=scheduler,
                               num_samples=study.trials, max_concurrent_trials=study.concurrency,
                               trial_name_creator=lambda t: t.trial_id,
                               trial_dirname_creator=lambda t: t.trial_id)


def run_config(study: Study, study_dir: Path) -> ray.tune.RunConfig:
    progress = Progress(study.name, study.metric, study.mode, study.max_epochs, study.trials, study.scheduler)
    # a failed worker group is restarted inside its TorchTrainer (study.max_failures); a trial
    # whose own process died (its node was lost) is restarted by Tune as often, and resumes
    # from its run folder on the shared storage
    return ray.tune.RunConfig(name="tune", storage_path=str(study_dir), callbacks=[progress, seal.Seal(study_dir)],
                              verbose=0,
                              # every Tune checkpoint is kept (a few bytes each, see trial.to_tune):
                              # a restored state may name one its dead driver had already replaced
                              failure_config=ray.tune.FailureConfig(max_failures=study.max_failures))


def _connect(address: str | None, study: Study, verbose: bool, storage_root: Path) -> None:
    # Tune saves its state every few seconds, so a killed driver loses little
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    if not verbose:
        quiet()
    if not ray.is_initialized():
        # without an address, RAY_ADDRESS (set inside `ray job submit`) or a new local instance.
        # The workers' own output (Ray Train's per-report lines, actor warnings) would drown the
        # progress lines; it stays in each trial's train.log and Ray's session logs.
        ray.init(address=address, log_to_driver=verbose,
                 logging_level=logging.INFO if verbose else logging.ERROR)
    freed = free_dead_jobs_placement_groups()
    if freed:
        cpus = sum(b.get("CPU", 0) for group in freed for b in group.values())
        say(f"freed {len(freed)} placement group(s) ({cpus:g} CPUs) left by killed drivers")
    check_worker_fits(study.cpus_per_worker, study.gpus_per_worker, study.workers)
    storage_root.mkdir(parents=True, exist_ok=True)
    check_storage(storage_root)
    have = ray.cluster_resources()
    say(f"ray cluster: {len(alive_nodes())} node(s), {have.get('CPU', 0):g} CPUs, {have.get('GPU', 0):g} GPUs; "
        f"up to {study.concurrency} trials at once, each {study.workers} worker(s); storage {storage_root} "
        f"writable from every node")


class _DropHarmless(logging.Filter):
    """Ray warns about "N PYTHON worker processes" because trials ask for 0 CPU (by design,
    see ``trainable``); the warning is misleading here, so it stays out of the console."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "worker processes have been started" not in record.getMessage()


def quiet() -> None:
    """Keep the console to the study's own progress lines: no Ray, Tune or Optuna banners, no
    Tune TensorBoard hint (it names a driver-artifacts folder, not the study's); ``--verbose``
    brings them back."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's classic output, silent at verbose=0
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    logging.getLogger("ray._private.worker").addFilter(_DropHarmless())
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def say(msg: str) -> None:
    print(f"[tune] {msg}", flush=True)
