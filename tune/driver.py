"""The study driver: builds the Tuner (searcher, scheduler, trainable), starts or resumes it.

Experiment directory ``<storage>/<name>/``:
  study.yaml           the resolved study (base config with every key, space, settings)
  optuna.journal       Optuna's JournalStorage (opens in optuna-dashboard)
  tune/                Tune's restorable state and per-trial results and TensorBoard events
  train/               Ray Train's runs, one per trial, with the last reported checkpoint
  trials/<trial id>/   the diffseg run folder of each trial (config, metrics, tb, checkpoints)
  pretrained/          stage-1 networks shared between trials, by stage-1 key
  trials.csv, best.yaml, report.md, plots/   written by the report
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from pathlib import Path

import optuna
import ray
import ray.tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from diffseg import durable
from diffseg.config import ConfigError
from diffseg.errors import Interrupted
from diffseg.data import prepare

from . import report, seal, tuner, warm
from .jobs import storage_for
from .paired import PairedStopping
from .paths import existing_study_dir, journal, study_dir_for
from .progress import Progress
from .searcher import StudySearch
from .study import Study, check_name, load_study, study_from_yaml, suggest
from .trial import run_trial

say = tuner.say

def search(study_file: str, overrides: list[str] | None = None, name: str | None = None,
           storage: str | None = None, address: str | None = None, verbose: bool = False,
           data_root: str = "", cache_dir: str = "", dataset: str | None = None) -> Path:
    """Check everything, make the experiment directory, run the study, write its report."""
    study = load_study(study_file, overrides, data_root, cache_dir, dataset)
    if name:
        study = dataclasses.replace(study, name=check_name(name))
    study_dir = study_dir_for(study.name, storage_for(storage))
    # one driver per study folder: two searches of one --name started together both passed the
    # check below before either wrote anything; the lock decides (a folder holding only the lock
    # file of a search that was refused later takes no name)
    made = not study_dir.exists()
    lock = durable.FolderLock(study_dir, "study folder").acquire()
    try:
        if any(p.name != ".lock" for p in study_dir.iterdir()):
            raise ConfigError(f"study '{study.name}' already exists at {study_dir}; continue it with "
                              f"`python -m tune resume {study.name}` or choose another --name")
        say(f"study {study.name}: {study.trials} trials of {len(study.space)} parameters "
            f"({', '.join(p.key for p in study.space)}), {study.searcher} search, scheduler {study.scheduler}")
        seal.key()  # a key that cannot be made (read-only HOME) is refused now, not at Tune's first save
        say("checking the data (and building its cache once, before any trial starts)")
        prepare(study.base_config().data, progress=True, root=study.data_root, cache_dir=study.cache_dir)
        # the cluster check comes before anything but the lock is written: a refusal takes no name
        tuner.connect(address, study.resources, verbose, study_dir.parent, study.seeds)
        other_dir = warm_source(study, study_dir)
        durable.write_text(study_dir / "study.yaml", study.to_yaml())  # whole or absent, even if killed
        for line in warm.seed_journal(study, journal(study_dir), journal(other_dir) if other_dir else None):
            say(line)
        return _fit(build_tuner(study, study_dir), study, study_dir)
    finally:
        lock.release()
        if made and not (study_dir / "study.yaml").exists():  # refused before it began: the name stays free
            (study_dir / ".lock").unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                study_dir.rmdir()


def warm_source(study: Study, study_dir: Path) -> Path | None:
    """The folder of the study this one warm-starts from (beside it), checked to agree."""
    if not study.warm_start:
        return None
    other_dir = study_dir.parent / study.warm_start
    if not (other_dir / "study.yaml").is_file() or not (other_dir / "optuna.journal").is_file():
        raise ConfigError(f"warm_start: no study '{study.warm_start}' at {other_dir} (its study.yaml and "
                          f"optuna.journal), in the same storage as this one")
    warm.check_warm_source(study, study_from_yaml((other_dir / "study.yaml").read_text(), other_dir / "study.yaml"),
                           other_dir)
    return other_dir


def resume(name: str, storage: str | None = None, address: str | None = None, verbose: bool = False,
           trust: bool = False) -> Path:
    study_dir = existing_study_dir(name, storage_for(storage))
    with durable.FolderLock(study_dir, "study folder"):  # one driver per study folder
        return _resume(name, study_dir, address, verbose, trust)


def _resume(name: str, study_dir: Path, address: str | None, verbose: bool, trust: bool) -> Path:
    study = study_from_yaml((study_dir / "study.yaml").read_text(), study_dir / "study.yaml")
    # before anything is unpickled: the state is the one this installation sealed (tune/seal.py)
    trials_saved = seal.verify(study_dir, trust, say)
    tuner.connect(address, study.resources, verbose, study_dir.parent, study.seeds)
    if not trials_saved or not ray.tune.Tuner.can_restore(str(study_dir / "tune")):
        # the driver was killed before Tune first saved its state (it saves a few seconds in):
        # no Tune trial can have got far, so the study starts over under its name; parameters
        # Optuna had drawn for it are reused (StudySearch._orphan)
        say(f"study {name} at {study_dir} was stopped before Tune saved any state: starting its trials")
        return _fit(build_tuner(study, study_dir), study, study_dir)
    say(f"resuming study {name} from {study_dir}: unfinished and errored trials continue, "
        f"finished ones are kept")
    try:
        restored = ray.tune.Tuner.restore(str(study_dir / "tune"), trainable=trainable(study, study_dir),
                                       resume_unfinished=True, resume_errored=True)
    except Exception as exc:  # sealed, so whole when sealed; read by Ray all the same
        raise ConfigError(f"study '{name}': Ray could not restore the Tune state in {study_dir / 'tune'} "
                          f"({type(exc).__name__}: {str(exc)[:300]})") from exc
    return _fit(restored, study, study_dir)


@contextlib.contextmanager
def stop_on_sigterm():
    """SIGTERM (a scheduler's stop, `kill`) stops the study as Ctrl-C does: Tune saves its state and
    returns, the trials keep their epochs. Installed once Ray runs, as Ray's core answers SIGTERM
    with a native stack dump and an abort (exit 134). Yields whether SIGTERM came; the handler
    before it is back afterwards."""
    import signal

    came = []

    def handler(signum, frame):
        came.append(signum)
        signal.raise_signal(signal.SIGINT)  # Tune's own Ctrl-C handling: save, stop, return

    try:
        before = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (an embedding program): leave it
        before = None
    try:
        yield lambda: bool(came)
    finally:
        if before is not None:
            signal.signal(signal.SIGTERM, before)


def _fit(tuner, study: Study, study_dir: Path) -> Path:
    with stop_on_sigterm() as terminated:
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
        # an interrupted study is not a finished one: `python -m tune` exits 130 for it (143: SIGTERM)
        exc = Interrupted(f"{'terminated (SIGTERM): ' if terminated() else ''}stopped after {ended} of "
                          f"{study.trials} trials ended; continue with `python -m tune resume {study.name}`")
        exc.exit_code = 143 if terminated() else 130
        raise exc
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
    return tuner.trial_function(run_trial, study.resources, seeds=study.seeds, study=study, study_dir=str(study_dir))


def searcher(study: Study, study_dir: Path) -> StudySearch:
    multi = bool(study.second_metric)
    sampler = (optuna.samplers.RandomSampler(seed=study.seed) if study.searcher == "random"
               else optuna.samplers.TPESampler(seed=study.seed))
    return StudySearch(space=functools.partial(suggest, space=study.space),
                       metric=study.metrics if multi else study.metric,
                       mode=study.modes if multi else study.mode,
                       sampler=sampler, study_name=study.name, storage=journal(study_dir),
                       max_epochs=study.max_epochs, budget=study.trials)


def build_tuner(study: Study, study_dir: Path) -> ray.tune.Tuner:
    if study.scheduler == "asha":
        # epochs, not Tune's iteration count: that restarts when a trial resumes
        scheduler = ASHAScheduler(time_attr="epoch", metric=study.metric, mode=study.mode,
                                  max_t=study.max_epochs, grace_period=study.grace_period,
                                  reduction_factor=study.reduction_factor)
    elif study.scheduler == "paired":  # trials are named by their id (tuner.build's default)
        scheduler = PairedStopping(study_dir, lambda t: t.trial_id, study.metric, study.mode, study.alpha,
                                   study.grace_period, say=tuner.say)
    else:
        scheduler = FIFOScheduler()
    progress = Progress(study.name, study.metric, study.mode, study.max_epochs, study.trials, study.scheduler)
    # every Tune checkpoint is kept (a few bytes each, see trial.to_tune): a restored state may
    # name one its dead driver had already replaced
    return tuner.build(trainable(study, study_dir), study.resources, study_dir, "tune",
                       [progress, seal.Seal(study_dir)], num_samples=study.trials,
                       search_alg=searcher(study, study_dir), scheduler=scheduler)

