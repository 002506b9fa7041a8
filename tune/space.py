"""A study's search space: dotted config keys with int, float or choice ranges, some of them
conditional (``when``), checked against the base config before anything runs, and sampled
define-by-run for Optuna (``suggest``). No Ray import."""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from typing import Any

from diffseg import config as config_mod
from diffseg.config import ConfigError

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


def _param_dict(p: Param) -> dict:
    out: dict[str, Any] = {p.kind: list(p.choices) if p.kind == "choice" else [p.low, p.high]}
    if p.log:
        out["log"] = True
    if p.step is not None:
        out["step"] = p.step
    if p.when:
        out["when"] = p.when
    return out


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


def _known(data: dict, allowed: tuple, where: str) -> None:
    for key in data:
        if key not in allowed:
            raise ConfigError(f"unknown key '{key}' in {where}; valid keys: {', '.join(allowed)}")


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
