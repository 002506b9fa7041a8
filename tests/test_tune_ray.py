"""Real studies on the session's Ray cluster: Optuna + ASHA over TorchTrainer trials on real data,
a killed driver resumed, the report read without Ray, and the refusal to overwrite."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from diffseg import config
from diffseg.config import ConfigError
from tune import driver
from tune.paths import journal, trial_starts

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parent.parent
TINY = {"data.size": 32, "model.width": 8, "model.depth": 2, "pretrain.epochs": 1,
        "pretrain.iters_per_epoch": 2, "train.iters_per_epoch": 2, "train.batch_size": 4,
        "pretrain.batch_size": 4}


def write_study(path: Path, **changes) -> Path:
    study = {"base": "debug", "set": dict(TINY),
             "space": {"diffusion.steps": {"choice": [100, 200]},
                       "diffusion.sample_steps": {"choice": [1, 2]},
                       "rounds": {"int": [1, 2]},
                       "round_mode": {"choice": ["independent", "chained"], "when": {"rounds": [2]}},
                       "loss.cps": {"float": [0.1, 2.0], "log": True},
                       "train.lr": {"float": [0.0003, 0.03], "log": True}},
             "trials": 6, "concurrency": 2, "searcher": {"type": "tpe", "seed": 0},
             "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2}}
    for key, value in changes.items():
        if key == "set":
            study["set"].update(value)
        else:
            study[key] = value
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def start_driver(path: Path, storage: Path, address: str) -> subprocess.Popen:
    """`python -m tune search` in its own process group (a test may kill it), output captured."""
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "tune", "search", str(path), "--storage", str(storage),
                             "--address", address], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def journal_states(study_dir: Path, name: str) -> dict[str, str]:
    ot = optuna.load_study(study_name=name, storage=journal(study_dir))
    return {t.user_attrs.get("tune_trial_id", f"#{t.number}"): t.state.name for t in ot.get_trials()}


def read_csv(path: Path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def glas_study(ray_cluster, shared_data, tmp_path_factory):
    """Six trials on real GlaS, every one through a 1-worker TorchTrainer."""
    tmp = tmp_path_factory.mktemp("glas_study")
    # the method is searched too, with each method's own keys under `when`
    only_paper = {"when": {"method": ["diffusion_cps"]}}
    space = {"method": {"choice": ["diffusion_cps", "mean_teacher"]},
             "diffusion.steps": {"choice": [100, 200]} | only_paper,
             "rounds": {"int": [1, 2]} | only_paper,
             "round_mode": {"choice": ["independent", "chained"], "when": {"rounds": [2]}},
             "mean_teacher.ema_decay": {"float": [0.9, 0.999], "when": {"method": ["mean_teacher"]}},
             "train.lr": {"float": [0.0003, 0.03], "log": True}}
    path = write_study(tmp / "glas_tiny.yaml", space=space, set={"data.dataset": "glas", "train.epochs": 3})
    study_dir = driver.search(str(path), storage=str(tmp / "studies"), data_root=str(shared_data))
    return path, study_dir


def test_study_on_real_data_prunes_with_asha_and_reports(glas_study):
    path, study_dir = glas_study
    states = journal_states(study_dir, "glas_tiny")
    assert len(states) == 6, states
    assert "PRUNED" in states.values() and "COMPLETE" in states.values(), states
    assert set(states.values()) <= {"PRUNED", "COMPLETE"}, states
    for tid, state in states.items():
        run = study_dir / "trials" / tid
        cfg = config.load(run / "config.yaml")
        assert cfg.data.dataset == "glas" and cfg.name == tid
        # the trial ran through Ray Train; its checkpoint exists once, in its run folder
        assert (study_dir / "train" / tid).is_dir() and (run / "checkpoints" / "last.pt").exists(), tid
        assert not list((study_dir / "train" / tid).glob("checkpoint_*")), tid
        assert json.loads((run / "nodes.json").read_text())[0]["node_id"]
        assert (run / "summary.json").exists() == (state == "COMPLETE")
        assert list((run / "tb").glob("events.out.tfevents.*")) and list((study_dir / "tune" / tid).glob("events.out*"))
    # pruned trials stopped before the last epoch, as Tune saw them; Optuna has their curve
    rows = {r["trial_id"]: r for r in read_csv(study_dir / "trials.csv")}
    assert set(rows) == set(states)
    ot = {t.user_attrs["tune_trial_id"]: t for t in
          optuna.load_study(study_name="glas_tiny", storage=journal(study_dir)).get_trials()}
    for tid, row in rows.items():
        assert row["state"] == states[tid]
        assert (int(row["epochs"]) < 3) == (row["state"] == "PRUNED")
        assert 0.0 <= float(row["val_dice"]) <= 1.0 and row["attempts"] == "1"
        # Tune, Optuna, the run folder and the report agree on where a trial stopped and its value
        epochs = [json.loads(line) for line in (study_dir / "trials" / tid / "metrics.jsonl").read_text().splitlines()]
        trained = [r for r in epochs if r["stage"] == "train"]
        assert len(trained) == int(row["epochs"]), (tid, len(trained), row)
        assert max(ot[tid].intermediate_values) == int(row["epochs"])
        assert ot[tid].intermediate_values[int(row["epochs"])] == pytest.approx(float(row["val_dice"]))
        assert trained[-1]["val_dice"] == pytest.approx(float(row["val_dice"]))
        # every complete trial has its test score; a stopped one never scored the test split
        assert (row["test_dice"] != "") == (row["state"] == "COMPLETE")
    # both methods ran; each trial's config carries its method's own searched key only
    methods = {tid: config.load(study_dir / "trials" / tid / "config.yaml").method for tid in rows}
    assert set(methods.values()) == {"diffusion_cps", "mean_teacher"}, methods
    for tid, row in rows.items():
        assert (row["mean_teacher.ema_decay"] != "") == (methods[tid] == "mean_teacher"), row
        assert (row["rounds"] != "") == (methods[tid] == "diffusion_cps"), row
    # stage 1 (the paper's method only) depends on diffusion.steps among the searched keys:
    # at most two pretrainings; Mean Teacher has no stage 1
    ran = sum(r["stage1"] == "ran" for r in rows.values())
    reused = sum(r["stage1"] == "reused" for r in rows.values())
    paper = sum(m == "diffusion_cps" for m in methods.values())
    assert ran + reused == paper and 1 <= ran <= 2 and len(list((study_dir / "pretrained").glob("*.pt"))) == ran
    # best.yaml: the best complete trial's config, ready to run
    complete = [r for r in rows.values() if r["state"] == "COMPLETE"]
    best = max(complete, key=lambda r: float(r["val_dice"]))
    best_cfg = config.load(study_dir / "best.yaml")
    trial_cfg = config.load(study_dir / "trials" / best["trial_id"] / "config.yaml")
    assert config.to_dict(best_cfg) | {"name": ""} == config.to_dict(trial_cfg) | {"name": ""}
    report = (study_dir / "report.md").read_text()
    assert f"**Best trial** {best['trial_id']}" in report
    assert "predicting foreground everywhere scores Dice" in report and "beats all-foreground" in report
    assert f"{ran} run, {reused} reused" in report
    for png in ("val_dice_curves.png", "param_importance.png", "parallel_coordinates.png"):
        assert (study_dir / "plots" / png).stat().st_size > 1000, png
        assert f"plots/{png}" in report
    # the journal opens the way optuna-dashboard opens a file given on its command line
    from optuna_dashboard._storage_url import get_storage

    dash = get_storage(str(study_dir / "optuna.journal"))
    assert [s.study_name for s in dash.get_all_studies()] == ["glas_tiny"]
    resolved = yaml.safe_load((study_dir / "study.yaml").read_text())
    assert resolved["config"]["data"]["dataset"] == "glas" and resolved["trials"] == 6


def test_report_is_rebuilt_without_ray(glas_study):
    _, study_dir = glas_study
    before = (study_dir / "trials.csv").read_text()
    (study_dir / "trials.csv").unlink()
    (study_dir / "report.md").unlink()
    code = ("import sys; sys.modules['ray'] = None\n"  # any ray import now fails
            "from tune.cli import main\n"
            f"sys.exit(main(['report', 'glas_tiny', '--storage', {str(study_dir.parent)!r}]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert (study_dir / "trials.csv").read_text() == before
    assert "report.md" in out.stdout and (study_dir / "report.md").exists()


def test_report_names_damaged_files_and_keeps_complete_trials_complete(glas_study, tmp_path):
    """A damaged Optuna journal, a damaged Tune result file and a damaged summary: the report is
    still written, names each file and what failed, and complete trials stay complete."""
    import shutil

    from tune import report

    _, original = glas_study
    study_dir = tmp_path / "glas_tiny"
    shutil.copytree(original, study_dir)
    complete = [r["trial_id"] for r in read_csv(study_dir / "trials.csv") if r["state"] == "COMPLETE"]
    (study_dir / "optuna.journal").write_bytes(b"\x00garbage{" + (study_dir / "optuna.journal").read_bytes()[:50])
    result = study_dir / "tune" / complete[0] / "result.json"
    lines = result.read_text().splitlines()
    result.write_text("\n".join(lines[:1] + ["{torn"] + lines[1:]) + "\n")
    (study_dir / "trials" / complete[-1] / "stage1.json").write_text("{not json")
    text = report.write(study_dir).read_text()
    assert "## Damaged files" in text
    assert "optuna.journal" in text and str(result) in text and "stage1.json" in text
    rows = {r["trial_id"]: r for r in read_csv(study_dir / "trials.csv")}
    assert all(rows[t]["state"] == "COMPLETE" for t in complete)


def test_existing_study_name_is_refused_and_left_untouched(glas_study):
    path, study_dir = glas_study
    journal_bytes = (study_dir / "optuna.journal").read_bytes()
    with pytest.raises(ConfigError, match="already exists.*resume"):
        driver.search(str(path), storage=str(study_dir.parent))
    assert (study_dir / "optuna.journal").read_bytes() == journal_bytes


def test_killed_driver_is_resumed_without_rerunning_completed_trials(ray_cluster, tmp_path, capsys):
    """Two-worker trials (gloo all-reduce between two Train workers) on synthetic data; the driver
    process is killed once a trial has finished, then `resume` completes the study."""
    path = write_study(tmp_path / "killme.yaml", trials=3, concurrency=1, scheduler={"type": "none"},
                       resources={"workers": 2, "cpus_per_worker": 0.5},
                       set={"data.synthetic_count": 16, "train.epochs": 2})
    storage = tmp_path / "studies"
    study_dir = storage / "killme"
    proc = start_driver(path, storage, ray_cluster)
    def started() -> list[str]:
        return list(dict.fromkeys(r["trial_id"] for r in trial_starts(study_dir)))

    deadline = time.time() + 400
    # one trial at a time: once the second has started, Tune has recorded the first as ended
    while time.time() < deadline and len(started()) < 2:
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.5)
    time.sleep(3)  # Tune saves its state every 2 s (TUNE_GLOBAL_CHECKPOINT_S)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    console = proc.stdout.read()
    assert "[tune] ray cluster" in console
    for banner in ("A new study created", "To visualize your results with TensorBoard", "View detailed results",
                   "Configuration for experiment"):
        assert banner not in console, console
    finished = {started()[0]}
    assert (study_dir / "trials" / started()[0] / "summary.json").exists()
    summaries = {tid: (study_dir / "trials" / tid / "summary.json").read_text() for tid in finished}
    # the kill also tore Tune's saved state: resume puts back the copy the driver sealed last
    state = max((study_dir / "tune").glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
    state.write_bytes(state.read_bytes()[:100])
    capsys.readouterr()

    driver.resume("killme", storage=str(storage))
    assert f"tune/{state.name}" in capsys.readouterr().out

    rows = read_csv(study_dir / "trials.csv")
    ran = [r for r in rows if r["state"] == "COMPLETE"]
    assert len(ran) == 3, rows
    for tid in finished:  # completed before the kill: started once, results untouched
        row = next(r for r in rows if r["trial_id"] == tid)
        assert row["attempts"] == "1"
        assert (study_dir / "trials" / tid / "summary.json").read_text() == summaries[tid]
    for r in ran:
        records = [json.loads(l) for l in (study_dir / "trials" / r["trial_id"] / "metrics.jsonl").read_text().splitlines()]
        assert [x["epoch"] for x in records if x["stage"] == "train"] == [0, 1]  # no epoch twice
        env_json = json.loads((study_dir / "trials" / r["trial_id"] / "environment.json").read_text())
        assert env_json["device"] == "cpu"
        assert "rank 0 of 2" in (study_dir / "trials" / r["trial_id"] / "train.log").read_text()
    with pytest.raises(ConfigError, match="no study 'nothere'"):
        driver.resume("nothere", storage=str(storage))


def test_study_larger_than_the_cluster_is_refused_before_its_folder_exists(ray_cluster, tmp_path):
    path = write_study(tmp_path / "huge.yaml", resources={"workers": 3})
    with pytest.raises(ConfigError, match="one trial needs 3 CPUs.*cluster has 2 CPUs"):
        driver.search(str(path), storage=str(tmp_path / "studies"))
    assert not (tmp_path / "studies" / "huge").exists()  # the name stays free


def test_diverged_trial_is_a_result_not_retried_and_the_study_goes_on(ray_cluster, tmp_path):
    """One trial's learning rate explodes its loss: it ends once (no retry), complete in Optuna
    with the worst value, "diverged" with its reason in the report; the other trial finishes."""
    path = write_study(tmp_path / "div.yaml", space={"train.lr": {"choice": [0.01, 10000.0]}},
                       trials=4, searcher={"type": "random", "seed": 0}, scheduler={"type": "none"},
                       max_failures=2, set={"train.epochs": 3, "method": "supervised"})
    study_dir = driver.search(str(path), storage=str(tmp_path / "studies"))
    rows = read_csv(study_dir / "trials.csv")
    assert {float(r["train.lr"]) for r in rows} == {0.01, 10000.0}  # seed 0 draws both
    starts = [r["trial_id"] for r in trial_starts(study_dir)]
    for r in rows:
        if float(r["train.lr"]) == 10000.0:
            assert r["state"] == "DIVERGED" and float(r["val_dice"]) == 0.0
            summary = json.loads((study_dir / "trials" / r["trial_id"] / "summary.json").read_text())
            assert summary["status"] == "diverged" and "train.lr" in summary["reason"]
        else:
            assert r["state"] == "COMPLETE" and float(r["val_dice"]) > 0
        assert starts.count(r["trial_id"]) == 1  # never retried
    assert set(journal_states(study_dir, "div").values()) == {"COMPLETE"}
    ot = optuna.load_study(study_name="div", storage=journal(study_dir)).get_trials()
    bad = [t for t in ot if t.params["train.lr"] == 10000.0]
    assert bad and all("train.lr" in t.user_attrs.get("diverged", "") for t in bad)
    assert all("diverged" not in t.user_attrs for t in ot if t.params["train.lr"] == 0.01)
    assert "Diverged trials" in (study_dir / "report.md").read_text()


def test_worker_killed_at_random_epochs_resumes_and_reports_every_epoch_once(ray_cluster, tmp_path):
    """The Train worker process is killed (SIGKILL, by PID) at three random epochs of one trial:
    each time the worker group restarts from the run folder's last checkpoint, every epoch
    reaches Tune and Optuna exactly once, and the report counts the restarts as attempts."""
    import random

    epochs, kills = 8, 3
    path = write_study(tmp_path / "wk.yaml", space={"loss.cps": {"choice": [1.0]}}, trials=1, concurrency=1,
                       scheduler={"type": "none"}, max_failures=kills + 1,
                       set={"train.epochs": epochs, "method": "supervised", "train.iters_per_epoch": 4})
    storage = tmp_path / "studies"
    study_dir = storage / "wk"
    proc = start_driver(path, storage, ray_cluster)
    rng = random.Random(0)
    targets = sorted(rng.sample(range(1, epochs - 1), kills))  # after epoch k has been recorded
    killed = []

    def run_folder() -> Path | None:
        found = [p for p in (study_dir / "trials").glob("*") if p.is_dir()] if (study_dir / "trials").is_dir() else []
        return found[0] if found else None

    deadline = time.time() + 600
    while targets and time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        run = run_folder()
        done = [r for r in read_jsonl_safe(run / "metrics.jsonl") if r.get("stage") == "train"] if run else []
        if done and done[-1]["epoch"] + 1 >= targets[0] and (run / "nodes.json").exists():
            pid = json.loads((run / "nodes.json").read_text())[0]["pid"]
            if pid not in [k for k, _ in killed]:
                os.kill(pid, signal.SIGKILL)
                killed.append((pid, done[-1]["epoch"] + 1))
                targets.pop(0)
        time.sleep(0.2)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    assert len(killed) == kills, (killed, out[-2000:])
    run = run_folder()
    results = [json.loads(line) for line in (study_dir / "tune" / run.name / "result.json").read_text().splitlines()
               if line.strip()]
    assert [r["epoch"] for r in results] == list(range(1, epochs + 1)), [r["epoch"] for r in results]
    ot = optuna.load_study(study_name="wk", storage=journal(study_dir)).get_trials()
    assert len(ot) == 1 and ot[0].state.name == "COMPLETE"
    assert sorted(ot[0].intermediate_values) == list(range(1, epochs + 1))
    rows = read_csv(study_dir / "trials.csv")
    assert int(rows[0]["attempts"]) == kills + 1 and rows[0]["epochs"] == str(epochs)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "complete"
    print(f"\nworker killed at epochs {[e for _, e in killed]}: {kills} of {kills} recovered, "
          f"0 epochs lost or reported twice")


def start_resume(name: str, storage: Path, address: str) -> subprocess.Popen:
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "tune", "resume", name, "--storage", str(storage),
                             "--address", address], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_driver_killed_repeatedly_at_random_moments_loses_nothing(ray_cluster, tmp_path):
    """The driver (search, then each resume) is SIGKILLed four times: twice at a random moment,
    twice the instant a trial's run folder has its summary (the worker finished; Tune has not
    saved that yet). The last resume completes the study: every trial COMPLETE with the result
    its run folder reported last, none trained again after it finished, and the journal holds
    one record per trial."""
    import random

    trials, epochs = 4, 3
    path = write_study(tmp_path / "dk.yaml", space={"train.lr": {"float": [0.003, 0.03], "log": True}},
                       trials=trials, concurrency=2, scheduler={"type": "none"}, max_failures=2,
                       set={"method": "supervised", "train.epochs": epochs, "data.synthetic_count": 16})
    storage, name = tmp_path / "studies", "dk"
    study_dir = storage / name
    rng = random.Random(0)
    plan = ["random", "trial end", "random", "trial end"]
    kills, finished_at_kill, consoles = [], {}, []

    def summaries() -> set[str]:
        return {p.parent.name for p in (study_dir / "trials").glob("*/summary.json")}

    def worker_starts(tid: str) -> int:
        return len(read_jsonl_safe(study_dir / "trials" / tid / "worker_starts.jsonl"))

    proc = start_driver(path, storage, ray_cluster)
    for how in plan:
        before, t0 = summaries(), time.time()
        wait = rng.uniform(2.0, 12.0)
        while proc.poll() is None and time.time() - t0 < 300:
            if how == "random" and time.time() - t0 >= wait:
                break
            if how == "trial end" and summaries() - before:
                break
            time.sleep(0.02)
        assert proc.poll() is None, proc.stdout.read()[-3000:]  # the study must not have ended yet
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        consoles.append(proc.stdout.read())
        kills.append(f"{how} at {time.time() - t0:.1f}s")
        for tid in summaries():
            finished_at_kill.setdefault(tid, worker_starts(tid))
        proc = start_resume(name, storage, ray_cluster)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    # Ray leaks a killed driver's Train placement groups (holding CPUs); each start frees them
    freed = sum(int(line.split("freed ")[1].split()[0]) for c in consoles + [out] for line in c.splitlines()
                if "left by killed drivers" in line)

    rows = read_csv(study_dir / "trials.csv")
    rows = [r for r in rows if r["state"] != "ABANDONED"]  # run folders of trials Tune never saved
    assert len(rows) == trials and {r["state"] for r in rows} == {"COMPLETE"}, rows
    ot = optuna.load_study(study_name=name, storage=journal(study_dir)).get_trials()
    assert len(ot) == trials, [(t.number, t.state.name, t.user_attrs) for t in ot]  # one record per trial
    for t in ot:
        tid = t.user_attrs["tune_trial_id"]
        run = study_dir / "trials" / tid
        reported = read_jsonl_safe(run / "reports.jsonl")
        assert [r["epoch"] for r in reported] == list(range(1, epochs + 1))
        assert t.state.name == "COMPLETE" and t.value == pytest.approx(reported[-1]["val_dice"])
        assert sorted(t.intermediate_values) == list(range(1, epochs + 1))
        train = [r["epoch"] for r in read_jsonl_safe(run / "metrics.jsonl") if r.get("stage") == "train"]
        assert train == list(range(epochs))
        assert json.loads((run / "summary.json").read_text())["status"] == "complete"
    for tid, starts in finished_at_kill.items():  # finished before a kill: never trained again
        assert worker_starts(tid) == starts, tid
    print(f"\ndriver killed {len(kills)} times ({', '.join(kills)}): study complete, {trials} of {trials} "
          f"trials with their real result, {len(finished_at_kill)} finished before a kill and none re-run, "
          f"{len(ot)} journal records for {trials} trials, {freed} placement groups of killed drivers freed")


def read_jsonl_safe(path: Path) -> list[dict]:
    from diffseg.rundir import read_jsonl

    try:
        return read_jsonl(path)
    except Exception:  # being rewritten by a resume at this moment
        return []
