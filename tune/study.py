"""Study files: a base config, a search space over dotted config keys, and how to search it. A
study file may start from another (``base: OTHER_STUDY``) and change only what differs.

Everything here is checked before Ray starts or any trial runs, and every error names the study
file and the key at fault. No Ray import: a finished study is read back with this module alone.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from diffseg import config as config_mod
from diffseg import schema
from diffseg.config import ConfigError
from diffseg.schema import spec

from .resources import Resources, TrialSetup, WorkerSection
from .space import Param, _param_dict, parse_space, suggest  # noqa: F401 (suggest re-exported)

STUDY_DIR = Path(__file__).resolve().parent.parent / "experiments" / "studies"


@dataclass(frozen=True)
class Study:
    name: str
    base: str  # the base config's name or file, as the study file's 'config' gave it
    config: dict  # the resolved base config (every key), as a nested dict
    space: tuple[Param, ...]
    metric: str = "val_dice"
    mode: str = "max"
    second_metric: str = ""
    second_mode: str = "min"
    trials: int = 8
    searcher: str = "tpe"  # tpe | random
    seed: int = 0
    scheduler: str = "asha"  # asha | paired | none
    grace_period: int = 1
    alpha: float = 0.05  # the paired scheduler's significance level
    reduction_factor: int = 2
    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    concurrency: int = 1
    max_failures: int = 1
    source: str = ""  # the file it was read from
    # where the trials find the data and the cache: not part of the config (see diffseg.config.MOVED)
    data_root: str = ""
    cache_dir: str = ""
    enqueue: str = ""  # "base": the first trial runs the base config's own values (tune/warm.py)
    warm_start: str = ""  # another study (a name in the same storage) whose finished trials TPE starts from
    seeds: int = 1  # each trial trains its configuration with this many seeds and reports their mean (tune/group.py)

    @property
    def metrics(self) -> list[str]:
        return [self.metric] + ([self.second_metric] if self.second_metric else [])

    @property
    def modes(self) -> list[str]:
        return [self.mode] + ([self.second_mode] if self.second_metric else [])

    @property
    def resources(self) -> Resources:
        return Resources(self.workers, self.cpus_per_worker, self.gpus_per_worker, self.concurrency, self.max_failures)

    def setup(self) -> TrialSetup:
        """What each trial runs with (the benchmark grid builds the same for its cells)."""
        return TrialSetup(self.resources, dict(zip(self.metrics, self.modes)), self.data_root, self.cache_dir,
                          self.seeds)

    @property
    def max_epochs(self) -> int:
        return int(self.config["train"]["epochs"])

    def base_config(self) -> config_mod.Config:
        return config_mod.from_dict(self.config)

    def trial_config(self, params: dict, name: str) -> config_mod.Config:
        return config_mod.apply_overrides(self.base_config(), dict(params) | {"name": name})

    def to_yaml(self) -> str:
        data = asdict(self)
        data["space"] = {p.key: _param_dict(p) for p in self.space}
        return yaml.safe_dump(data, sort_keys=False)


def load_study(name_or_path: str | Path, overrides: list[str] | dict | None = None, data_root: str = "",
               cache_dir: str = "", dataset: str | None = None) -> Study:
    """Read and check a study file; ``overrides`` (``key=value``) change the base config;
    ``dataset`` picks one of a file that covers several (``datasets:``)."""
    path, data = _read(name_or_path)
    try:
        return parse_study(data, overrides, source=str(path), data_root=data_root, cache_dir=cache_dir,
                           dataset=dataset)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _read(name_or_path: str | Path) -> tuple[Path, dict]:
    try:
        return schema.read_inherited(name_or_path, STUDY_DIR, "study", merge_studies)
    except ConfigError as exc:
        path = Path(name_or_path)
        base = _base_of(path if path.is_file() else STUDY_DIR / f"{name_or_path}.yaml")
        if base is not None and "not found" in str(exc) and _is_config(base):
            # before study files could inherit, 'base' named the base config: say where it went
            raise ConfigError(f"study key 'base' names a parent study file, and {base!r} is none; "
                              f"{base!r} is a config: write 'config: {base}'") from None
        raise


def _base_of(path: Path):
    try:
        return schema.read_yaml(path, "study").get("base")
    except ConfigError:
        return None


def _is_config(name) -> bool:
    try:
        schema.resolve_shipped(str(name), config_mod.CONFIG_DIR, "config")
        return True
    except ConfigError:
        return False


def merge_studies(parent: dict, child: dict) -> dict:
    """A study file over its base: sections merge key by key, but a search-space entry or a dataset
    is replaced whole, and ``KEY: null`` under ``space`` or ``datasets`` drops the parent's entry.
    A child naming ``config`` drops the parent's ``datasets``, and the other way round."""
    out = schema.deep_merge({k: v for k, v in parent.items() if k not in ("space", "datasets")},
                            {k: v for k, v in child.items() if k not in ("space", "datasets")})
    for key in ("space", "datasets"):
        merged = {**(parent.get(key) or {}), **(child.get(key) or {})}
        merged = {k: v for k, v in merged.items() if v is not None}
        if merged:
            out[key] = merged
    if "config" in child:
        out.pop("datasets", None)
    elif child.get("datasets"):
        out.pop("config", None)
    return out


@dataclass(frozen=True)
class Objective:
    metric: str = "val_dice"
    mode: str = spec("max", choices=("max", "min"))


@dataclass(frozen=True)
class SecondObjective:
    metric: str = ""  # empty: a single-objective study
    mode: str = spec("min", choices=("max", "min"))


@dataclass(frozen=True)
class Searcher:
    type: str = spec("tpe", choices=("tpe", "random"))  # Optuna TPE (seeded), or random search (the control)
    seed: int = spec(0, low=0)


@dataclass(frozen=True)
class Scheduler:
    type: str = spec("asha", choices=("asha", "paired", "none"))  # paired: tune/paired.py
    grace_period: int = spec(1, low=1)  # epochs before the scheduler may stop a trial
    reduction_factor: int = spec(2, low=2)  # ASHA's
    alpha: float = spec(0.05, above=0, high=0.5)  # paired's: stop when the one-sided Wilcoxon p is below


@dataclass(frozen=True)
class StudyFile:
    """A study file as written; ``parse_study`` resolves it into a ``Study``."""
    name: str = ""  # default: the file's name
    config: str = "debug"  # the base config: a config file or a shipped config name
    # or several datasets, each with its base config: the file is then one study per dataset,
    # named <name>-<dataset> and chosen with --dataset (as a benchmark file covers several)
    datasets: dict = field(default_factory=dict)
    set: dict = field(default_factory=dict)  # changes to the base config, dotted keys
    space: dict = field(default_factory=dict)  # dotted config key -> range (tune/space.py)
    # per-method spaces, added to ``space`` for a base config of that method: {METHOD: {space:
    # {...}}}; what a benchmark's ``tune:`` gives each method (its own study, its own keys)
    methods: dict = field(default_factory=dict)
    objective: Objective = field(default_factory=Objective)
    second_objective: SecondObjective = field(default_factory=SecondObjective)
    trials: int = spec(8, low=1)
    searcher: Searcher = field(default_factory=Searcher)
    scheduler: Scheduler = field(default_factory=Scheduler)
    resources: WorkerSection = field(default_factory=WorkerSection)
    concurrency: int = spec(1, low=1)  # trials at once
    max_failures: int = spec(1, low=0)  # restarts of a failed trial's workers (tuner.trial_restarts)
    # "base": the first trial runs the base config's own values of the searched keys (for the
    # paper's method, with the paper's config: the paper's settings), before the searcher draws
    enqueue: str = spec("", choices=("", "base"))
    warm_start: str = ""  # a finished study in the same storage: its trials inform the searcher first
    # seeds per trial: each trial trains its configuration with seed + i and data.split_seed + i
    # (i < seeds) side by side, and the searcher and the scheduler see the mean (tune/group.py)
    seeds: int = spec(1, low=1, high=16)


def parse_study(data: dict, overrides=None, source: str = "", data_root: str = "", cache_dir: str = "",
                dataset: str | None = None) -> Study:
    if not isinstance(data, dict):
        raise ConfigError("a study file must be a mapping")
    f = schema.build(StudyFile, {k: ({} if v is None and k in ("set", "space") else v) for k, v in data.items()},
                     noun="study key")
    base, name = _base_and_name(f, "config" in data, str(f.name or Path(source).stem or "study"), dataset)
    cfg = config_mod.load(base, f.set)
    if overrides:
        cfg = config_mod.apply_overrides(cfg, overrides)
    space = parse_space(method_space(data.get("space"), f.methods, cfg.method), cfg)
    f.resources.with_trials(f.concurrency, f.max_failures)  # checked
    study = Study(
        name=check_name(name), base=base,
        config=config_mod.to_dict(cfg), space=space, metric=f.objective.metric, mode=f.objective.mode,
        second_metric=f.second_objective.metric, second_mode=f.second_objective.mode, trials=f.trials,
        searcher=f.searcher.type, seed=f.searcher.seed, scheduler=f.scheduler.type,
        grace_period=f.scheduler.grace_period, reduction_factor=f.scheduler.reduction_factor,
        alpha=f.scheduler.alpha,
        workers=f.resources.workers, cpus_per_worker=f.resources.cpus_per_worker,
        gpus_per_worker=f.resources.gpus_per_worker, concurrency=f.concurrency, max_failures=f.max_failures,
        source=source, **_absolute_paths(data_root, cache_dir), enqueue=f.enqueue,
        warm_start=check_name(f.warm_start) if f.warm_start else "", seeds=f.seeds)
    for m in study.metrics:
        if not reported(m, cfg):
            raise ConfigError(f"objective metric '{m}' is not one a trial reports; use val_dice (the kept "
                              f"model's), val_dice_last, val_dice_<predictor> ({', '.join(predictors(cfg))}), "
                              f"pl_cost or epoch_s")
    if cfg.protocol == "paper" and any(m.startswith("val_") for m in study.metrics):
        raise ConfigError(f"objective '{study.metric}': under protocol=paper the trials select on the test "
                          f"split and report test_* metrics (test_dice), never val_*")
    if study.enqueue == "base":
        from .warm import base_point

        base_point(study)  # refused now when the base values lie outside the space
    if study.second_metric and study.second_metric == study.metric:
        raise ConfigError("second_objective.metric must differ from objective.metric")
    if study.scheduler == "paired" and (study.metric != "val_dice" or study.second_metric):
        raise ConfigError(f"scheduler.type = paired compares the kept models' Dice per validation image, so it "
                          f"needs the single objective val_dice (this study: {', '.join(study.metrics)}); "
                          f"use asha or none")
    if study.scheduler == "paired" and any(p.key == "data.split_seed" for p in study.space):
        raise ConfigError("scheduler.type = paired pairs trials image by image on one validation split; a "
                          "searched data.split_seed gives each trial other images: use asha, or drop it from the space")
    if study.seeds > 1:
        check_seed_group(study)
    if study.scheduler != "none" and study.grace_period > study.max_epochs:
        raise ConfigError(f"scheduler.grace_period = {study.grace_period} exceeds train.epochs = "
                          f"{study.max_epochs}")
    return study


def method_space(space: dict | None, methods: dict, method: str) -> dict | None:
    """The study's space for a base config of ``method``: the common ``space`` and the
    ``methods`` section's entry for it (its keys win)."""
    from diffseg.methods import METHODS

    for name, entry in methods.items():
        if name not in METHODS:
            raise ConfigError(f"methods: '{name}' is not a method ({', '.join(METHODS)})")
        if not isinstance(entry, dict) or set(entry) - {"space"}:
            raise ConfigError(f"methods.{name} must be a mapping with one key, space (got {entry!r})")
    own = (methods.get(method) or {}).get("space") or {}
    if not isinstance(own, dict):
        raise ConfigError(f"methods.{method}.space must map dotted config keys to ranges")
    return {**(space or {}), **own} if space or own else space


def check_seed_group(study: Study) -> None:
    """What a study of ``seeds`` > 1 cannot do, refused with the way out."""
    from .group import SEED_KEYS

    searched = [p.key for p in study.space if p.key in SEED_KEYS]
    if searched:
        raise ConfigError(f"seeds = {study.seeds}: the space searches {', '.join(searched)}, which each seed of a "
                          f"group sets itself (seed + i, data.split_seed + i); drop it from the space")
    if study.scheduler == "paired":
        raise ConfigError(f"seeds = {study.seeds} with scheduler.type = paired: the seeds of a group validate on "
                          f"different images, so trials cannot be paired image by image; use asha or none")
    if study.workers > 1:
        raise ConfigError(f"seeds = {study.seeds} with resources.workers = {study.workers}: each seed of a group "
                          f"trains as a one-worker run; set workers: 1 (the seeds already run side by side)")


def _base_and_name(f: StudyFile, base_given: bool, name: str, dataset: str | None) -> tuple[str, str]:
    """The base config and the study name: the file's own, or those of one of its datasets."""
    if not f.datasets:
        if dataset is not None:
            raise ConfigError(f"--dataset {dataset}: this study file names no 'datasets' (its base config is "
                              f"{f.config}); change the dataset with --set data.dataset={dataset}")
        return f.config, name
    if base_given:
        raise ConfigError("give either 'config' or 'datasets' (each dataset with its base config), not both")
    if dataset is None and len(f.datasets) > 1:
        raise ConfigError(f"this study file covers datasets {', '.join(f.datasets)}: choose one with --dataset NAME")
    dataset = dataset if dataset is not None else next(iter(f.datasets))
    if dataset not in f.datasets:
        raise ConfigError(f"--dataset {dataset!r}: this study file covers {', '.join(f.datasets)}")
    return str(f.datasets[dataset]), f"{name}-{dataset}"


def predictors(cfg) -> tuple[str, ...]:
    from diffseg.methods import method_class

    return method_class(cfg.method).predictors


def reported(metric: str, cfg) -> bool:
    """Whether every epoch's report of a trial on ``cfg`` carries ``metric`` (see Loop.validate)."""
    names = {"pl_cost", "epoch_s", "lr", "loss"}
    for split in ("val", "test"):
        names |= {f"{split}_dice", f"{split}_dice_last", f"{split}_dice_all_foreground"}
        names |= {f"{split}_{what}_{p}" for p in predictors(cfg) for what in ("dice", "threshold")}
    return metric in names


def check_name(name: str) -> str:
    """A study name becomes a folder and an Optuna study name: keep it plain."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ConfigError(f"study name {name!r} must be letters, digits, '.', '_' or '-' "
                          f"(it names the study's folder)")
    return name


def study_from_yaml(text: str, source: str | Path = "study.yaml") -> Study:
    """Read back a resolved study (the study.yaml of an experiment directory); a damaged one is
    named, not a KeyError."""
    try:
        data = yaml.safe_load(text)
        missing = {"space", "config", "name"} - set(data) if isinstance(data, dict) else {"a mapping"}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} is damaged (not YAML: {str(exc)[:200]})") from None
    if missing:
        raise ConfigError(f"{source} is damaged (it lacks {', '.join(sorted(missing))}): the study cannot be "
                          f"resumed or reported from it")
    data["space"] = parse_space(data["space"], config_mod.from_stored(data["config"], str(source)))
    try:
        return Study(**data)
    except TypeError as exc:
        raise ConfigError(f"{source} is damaged ({exc})") from None


def _absolute_paths(root: str, cache: str) -> dict:
    """Where trials find the data and the cache: what the command line gave, made absolute, or
    empty, and then each node resolves it from its own environment ($DIFFSEG_DATA,
    $DIFFSEG_CACHE; a job's runtime environment sets them), never from the driver's."""
    return {"data_root": str(Path(root).expanduser().resolve()) if root else "",
            "cache_dir": str(Path(cache).expanduser().resolve()) if cache else ""}
