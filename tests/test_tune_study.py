"""Study files, the searcher's pruned trials and stage-1 sharing: no Ray cluster needed."""
import multiprocessing
import time

import optuna
import pytest
import yaml

from diffseg import config
from diffseg.config import ConfigError
from tune import cli
from diffseg.methods import stage1_key
from tune.stage1 import SharedPretrained
from tune.study import load_study, parse_study, study_from_yaml

GOOD = {
    "config": "debug",
    "set": {"train.epochs": 3},
    "space": {"diffusion_cps.rounds": {"int": [1, 3]},
              "diffusion_cps.round_mode": {"choice": ["independent", "chained"], "when": {"diffusion_cps.rounds": {"min": 2}}},
              "diffusion_cps.loss.cps": {"float": [0.1, 2.0], "log": True},
              "diffusion_cps.diffusion.sample_steps": {"choice": [1, 2]}},
    "trials": 4,
}


def study_with(**changes):
    data = yaml.safe_load(yaml.safe_dump(GOOD, sort_keys=False))
    data.update(changes)
    return data


def test_good_study_round_trips_through_its_resolved_file():
    study = parse_study(study_with(), source="x.yaml")
    assert study.max_epochs == 3 and study.metric == "val_dice" and study.scheduler == "asha"
    assert study.data_root == "" and study.cache_dir == ""  # each node resolves them from its environment
    assert parse_study(study_with(), data_root="rel/data").data_root.startswith("/")
    assert "root" not in study.config["data"]  # where data lives is not a hyperparameter
    again = study_from_yaml(study.to_yaml())
    assert again == study
    assert again.trial_config({"diffusion_cps.rounds": 2}, "t1").diffusion_cps.rounds == 2


@pytest.mark.parametrize("space, words", [
    ({"diffusion.stepz": {"int": [10, 20]}}, ["diffusion.stepz", "did you mean diffusion_cps.diffusion.steps"]),
    ({"diffusion_cps.rounds": {"int": [3, 3]}}, ["diffusion_cps.rounds", "empty range"]),
    ({"diffusion_cps.loss.cps": {"float": [2.0, 0.5]}}, ["diffusion_cps.loss.cps", "empty range"]),
    ({"diffusion_cps.round_mode": {"choice": []}}, ["diffusion_cps.round_mode", "non-empty"]),
    ({"diffusion_cps.diffusion.steps": {"float": [10.0, 20.0]}}, ["diffusion_cps.diffusion.steps", "holds int", "float range"]),
    ({"diffusion_cps.round_mode": {"int": [1, 2]}}, ["diffusion_cps.round_mode", "holds str"]),
    ({"diffusion_cps.rounds": {"choice": ["two", 3]}}, ["diffusion_cps.rounds", "'two'"]),
    ({"diffusion_cps.round_mode": {"choice": ["independent", "sideways"]}}, ["diffusion_cps.round_mode", "sideways"]),
    ({"diffusion_cps.diffusion.start_t": {"int": [0, 500]}}, ["diffusion_cps.diffusion.start_t", "500"]),  # beyond the base T
    ({"diffusion_cps.loss.cps": {"float": [0.0, 1.0], "log": True}}, ["diffusion_cps.loss.cps", "log range"]),
    ({"diffusion_cps.round_mode": {"choice": ["chained"], "when": {"diffusion_cps.rounds": [2]}}}, ["diffusion_cps.round_mode", "when", "rounds"]),
    ({"diffusion_cps.rounds": [1, 2]}, ["diffusion_cps.rounds", "mapping"]),
    ({}, ["space", "empty"]),
])
def test_bad_search_space_names_the_key(space, words):
    with pytest.raises(ConfigError) as err:
        parse_study(study_with(space=space))
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize("changes, words", [
    ({"trails": 4}, ["trails", "valid keys"]),
    ({"searcher": {"type": "grid"}}, ["searcher.type", "grid"]),
    ({"scheduler": {"type": "asha", "grace_period": 5}}, ["grace_period", "train.epochs"]),
    ({"resources": {"workers": 2, "gpus_per_worker": 0.5}}, ["fractions", "single-worker"]),
    ({"trials": 0}, ["trials"]),
    ({"set": {"train.epoch": 3}}, ["train.epoch"]),
    ({"name": "../escape"}, ["../escape", "folder"]),
])
def test_bad_study_settings_are_named(changes, words):
    with pytest.raises(ConfigError) as err:
        parse_study(study_with(**changes))
    for word in words:
        assert word in str(err.value)


def test_bad_study_file_fails_before_anything_is_written(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(study_with(space={"loss.cpz": {"float": [0.1, 1.0]}}), sort_keys=False))
    storage = tmp_path / "studies"
    assert cli.main(["search", str(bad), "--storage", str(storage)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "loss.cpz" in err
    assert not storage.exists()


def test_shipped_studies_are_valid():
    shipped = [("smoke", None), ("la", None)] + [("paper", d) for d in ("glas", "ph2", "drive", "hmeps")]
    for name, dataset in shipped:
        study = load_study(name, dataset=dataset)
        assert study.name == (f"paper-{dataset}" if dataset else name)
        assert study.base_config().data.dataset == (dataset or study.base_config().data.dataset)
        keys = {p.key for p in study.space}
        assert {"diffusion_cps.diffusion.steps", "diffusion_cps.diffusion.sample_steps", "diffusion_cps.rounds", "diffusion_cps.round_mode"} <= keys, name
        assert any(k.startswith("diffusion_cps.loss.") for k in keys), name


def test_searcher_tells_optuna_pruned_for_trials_stopped_early():
    from tune.searcher import StudySearch
    from tune.study import suggest
    import functools

    study = parse_study(study_with())
    storage = optuna.storages.InMemoryStorage()
    search = StudySearch(space=functools.partial(suggest, space=study.space), metric="val_dice", mode="max",
                         sampler=optuna.samplers.TPESampler(seed=0), study_name="t", storage=storage, max_epochs=3)
    for tid in ("a", "b", "c"):
        params = search.suggest(tid)
        assert set(params) >= {"diffusion_cps.rounds", "diffusion_cps.loss.cps"}
        # the conditional parameter
        assert ("diffusion_cps.round_mode" in params) == (params["diffusion_cps.rounds"] >= 2)
    search.on_trial_result("a", {"val_dice": 0.5, "epoch": 1})
    search.on_trial_complete("a", {"val_dice": 0.5, "epoch": 1})  # stopped by the scheduler
    search.on_trial_result("b", {"val_dice": 0.7, "epoch": 3})
    search.on_trial_complete("b", {"val_dice": 0.7, "epoch": 3})
    search.on_trial_complete("c", None, error=True)
    trials = {t.user_attrs["tune_trial_id"]: t for t in optuna.load_study(study_name="t", storage=storage).get_trials()}
    assert trials["a"].state.name == "PRUNED" and trials["a"].intermediate_values == {1: 0.5}
    assert trials["b"].state.name == "COMPLETE" and trials["b"].value == 0.7
    assert trials["c"].state.name == "FAIL"


ONE = {"workers": 1, "device": "cpu", "amp": False}


def test_stage1_key_depends_only_on_stage1_keys():
    cfg = config.load("debug")
    same = config.apply_overrides(cfg, {"diffusion_cps.rounds": 3, "diffusion_cps.loss.cps": 0.2, "train.lr": 0.1, "diffusion_cps.diffusion.sample_steps": 5,
                                        "data.labeled_ratio": 0.5})
    other = config.apply_overrides(cfg, {"diffusion_cps.diffusion.steps": 200})
    assert stage1_key(cfg, ONE) == stage1_key(same, ONE)
    assert stage1_key(cfg, ONE) != stage1_key(other, ONE) and stage1_key(cfg, ONE) != stage1_key(cfg, ONE | {"workers": 2})


def _claim_and_publish(study_dir, hold_s, queue):
    shared = SharedPretrained(study_dir, config.load("debug"), ONE)
    t0 = time.time()
    reused = shared.claim(print)
    waited = time.time() - t0
    if not reused:
        (study_dir / "claimed").touch()  # the test starts the second trial only now
        time.sleep(hold_s)  # "pretraining"
        src = study_dir / f"teacher-{hold_s}.pt"
        src.write_bytes(b"weights")
        shared.publish(src)
    queue.put((reused, waited, time.time()))


def test_shared_teacher_is_made_once_by_concurrent_trials(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    first = ctx.Process(target=_claim_and_publish, args=(tmp_path, 2.0, queue))
    first.start()
    deadline = time.time() + 60
    while not (tmp_path / "claimed").exists():  # the second arrives while the first pretrains
        assert time.time() < deadline and first.is_alive(), "the first trial never claimed"
        time.sleep(0.05)
    second = ctx.Process(target=_claim_and_publish, args=(tmp_path, 0.0, queue))
    second.start()
    results = sorted([queue.get(timeout=60), queue.get(timeout=60)])
    first.join(10)
    second.join(10)
    assert [r[0] for r in results] == [False, True]  # one pretrained, one reused
    published = (tmp_path / "teacher-2.0.pt").stat().st_mtime
    assert results[1][2] >= published  # the reuser went on only once the publisher had published
    assert list((tmp_path / "pretrained").glob("*.pt"))[0].read_bytes() == b"weights"


def test_two_objective_study_searches_and_reports_a_pareto_front():
    import functools

    from tune.report import _pareto
    from tune.searcher import StudySearch
    from tune.study import suggest

    study = parse_study(study_with(second_objective={"metric": "pl_cost", "mode": "min"}))
    assert study.metrics == ["val_dice", "pl_cost"] and study.modes == ["max", "min"]
    storage = optuna.storages.InMemoryStorage()
    search = StudySearch(space=functools.partial(suggest, space=study.space), metric=study.metrics,
                         mode=study.modes, sampler=optuna.samplers.TPESampler(seed=0), study_name="m",
                         storage=storage, max_epochs=3)
    for tid in ("a", "b"):
        search.suggest(tid)
    search.on_trial_result("a", {"val_dice": 0.5, "pl_cost": 3, "epoch": 1})
    search.on_trial_complete("a", {"val_dice": 0.5, "pl_cost": 3, "epoch": 1})
    search.on_trial_complete("b", {"val_dice": 0.8, "pl_cost": 8, "epoch": 3})
    states = {t.user_attrs["tune_trial_id"]: t for t in optuna.load_study(study_name="m", storage=storage).get_trials()}
    assert states["a"].state.name == "PRUNED" and states["b"].values == [0.8, 8]
    rows = [{"trial_id": t, "state": "COMPLETE", "metrics": {"val_dice": d, "pl_cost": c}}
            for t, d, c in (("cheap", 0.7, 3), ("good", 0.8, 8), ("worse", 0.6, 8))]
    front = "\n".join(_pareto(study, rows))
    assert "cheap" in front and "good" in front and "worse" not in front


def test_a_study_file_covers_several_datasets_one_study_each():
    multi = {k: v for k, v in study_with().items() if k != "config"} | {"datasets": {"synthetic": "debug",
                                                                                   "glas": "glas"}}
    with pytest.raises(ConfigError, match="covers datasets synthetic, glas: choose one with --dataset"):
        parse_study(multi)
    study = parse_study(multi, dataset="synthetic", source="multi.yaml")
    assert study.name == "multi-synthetic" and study.base == "debug"
    assert parse_study(multi, dataset="glas").base_config().data.dataset == "glas"
    with pytest.raises(ConfigError, match="--dataset 'ph2': this study file covers synthetic, glas"):
        parse_study(multi, dataset="ph2")
    with pytest.raises(ConfigError, match="either 'config' or 'datasets'"):
        parse_study(multi | {"config": "debug"}, dataset="glas")
    with pytest.raises(ConfigError, match="names no 'datasets'"):
        parse_study(study_with(), dataset="glas")


def test_a_study_file_inherits_from_another(tmp_path):
    """base: OTHER_STUDY; space entries are replaced whole, null drops one, config drops datasets."""

    la = load_study("la", dataset=None)  # shipped: base paper, config la, one key added to the space
    paper = load_study("paper", dataset="glas")
    assert la.name == "la" and la.base == "la" and la.base_config().data.dataset == "la"
    assert [p.key for p in la.space] == [p.key for p in paper.space] + ["data.foreground_prob"]
    assert (la.trials, la.concurrency, la.gpus_per_worker) == (paper.trials, paper.concurrency, 1)
    (tmp_path / "parent.yaml").write_text(yaml.safe_dump(study_with(), sort_keys=False))
    (tmp_path / "child.yaml").write_text("base: parent.yaml\nname: child\ntrials: 3\nspace:\n"
                                         "  train.lr: null\n  diffusion_cps.rounds: {choice: [1, 2]}\n")
    child = load_study(tmp_path / "child.yaml")
    assert child.name == "child" and child.trials == 3 and child.base == "debug"
    keys = {p.key: p for p in child.space}
    assert "train.lr" not in keys and keys["diffusion_cps.rounds"].kind == "choice"
    (tmp_path / "old.yaml").write_text("base: debug\nspace: {train.lr: {float: [0.001, 0.01]}}\n")
    with pytest.raises(ConfigError, match="'debug' is a config: write 'config: debug'"):
        load_study(tmp_path / "old.yaml")


def test_the_html_report_draws_optunas_figures_offline(tmp_path):
    import re

    from tune.report_html import write_html

    study = parse_study(study_with())
    ot = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    ot.optimize(lambda t: t.suggest_float("diffusion_cps.loss.cps", 0.1, 2.0, log=True)
                + t.suggest_int("diffusion_cps.rounds", 1, 3), n_trials=6)
    page = write_html(study, ot, tmp_path).read_text()
    assert re.findall(r'id="(fig-[a-z0-9-]+)"', page) == [
        "fig-optimisation-history", "fig-parallel-coordinates-complete-trials", "fig-parameter-importance",
        "fig-slices-the-objective-against-each-parameter"]
    assert '<script src="http' not in page and page.count("Plotly.newPlot") == 4  # plotly.js inline, once
    one = optuna.create_study()
    assert "not available" in write_html(study, one, tmp_path).read_text()  # no trial yet: said, not raised


def test_the_report_header_names_the_data_and_the_changes_to_the_base_config():
    from tune.report import data_line

    study = parse_study(study_with(), data_root="/data/here")
    line = data_line(study)
    assert "dataset `synthetic` under /data/here" in line and "`train.epochs=3`" in line
