"""Warm starts of a study (tune/warm.py): `enqueue: base` runs the base config's own values first,
`warm_start: OTHER` adds another study's finished trials to the searcher (not to the budget), and
a study whose space disagrees is refused with the reason, before anything is written."""
import optuna
import pytest

from diffseg.config import ConfigError
from factories import write_study
from tune import driver
from tune.study import load_study
from tune.warm import WARM

SPACE = {"diffusion_cps.loss.cps": {"float": [0.1, 2.0], "log": True}, "diffusion_cps.rounds": {"int": [1, 2]}}


def test_enqueue_base_outside_the_space_is_refused_naming_the_key(tmp_path):
    path = write_study(tmp_path / "s.yaml", space={"diffusion_cps.rounds": {"int": [2, 3]}}, enqueue="base")
    with pytest.raises(ConfigError, match=r"diffusion_cps.rounds = 1 lies outside the space \[2, 3\]"):
        load_study(str(path))


@pytest.mark.ray
def test_base_values_run_first_and_a_second_study_starts_from_the_first(ray_cluster, tmp_path):
    storage = tmp_path / "studies"
    first = write_study(tmp_path / "first.yaml", space=SPACE, enqueue="base", trials=2, concurrency=1,
                        set={"train.epochs": 1})
    study_dir = driver.search(str(first), storage=str(storage))
    ot = optuna.load_study(study_name="first", storage=driver.journal(study_dir))
    trials = sorted(ot.get_trials(), key=lambda t: t.number)
    base = load_study(str(first)).base_config()
    assert trials[0].params == {"diffusion_cps.loss.cps": base.diffusion_cps.loss.cps, "diffusion_cps.rounds": 1}
    assert "tune_trial_id" in trials[0].user_attrs and len(trials) == 2
    bad = write_study(tmp_path / "bad.yaml", space={"diffusion_cps.rounds": {"int": [1, 3]}}, warm_start="first",
                      trials=1, set={"train.epochs": 1})
    with pytest.raises(ConfigError, match=r"warm_start: first .* diffusion_cps.loss.cps is .* there and not searched here"):
        driver.search(str(bad), storage=str(storage))
    assert not (storage / "bad").exists()
    second = write_study(tmp_path / "second.yaml", space=SPACE, warm_start="first", trials=1, concurrency=1,
                         set={"train.epochs": 1})
    second_dir = driver.search(str(second), storage=str(storage))
    ot2 = optuna.load_study(study_name="second", storage=driver.journal(second_dir))
    copied = [t for t in ot2.get_trials() if WARM in t.user_attrs]
    own = [t for t in ot2.get_trials() if "tune_trial_id" in t.user_attrs]
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(copied) == len(complete) and len(own) == 1  # the budget counts this study's own trials
    assert sorted(t.values[0] for t in copied) == sorted(t.values[0] for t in complete)
