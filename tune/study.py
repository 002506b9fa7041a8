"""Study files: a base config, a search space over dotted config keys, and how to search it.

Everything here is checked before Ray starts or any trial runs, and every error names the study
file and the key at fault. No Ray import: a finished study is read back with this module alone.
"""
from __future__ import annotations

import difflib
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from diffseg import config as config_mod
from diffseg.config import ConfigError

STUDY_DIR = Path(__file__).resolve().parent.parent / "experiments" / "studies"
TOP_KEYS = ("name", "base", "set", "space", "objective", "second_objective", "trials", "searcher",
            "scheduler", "resources", "concurrency", "max_failures")
KINDS = ("int", "float", "choice")


@dataclass(frozen=True)
class Param:
    """One searched key. ``when`` makes it conditional: {parent_key: [values]} or {parent_key:
    {min: a, max: b}}; while the condition fails the base config's value is used."""
    key: str
    kind: str  # int | float | choice
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()
    when: dict = field(default_factory=dict)

    def active(self, chosen: dict) -> bool:
        for parent, cond in self.when.items():
            if parent not in chosen:
                return False
            value = chosen[parent]
            if isinstance(cond, dict):
                if value < cond.get("min", value) or value > cond.get("max", value):
                    return False
            elif value not in cond:
                return False
        return True

    def endpoints(self) -> list:
        return list(self.choices) if self.kind == "choice" else [self.low, self.high]


@dataclass(frozen=True)
class Study:
    name: str
    base: str
    config: dict  # the resolved base config (every key), as a nested dict
    space: tuple[Param, ...]
    metric: str = "val_dice"
    mode: str = "max"
    second_metric: str = ""
    second_mode: str = "min"
    trials: int = 8
    searcher: str = "tpe"  # tpe | random
    seed: int = 0
    scheduler: str = "asha"  # asha | none
    grace_period: int = 1
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

    @property
    def metrics(self) -> list[str]:
        return [self.metric] + ([self.second_metric] if self.second_metric else [])

    @property
    def modes(self) -> list[str]:
        return [self.mode] + ([self.second_mode] if self.second_metric else [])

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


def _param_dict(p: Param) -> dict:
    out: dict[str, Any] = {p.kind: list(p.choices) if p.kind == "choice" else [p.low, p.high]}
    if p.log:
        out["log"] = True
    if p.step is not None:
        out["step"] = p.step
    if p.when:
        out["when"] = p.when
    return out


def load_study(name_or_path: str | Path, overrides: list[str] | dict | None = None, data_root: str = "",
               cache_dir: str = "") -> Study:
    """Read and check a study file; ``overrides`` (``key=value``) change the base config."""
    path = config_mod.resolve_shipped(name_or_path, STUDY_DIR, "study")
    data = config_mod.read_yaml(path, "study")
    try:
        return parse_study(data, overrides, source=str(path), data_root=data_root, cache_dir=cache_dir)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def parse_study(data: dict, overrides=None, source: str = "", data_root: str = "", cache_dir: str = "") -> Study:
    if not isinstance(data, dict):
        raise ConfigError("a study file must be a mapping")
    _known(data, TOP_KEYS, "study")
    base = str(data.get("base", "debug"))
    cfg = config_mod.load(base, data.get("set") or {})
    if overrides:
        cfg = config_mod.apply_overrides(cfg, overrides)
    space = parse_space(data.get("space"), cfg)
    objective = _section(data, "objective", ("metric", "mode"))
    second = _section(data, "second_objective", ("metric", "mode"))
    searcher = _section(data, "searcher", ("type", "seed"))
    scheduler = _section(data, "scheduler", ("type", "grace_period", "reduction_factor"))
    resources = _section(data, "resources", ("workers", "cpus_per_worker", "gpus_per_worker"))
    study = Study(
        name=check_name(str(data.get("name") or Path(source).stem or "study")), base=base,
        config=config_mod.to_dict(cfg), space=space,
        metric=str(objective.get("metric", "val_dice")), mode=_mode(objective.get("mode", "max"), "objective"),
        second_metric=str(second.get("metric", "")), second_mode=_mode(second.get("mode", "min"), "second_objective"),
        trials=_int(data.get("trials", 8), "trials", 1),
        searcher=_choice(searcher.get("type", "tpe"), ("tpe", "random"), "searcher.type"),
        seed=_int(searcher.get("seed", 0), "searcher.seed", 0),
        scheduler=_choice(scheduler.get("type", "asha"), ("asha", "none"), "scheduler.type"),
        grace_period=_int(scheduler.get("grace_period", 1), "scheduler.grace_period", 1),
        reduction_factor=_int(scheduler.get("reduction_factor", 2), "scheduler.reduction_factor", 2),
        workers=_int(resources.get("workers", 1), "resources.workers", 1),
        cpus_per_worker=_number(resources.get("cpus_per_worker", 1), "resources.cpus_per_worker"),
        gpus_per_worker=_number(resources.get("gpus_per_worker", 0), "resources.gpus_per_worker"),
        concurrency=_int(data.get("concurrency", 1), "concurrency", 1),
        max_failures=_int(data.get("max_failures", 1), "max_failures", 0),
        source=source, **_absolute_paths(data_root, cache_dir))
    _check_resources(study)
    for m in study.metrics:
        if not reported(m, cfg):
            raise ConfigError(f"objective metric '{m}' is not one a trial reports; use val_dice (the kept "
                              f"model's), val_dice_last, val_dice_<predictor> ({', '.join(predictors(cfg))}), "
                              f"pl_cost or epoch_s")
    if cfg.protocol == "paper" and any(m.startswith("val_") for m in study.metrics):
        raise ConfigError(f"objective '{study.metric}': under protocol=paper the trials select on the test "
                          f"split and report test_* metrics (test_dice), never val_*")
    if study.second_metric and study.second_metric == study.metric:
        raise ConfigError("second_objective.metric must differ from objective.metric")
    if study.scheduler == "asha" and study.grace_period > study.max_epochs:
        raise ConfigError(f"scheduler.grace_period = {study.grace_period} exceeds train.epochs = "
                          f"{study.max_epochs}")
    return study


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


def study_from_yaml(text: str) -> Study:
    """Read back a resolved study (the study.yaml of an experiment directory)."""
    data = yaml.safe_load(text)
    data["space"] = parse_space(data["space"], config_mod.from_dict(data["config"]))
    return Study(**data)


def parse_space(space, cfg: config_mod.Config) -> tuple[Param, ...]:
    if not space:
        raise ConfigError("'space' is empty: name at least one config key to search")
    if not isinstance(space, dict):
        raise ConfigError(f"'space' must map config keys to ranges, got {space!r}")
    keys = config_mod.to_flat(cfg)
    params: list[Param] = []
    for key, spec in space.items():
        key = str(key)
        if key not in keys:
            close = difflib.get_close_matches(key, list(keys), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"space key '{key}' is not a config key{hint}; valid keys: {', '.join(sorted(keys))}")
        if key == "name":
            raise ConfigError("space key 'name' cannot be searched: trials are named by the study")
        param = _param(key, spec, [p.key for p in params])
        _check_values(param, cfg, type(keys[key]))
        params.append(param)
    _check_when_can_hold(params)
    _check_combinations(params, cfg)
    return tuple(params)


def _values(p: Param) -> list:
    """The values a check tries: every choice, every integer of a short int range, else the ends."""
    if p.kind == "int" and p.high - p.low <= 16:
        return list(range(int(p.low), int(p.high) + 1))
    return p.endpoints()


def _check_when_can_hold(params: list[Param]) -> None:
    by_key = {p.key: p for p in params}
    for p in params:
        for parent, cond in p.when.items():
            q, parent_values = by_key[parent], _values(by_key[parent])
            if q.kind != "choice" and isinstance(cond, dict):  # a range overlapping the parent's range
                holds = cond.get("min", -math.inf) <= q.high and cond.get("max", math.inf) >= q.low
            elif isinstance(cond, dict):
                holds = any(cond.get("min", v) <= v <= cond.get("max", v) for v in parent_values)
            else:
                holds = any(v in cond for v in parent_values)
            if not holds:
                raise ConfigError(f"space '{p.key}': 'when: {{{parent}: {cond}}}' can never hold ({parent} takes "
                                  f"{_describe(by_key[parent])}), so '{p.key}' would never be searched")


def _describe(p: Param) -> str:
    return f"{list(p.choices)}" if p.kind == "choice" else f"[{p.low}, {p.high}]"


def _check_combinations(params: list[Param], cfg: config_mod.Config, limit: int = 4096) -> None:
    """Values valid alone can be invalid together (data.size 96 with a sampled model.depth 6):
    every combination of the tried values (up to ``limit``; the ends of wide ranges) must make a
    valid trial config, so a bad study is refused before its folder exists."""
    import itertools

    tried = [_values(p) for p in params]
    if math.prod(len(v) for v in tried) > limit:
        tried = [p.endpoints() if len(v) > 2 and p.kind != "choice" else v for p, v in zip(params, tried)]
    for n, combo in enumerate(itertools.product(*tried)):
        if n >= limit:
            break
        chosen: dict = {}
        for p, v in zip(params, combo):
            if p.active(chosen):
                chosen[p.key] = v
        try:
            config_mod.apply_overrides(cfg, chosen)
        except ConfigError as exc:
            raise ConfigError(f"space: the combination {chosen} makes an invalid trial: {exc}") from None


def _param(key: str, spec, earlier: list[str]) -> Param:
    if not isinstance(spec, dict):
        raise ConfigError(f"space '{key}': expected a mapping like {{int: [lo, hi]}}, "
                          f"{{float: [lo, hi], log: true}} or {{choice: [a, b]}}, got {spec!r}")
    _known(spec, KINDS + ("log", "step", "when"), f"space '{key}'")
    kinds = [k for k in KINDS if k in spec]
    if len(kinds) != 1:
        raise ConfigError(f"space '{key}': give exactly one of {', '.join(KINDS)}")
    kind, values = kinds[0], spec[kinds[0]]
    when = spec.get("when") or {}
    if not isinstance(when, dict):
        raise ConfigError(f"space '{key}': 'when' must map an earlier space key to values or {{min, max}}")
    for parent, cond in when.items():
        if parent not in earlier:
            raise ConfigError(f"space '{key}': 'when' refers to '{parent}', which must be a space key "
                              f"listed before it (earlier keys: {', '.join(earlier) or 'none'})")
        if isinstance(cond, dict):
            _known(cond, ("min", "max"), f"space '{key}' when '{parent}'")
        elif not isinstance(cond, list) or not cond:
            raise ConfigError(f"space '{key}': 'when: {{{parent}: ...}}' needs a non-empty list or {{min, max}}")
    if kind == "choice":
        if not isinstance(values, list) or not values:
            raise ConfigError(f"space '{key}': choice needs a non-empty list, got {values!r}")
        if any(not isinstance(v, (bool, int, float, str)) for v in values):
            raise ConfigError(f"space '{key}': choices must be plain numbers, strings or booleans")
        if len(set(values)) != len(values):
            raise ConfigError(f"space '{key}': choices repeat a value: {values!r}")
        return Param(key, kind, choices=tuple(values), when=when)
    if (not isinstance(values, list) or len(values) != 2
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values)):
        raise ConfigError(f"space '{key}': {kind} needs [low, high] numbers, got {values!r}")
    low, high = values
    if kind == "int" and not all(isinstance(v, int) for v in values):
        raise ConfigError(f"space '{key}': int range needs whole numbers, got {values!r}")
    if not low < high:
        raise ConfigError(f"space '{key}': empty range [{low}, {high}]; low must be below high")
    log, step = bool(spec.get("log", False)), spec.get("step")
    if log and low <= 0:
        raise ConfigError(f"space '{key}': a log range must start above 0, got {low}")
    if step is not None and (log or not isinstance(step, (int, float)) or step <= 0):
        raise ConfigError(f"space '{key}': step must be a positive number and cannot be used with log")
    return Param(key, kind, float(low) if kind == "float" else low, float(high) if kind == "float" else high,
                 log, step, when=when)


def _check_values(param: Param, cfg: config_mod.Config, typ: type) -> None:
    """Every endpoint or choice must be a valid value of the key on the base config."""
    if param.kind == "float" and typ is not float:
        raise ConfigError(f"space '{param.key}': the config key holds {typ.__name__} values, "
                          f"so a float range does not fit (use int or choice)")
    if param.kind == "int" and typ not in (int, float):
        raise ConfigError(f"space '{param.key}': the config key holds {typ.__name__} values, "
                          f"so an int range does not fit (use choice)")
    for value in param.endpoints():
        if param.kind == "choice" and typ is not str and isinstance(value, str):
            raise ConfigError(f"space '{param.key}': choice {value!r} is a string but the key holds "
                              f"{typ.__name__} values")
        try:
            config_mod.apply_overrides(cfg, {param.key: value})
        except ConfigError as exc:
            raise ConfigError(f"space '{param.key}': value {value!r} is not valid: {exc}") from None


def _absolute_paths(root: str, cache: str) -> dict:
    """Where trials find the data and the cache: what the command line gave, made absolute, or
    empty, and then each node resolves it from its own environment ($DIFFSEG_DATA,
    $DIFFSEG_CACHE; a job's runtime environment sets them), never from the driver's."""
    return {"data_root": str(Path(root).expanduser().resolve()) if root else "",
            "cache_dir": str(Path(cache).expanduser().resolve()) if cache else ""}


def _check_resources(study: Study) -> None:
    if study.cpus_per_worker <= 0 and study.gpus_per_worker <= 0:
        raise ConfigError("resources: a worker needs cpus_per_worker > 0 or gpus_per_worker > 0")
    g = study.gpus_per_worker
    if g < 0 or study.cpus_per_worker < 0:
        raise ConfigError("resources: cpus_per_worker and gpus_per_worker must be >= 0")
    if g and g != int(g) and (study.workers > 1 or g > 1):
        raise ConfigError(f"resources.gpus_per_worker = {g}: fractions are allowed only below 1 and only "
                          f"for single-worker trials (workers = {study.workers})")


def _known(data: dict, allowed: tuple, where: str) -> None:
    for key in data:
        if key not in allowed:
            raise ConfigError(f"unknown key '{key}' in {where}; valid keys: {', '.join(allowed)}")


def _section(data: dict, name: str, allowed: tuple) -> dict:
    section = data.get(name) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"'{name}' must be a mapping with keys {', '.join(allowed)}")
    _known(section, allowed, f"'{name}'")
    return section


def _mode(value, where: str) -> str:
    return _choice(value, ("max", "min"), f"{where}.mode")


def _choice(value, allowed: tuple, where: str) -> str:
    if value not in allowed:
        raise ConfigError(f"'{where}' = {value!r}; choose one of {', '.join(allowed)}")
    return value


def _int(value, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"'{where}' must be a whole number >= {minimum}, got {value!r}")
    return value


def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"'{where}' must be a number, got {value!r}")
    return float(value)


def suggest(trial, space: tuple[Param, ...]) -> None:
    """Define-by-run search space for Optuna: samples in file order, skipping inactive params.
    Does no computation, as OptunaSearch requires."""
    chosen: dict = {}
    for p in space:
        if not p.active(chosen):
            continue
        if p.kind == "choice":
            chosen[p.key] = trial.suggest_categorical(p.key, list(p.choices))
        elif p.kind == "int":
            chosen[p.key] = trial.suggest_int(p.key, p.low, p.high, log=p.log, step=int(p.step or 1))
        else:
            chosen[p.key] = trial.suggest_float(p.key, p.low, p.high, log=p.log, step=p.step)
    return None
