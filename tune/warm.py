"""Warm starts of a study's searcher: the base config's own values as its first trial
(``enqueue: base``), and the finished trials of another study whose space agrees
(``warm_start: NAME``), so TPE starts informed. Both are written into the study's Optuna
journal once, when the study starts; a resumed study has them already."""
from __future__ import annotations

from pathlib import Path

import optuna

from diffseg.config import ConfigError, to_flat

from .space import Param, _param_dict

WARM = "warm_start"  # the user attribute of a trial copied from another study (never a Tune trial)


def base_point(study) -> dict:
    """The searched keys at the base config's values, conditional ones only where active; a
    value outside its range is refused naming the key."""
    flat, chosen = to_flat(study.base_config()), {}
    for p in study.space:
        if not p.active(chosen):
            continue
        value = flat[p.key]
        inside = value in p.choices if p.kind == "choice" else p.low <= value <= p.high
        if not inside:
            where = list(p.choices) if p.kind == "choice" else f"[{p.low}, {p.high}]"
            raise ConfigError(f"enqueue: base: the base config's {p.key} = {value!r} lies outside the space {where}; "
                              f"widen the range or drop 'enqueue'")
        chosen[p.key] = value
    return chosen


def signature(space: tuple[Param, ...]) -> dict:
    return {p.key: _param_dict(p) for p in space}


def check_warm_source(study, other, other_dir: Path) -> None:
    """Another study may warm-start this one only when its values mean the same."""
    mine, theirs = signature(study.space), signature(other.space)
    differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    if differ:
        k = differ[0]
        raise ConfigError(f"warm_start: {other.name} ({other_dir}) searched another space: {k} is "
                          f"{theirs.get(k, 'not searched')} there and {mine.get(k, 'not searched')} here")
    if (other.metrics, other.modes) != (study.metrics, study.modes):
        raise ConfigError(f"warm_start: {other.name} optimised {other.metrics} ({other.modes}); this study "
                          f"{study.metrics} ({study.modes}): their values are not comparable")


def seed_journal(study, storage, other_storage=None) -> list[str]:
    """Write the warm start into the study's (new) Optuna study; returns what was done, to say."""
    directions = ["maximize" if m == "max" else "minimize" for m in study.modes]
    ot = optuna.create_study(study_name=study.name, storage=storage, directions=directions, load_if_exists=True)
    said = []
    if study.warm_start and other_storage is not None:
        other = optuna.load_study(study_name=study.warm_start, storage=other_storage)
        done = [t for t in other.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
        for t in done:
            ot.add_trial(optuna.trial.create_trial(params=t.params, distributions=t.distributions, values=t.values,
                                                   user_attrs={WARM: study.warm_start}))
        said.append(f"warm start: {len(done)} finished trials of study {study.warm_start}")
    if study.enqueue == "base":
        point = base_point(study)
        ot.enqueue_trial(point)
        said.append("first trial: the base config's own values (" + ", ".join(f"{k}={v}" for k, v in point.items()) + ")")
    return said
