"""Seed groups (study key ``seeds: k``, tune/group.py): each trial trains its configuration with k
seeds side by side and reports their mean; Tune, ASHA, Optuna and the report all see that mean,
and a benchmark refuses to score a tuned config on a seed its study tuned on."""
import json
import math

import optuna
import pytest
import yaml

from diffseg import config
from diffseg.config import ConfigError
from diffseg.rundir import read_jsonl
from experiments.tuned import check_tuning_seeds
from helpers import alive
from factories import read_csv, write_study
from tune import driver
from tune.group import group_report, lockstep, member_config, mean_rows, next_epoch, tuning_seeds
from tune.paths import journal
from tune.study import load_study


def test_a_group_report_is_the_members_mean_with_their_values_and_interval():
    got = group_report([{"epoch": 3, "val_dice": 0.5, "lr": 0.1, "method": "x"},
                        {"epoch": 3, "val_dice": 0.7, "lr": 0.1, "method": "x"}])
    assert got["epoch"] == 3 and got["seeds"] == 2 and got["val_dice"] == pytest.approx(0.6)
    assert got["val_dice_seeds"] == [0.5, 0.7] and got["lr"] == pytest.approx(0.1) and "lr_seeds" not in got
    assert got["val_dice_ci95"] == pytest.approx(12.706 * 0.1, rel=1e-3)  # t(0.975, 1) * sd / sqrt(2)
    assert "method" not in got  # a string is no number to average


def test_a_diverged_member_makes_the_group_diverged(tmp_path):
    members = [tmp_path / "seed-0", tmp_path / "seed-1"]
    for m in members:
        m.mkdir()
    (members[0] / "reports.jsonl").write_text(json.dumps({"epoch": 1, "val_dice": 0.4}) + "\n")
    assert next_epoch(members, 1) is None  # member 1 has not reported yet
    (members[1] / "reports.jsonl").write_text(json.dumps({"epoch": 1, "val_dice": 0.0, "diverged": 1,
                                                          "diverged_reason": "loss is nan"}) + "\n")
    got = group_report(next_epoch(members, 1))
    assert got["diverged"] == 1 and "seed member 1" in got["diverged_reason"] and "loss is nan" in got["diverged_reason"]


def test_members_differ_in_seed_and_split_only_and_rows_are_averaged():
    cfg = config.load("debug")
    one = member_config(cfg, 1)
    assert (one.seed, one.data.split_seed) == (cfg.seed + 1, cfg.data.split_seed + 1)
    flat0, flat1 = config.to_flat(cfg), config.to_flat(one)
    assert {k for k in flat0 if flat0[k] != flat1[k]} == {"seed", "data.split_seed", "name"}
    assert tuning_seeds(cfg, 3) == {0, 1, 2}
    rows = mean_rows([[{"stage": "pretrain", "epoch": 1, "loss": 1.0}, {"stage": "train", "epoch": 1, "val_dice": 0.2}],
                      [{"stage": "pretrain", "epoch": 1, "loss": 3.0}, {"stage": "train", "epoch": 1, "val_dice": 0.4}]])
    assert [(r["stage"], r["epoch"]) for r in rows] == [("pretrain", 1), ("train", 1)]
    assert rows[0]["loss"] == pytest.approx(2.0) and rows[1]["val_dice"] == pytest.approx(0.3)


@pytest.mark.parametrize("changes, match", [
    ({"space": {"seed": {"int": [0, 3]}}}, r"seeds = 2: the space searches seed"),
    ({"space": {"data.split_seed": {"int": [0, 3]}}}, r"searches data.split_seed"),
    ({"scheduler": {"type": "paired"}}, r"seeds = 2 with scheduler.type = paired"),
    ({"resources": {"workers": 2}}, r"seeds = 2 with resources.workers = 2"),
])
def test_what_a_seed_group_cannot_do_is_refused(tmp_path, changes, match):
    path = write_study(tmp_path / "s.yaml", seeds=2, **changes)
    with pytest.raises(ConfigError, match=match):
        load_study(str(path))


def test_a_benchmark_refuses_a_best_config_scored_on_its_groups_seeds(tmp_path):
    study = load_study(str(write_study(tmp_path / "s.yaml", seeds=3)))
    folder = tmp_path / "studies" / study.name
    folder.mkdir(parents=True)
    (folder / "study.yaml").write_text(study.to_yaml())
    (folder / "best.yaml").write_text(yaml.safe_dump(study.config))  # seed 0: the group trained 0, 1, 2
    with pytest.raises(ConfigError, match=r"tuned with seed and data.split_seed values \[0, 1, 2\].*"
                                          r"scores seed\(s\) \[2\] again.*seeds: \[3, 4\]"):
        check_tuning_seeds("glas", str(folder / "best.yaml"), (2, 5))
    check_tuning_seeds("glas", str(folder / "best.yaml"), (3, 4, 5))  # seeds it never saw


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_seed_group_study_on_real_glas_reports_the_seeds_mean_everywhere(ray_cluster, shared_data, tmp_path, capsys):
    """Three trials of two seeds each on GlaS (one group at a time: each takes both CPUs), ASHA on
    the means. For every trial and epoch, Tune's result, Optuna's intermediate value and the
    report equal the mean of its two members' own metrics.jsonl values; every member stopped
    where its group stopped; the best config records the seeds the study tuned on."""
    path = write_study(tmp_path / "groups.yaml", seeds=2, trials=3, concurrency=1,
                       space={"train.lr": {"float": [0.001, 0.05], "log": True},
                              "diffusion_cps.rounds": {"int": [1, 2]}},
                       set={"data.dataset": "glas", "train.epochs": 3})
    study_dir = driver.search(str(path), storage=str(tmp_path / "studies"), data_root=str(shared_data))
    assert " over 2 seeds (" in capsys.readouterr().out  # the progress line shows each seed's value
    rows = {r["trial_id"]: r for r in read_csv(study_dir / "trials.csv")}
    ot = {t.user_attrs["tune_trial_id"]: t for t in
          optuna.load_study(study_name="groups", storage=journal(study_dir)).get_trials()}
    assert len(rows) == 3 and {r["state"] for r in rows.values()} <= {"COMPLETE", "PRUNED"}, rows
    for tid, row in rows.items():
        run = study_dir / "trials" / tid
        members = [[r for r in read_jsonl(run / f"seed-{i}" / "metrics.jsonl") if r["stage"] == "train"]
                   for i in range(2)]
        tune_results = read_jsonl(study_dir / "tune" / tid / "result.json")
        epochs = int(row["epochs"])
        # ASHA stopped the group, so each member trained exactly the epochs Tune saw
        assert [len(m) for m in members] == [epochs, epochs] and len(tune_results) == epochs, (tid, row)
        seeds = {config.load(run / f"seed-{i}" / "config.yaml").seed for i in range(2)}
        assert seeds == {0, 1}, seeds
        for e in range(epochs):
            mean = (members[0][e]["val_dice"] + members[1][e]["val_dice"]) / 2
            assert tune_results[e]["val_dice"] == pytest.approx(mean, abs=1e-9), (tid, e)
            assert tune_results[e]["val_dice_seeds"] == pytest.approx([members[0][e]["val_dice"],
                                                                       members[1][e]["val_dice"]])
            assert ot[tid].intermediate_values[e + 1] == pytest.approx(mean, abs=1e-9), (tid, e)
        assert float(row["val_dice"]) == pytest.approx(tune_results[-1]["val_dice"], abs=1e-9)
        assert math.isfinite(float(row["val_dice_ci95"])) and json.loads(row["val_dice_seeds"])
        if row["state"] == "COMPLETE":
            summary = json.loads((run / "summary.json").read_text())
            member_test = [json.loads((run / f"seed-{i}" / "summary.json").read_text())["test"]["dice"] for i in range(2)]
            assert summary["test"]["dice"] == pytest.approx(sum(member_test) / 2)
            assert float(row["test_dice"]) == pytest.approx(summary["test"]["dice"])
            assert ot[tid].values[0] == pytest.approx(tune_results[-1]["val_dice"], abs=1e-9)
        else:
            assert not (run / "summary.json").exists()
    assert "PRUNED" in {r["state"] for r in rows.values()} or epochs == 3
    report = (study_dir / "report.md").read_text()
    assert "each trial trained its configuration 2 times" in report and " ± " in report
    assert "# Tuning seeds (seed and data.split_seed values its trials trained with): [0, 1]" in (
        study_dir / "best.yaml").read_text()


def ended() -> bool:
    """Every member has ended (their reports are already in their folders)."""
    return True


def test_lockstep_hands_tune_each_epochs_mean_from_epoch_one_and_answers_every_member(tmp_path):
    members = [tmp_path / "seed-0", tmp_path / "seed-1"]
    for i, m in enumerate(members):
        m.mkdir()
        (m / "reports.jsonl").write_text("".join(json.dumps({"epoch": e, "val_dice": 0.1 * e + 0.2 * i}) + "\n"
                                                 for e in (1, 2)))
    handed, answered = [], []
    lockstep(members, 1, ended, handed.append, answered.append)
    assert [r["epoch"] for r in handed] == [1, 2] and answered == [1, 2]
    assert [r["val_dice"] for r in handed] == pytest.approx([0.2, 0.3])
    handed.clear()
    lockstep(members, 2, ended, handed.append, answered.append)  # resumed after Tune took epoch 1
    assert [r["epoch"] for r in handed] == [2]

    def stopped(report):
        raise KeyboardInterrupt  # what Tune's report raises when it stops the trial

    with pytest.raises(KeyboardInterrupt):
        lockstep(members, 1, ended, stopped, answered.append)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("victim", ["member", "trial"])
def test_a_killed_member_or_trial_restarts_its_group_which_resumes_with_every_epoch_once(ray_cluster, tmp_path, victim):
    """SIGKILL one member's process, or the trial's own (which owns the members' actors), after
    the group's first epoch: the trial fails, Tune restarts it, both members resume from their
    run folders, and every epoch is in each member's metrics.jsonl and in Tune's results exactly
    once, Tune's value the members' mean. A killed trial process takes its members with it."""
    import os
    import signal
    import threading
    import time

    path = write_study(tmp_path / "killed.yaml", seeds=2, trials=1, concurrency=1, space={"train.lr": {"choice": [0.01]}},
                       scheduler={"type": "none"}, set={"method": "supervised", "train.epochs": 4,
                                                       "train.iters_per_epoch": 40, "data.synthetic_count": 32})
    study_dir = tmp_path / "studies" / "killed"
    killed = []

    def kill_member_one():
        deadline = time.time() + 600
        while time.time() < deadline and not killed:
            for run in (study_dir / "trials").glob("*/seed-1") if (study_dir / "trials").is_dir() else []:
                trained = [r for r in read_jsonl(run / "metrics.jsonl") if r.get("stage") == "train"]
                if trained and (run / "nodes.json").exists():
                    members = [json.loads((run.parent / f"seed-{i}" / "nodes.json").read_text())[0]["pid"]
                               for i in range(2)]
                    pid = members[1] if victim == "member" else json.loads((run.parent / "group.json").read_text())["pid"]
                    os.kill(pid, signal.SIGKILL)
                    killed.append((pid, len(trained), members))
                    return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_member_one, daemon=True)
    killer.start()
    driver.search(str(path), storage=str(tmp_path / "studies"))
    killer.join(timeout=5)
    assert killed and killed[0][1] < 4, killed  # killed mid-run
    assert not any(alive(pid) for pid in killed[0][2])  # no member of the first attempt outlives it
    rows = read_csv(study_dir / "trials.csv")
    assert [r["state"] for r in rows] == ["COMPLETE"], rows
    tid = rows[0]["trial_id"]
    run = study_dir / "trials" / tid
    results = read_jsonl(study_dir / "tune" / tid / "result.json")
    members = [[r for r in read_jsonl(run / f"seed-{i}" / "metrics.jsonl") if r["stage"] == "train"] for i in range(2)]
    assert [int(r["epoch"]) for r in results] == [1, 2, 3, 4]
    assert [[int(r["epoch"]) for r in m] for m in members] == [[1, 2, 3, 4]] * 2
    for e in range(4):
        assert results[e]["val_dice"] == pytest.approx((members[0][e]["val_dice"] + members[1][e]["val_dice"]) / 2)
    assert all(len(read_jsonl(run / f"seed-{i}" / "worker_starts.jsonl")) >= 2 for i in range(2))  # both started again
    assert json.loads((run / "summary.json").read_text())["status"] == "complete"


def test_the_group_speed_script_refuses_an_earlier_result_and_a_group_of_one_before_measuring(tmp_path, capsys):
    from experiments import group_speed

    earlier = tmp_path / "speed.json"
    earlier.write_text("{}")
    assert group_speed.main(["--output", str(earlier)]) == 2
    assert earlier.read_text() == "{}" and "exists (an earlier result)" in capsys.readouterr().err
    assert group_speed.main(["--output", str(tmp_path / "new.json"), "--seeds", "1"]) == 2
    assert not (tmp_path / "new.json").exists() and "--seeds must be at least 2" in capsys.readouterr().err
