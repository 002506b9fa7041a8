"""A benchmark file's `tune: {study, trials}` (experiments/tuned.py): every row (dataset x method x
ratio) gets its own study of the same trial budget, on a tuning seed the final seeds never use,
with its method's own space; the cells then run each row's best config, the table says so, and a
second run reuses the finished studies."""
import optuna
import pytest
import yaml

from diffseg import config as config_mod
from diffseg.config import ConfigError
from experiments import benchmark
from tune.driver import ended_trials
from tune.paths import journal

TINY = {"data.synthetic_count": 16}
STUDY = {"config": "debug",  # ignored by a row study: its base is the row's own cell config
         "space": {"train.lr": {"float": [0.001, 0.05], "log": True}},
         "methods": {"mean_teacher": {"space": {"mean_teacher.ema_decay": {"float": [0.9, 0.999]}}}},
         "enqueue": "base", "searcher": {"type": "tpe", "seed": 0}, "scheduler": {"type": "none"},
         "concurrency": 2}


def bench_file(tmp_path, **changes):
    study = tmp_path / "methods_study.yaml"
    study.write_text(yaml.safe_dump(STUDY))
    data = {"name": "fair", "datasets": {"synthetic": "debug"}, "ratios": [0.25], "seeds": [0],
            "methods": ["supervised", "mean_teacher"], "preset": "smoke", "set": TINY, "concurrency": 2,
            "tune": {"study": str(study), "trials": 2}} | changes
    path = tmp_path / "fair.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, data


def test_tuning_seeds_that_meet_the_final_seeds_and_a_method_with_nothing_to_search_are_refused(tmp_path):
    path, data = bench_file(tmp_path)
    with pytest.raises(ConfigError, match=r"tune.seed = 1: its study trains seeds \[1\] and the benchmark scores seed\(s\) \[1\]"):
        benchmark.parse(data | {"seeds": [0, 1], "tune": data["tune"] | {"seed": 1}})
    (tmp_path / "methods_study.yaml").write_text(yaml.safe_dump({k: v for k, v in STUDY.items() if k != "space"}))
    with pytest.raises(ConfigError, match=r"method supervised \(row supervised\) has nothing to search"):
        benchmark.parse(data)
    with pytest.raises(ConfigError, match="either 'tune' .* or 'tuned'"):
        benchmark.parse(data | {"tuned": {"synthetic": str(path)}})


def test_a_tuned_benchmark_cannot_run_without_ray(tmp_path):
    path, _ = bench_file(tmp_path)
    with pytest.raises(ConfigError, match="cannot run with --local"):
        benchmark.run(str(path), storage=str(tmp_path / "b"), local=1)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_every_method_gets_its_own_study_of_the_same_budget_then_runs_its_best_config(ray_cluster, tmp_path):
    path, _ = bench_file(tmp_path)
    folder = benchmark.run(str(path), storage=str(tmp_path / "benchmarks"))
    for row, searched in (("synthetic-supervised-r25", {"train.lr"}),
                          ("synthetic-mean_teacher-r25", {"train.lr", "mean_teacher.ema_decay"})):
        study_dir = folder / "studies" / row
        ot = optuna.load_study(study_name=row, storage=journal(study_dir))
        own = [t for t in ot.get_trials() if "tune_trial_id" in t.user_attrs]
        assert len(own) == 2 and ended_trials(ot) == 2, row  # the same budget for every method
        assert {k for t in own for k in t.params} == searched, row
        best = config_mod.load(study_dir / "best.yaml")
        assert (best.seed, best.data.split_seed) == (1, 1)  # the tuning seed: one past the final seeds
        cell = config_mod.load(folder / "trials" / f"{row}-s0" / "config.yaml")
        assert (cell.seed, cell.data.split_seed) == (0, 0) and cell.train.lr == best.train.lr, row
        assert cell.method == best.method and cell.data.labeled_ratio == 0.25
    table = (folder / "table.md").read_text()
    assert "Every method tuned alike" in table and "study of 2 trials" in table
    assert "synthetic-mean_teacher-r25, synthetic-supervised-r25" in table
    # a second run: the studies are finished and the cells done, nothing runs again
    again = benchmark.run(str(path), storage=str(tmp_path / "benchmarks"))
    for row in ("synthetic-supervised-r25", "synthetic-mean_teacher-r25"):
        ot = optuna.load_study(study_name=row, storage=journal(again / "studies" / row))
        assert len(ot.get_trials()) == 2
