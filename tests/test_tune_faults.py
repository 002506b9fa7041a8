"""Studies under faults on the session's Ray cluster: a killed driver resumed (once, and repeatedly
at random moments), a worker killed at random epochs, a diverged trial, a study too large."""
import json
import os
import signal
import time
from pathlib import Path

import optuna
import pytest

from diffseg.config import ConfigError
from tune import driver
from tune.paths import journal, trial_starts

from factories import journal_states, read_csv, start_tune, write_study

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parent.parent
def tune_saved_an_ended_trial(study_dir) -> bool:
    """Whether an experiment_state file of the study records a trial as TERMINATED (a file that
    is being rewritten may not parse yet: then not)."""
    for state in (study_dir / "tune").glob("experiment_state-*.json"):
        try:
            trials = json.loads(state.read_text())["trial_data"]
        except (OSError, ValueError, KeyError):
            continue
        if any(json.loads(entry[0]).get("status") == "TERMINATED" for entry in trials):
            return True
    return False


def test_killed_driver_is_resumed_without_rerunning_completed_trials(ray_cluster, tmp_path, capsys):
    """Two-worker trials (gloo all-reduce between two Train workers) on synthetic data; the driver
    process is killed once a trial has finished, then `resume` completes the study."""
    path = write_study(tmp_path / "killme.yaml", trials=3, concurrency=1, scheduler={"type": "none"},
                       resources={"workers": 2, "cpus_per_worker": 0.5},
                       set={"data.synthetic_count": 16, "train.epochs": 2})
    storage = tmp_path / "studies"
    study_dir = storage / "killme"
    proc = start_tune("search", path, storage, ray_cluster)
    def started() -> list[str]:
        return list(dict.fromkeys(r["trial_id"] for r in trial_starts(study_dir)))

    deadline = time.time() + 400
    # one trial at a time: once the second has started, Tune has recorded the first as ended
    while time.time() < deadline and len(started()) < 2:
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.5)
    # kill only once Tune's saved state (written every 2 s) holds the first trial as ended
    while time.time() < deadline and not tune_saved_an_ended_trial(study_dir):
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.2)
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
        assert [x["epoch"] for x in records if x["stage"] == "train"] == [1, 2]  # no epoch twice
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
    """The process that trains a one-worker trial (the trial's own) is killed (SIGKILL, by PID) at
    three random epochs: each time Tune restarts the trial, which resumes from the run folder's
    last checkpoint; every epoch reaches Tune and Optuna exactly once, and the report counts the
    restarts as attempts. (The driver-kill test covers trials of two Train workers.)"""
    import random

    epochs, kills = 8, 3
    path = write_study(tmp_path / "wk.yaml", space={"diffusion_cps.loss.cps": {"choice": [1.0]}}, trials=1, concurrency=1,
                       scheduler={"type": "none"}, max_failures=kills + 1,
                       set={"train.epochs": epochs, "method": "supervised", "train.iters_per_epoch": 4})
    storage = tmp_path / "studies"
    study_dir = storage / "wk"
    proc = start_tune("search", path, storage, ray_cluster)
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
    from tune.paths import TAKEN  # the record a restart consults when Tune's checkpoint lags
    assert json.loads((run / TAKEN).read_text())["epoch"] == epochs
    print(f"\nworker killed at epochs {[e for _, e in killed]}: {kills} of {kills} recovered, "
          f"0 epochs lost or reported twice")


def test_driver_killed_repeatedly_at_random_moments_loses_nothing(ray_cluster, tmp_path):
    """The driver (search, then each resume) is SIGKILLed four times: twice at a random moment,
    twice the instant a trial's run folder has its summary (the worker finished; Tune has not
    saved that yet). The last resume completes the study: every trial COMPLETE with the result
    its run folder reported last, none trained again after it finished, and the journal holds
    one record per trial."""
    import random

    # long enough that four kills land while trials still run. Each phase between kills finishes
    # at most the two trials in flight if a trial outlasts a phase (up to 12 s, plus the resume's
    # start), so 10 trials of about 20 s each leave work for the last resume even on a machine
    # half again as fast. With 6 trials of 40 iterations per epoch (about 10 s each), all 6 had
    # finished at the 4th kill here and CI's faster machine finished the study before it
    trials, epochs = 10, 3
    path = write_study(tmp_path / "dk.yaml", space={"train.lr": {"float": [0.003, 0.03], "log": True}},
                       trials=trials, concurrency=2, scheduler={"type": "none"}, max_failures=2,
                       set={"method": "supervised", "train.epochs": epochs, "data.synthetic_count": 16,
                            "train.iters_per_epoch": 100})
    storage, name = tmp_path / "studies", "dk"
    study_dir = storage / name
    rng = random.Random(0)
    plan = ["random", "trial end", "random", "trial end"]
    kills, finished_at_kill, consoles = [], {}, []

    def summaries() -> set[str]:
        return {p.parent.name for p in (study_dir / "trials").glob("*/summary.json")}

    def worker_starts(tid: str) -> int:
        return len(read_jsonl_safe(study_dir / "trials" / tid / "worker_starts.jsonl"))

    proc = start_tune("search", path, storage, ray_cluster)
    # the first kill comes once the study exists (study.yaml): before it nothing is resumable, and
    # on a loaded machine the checks before it can outlast the random wait
    deadline = time.time() + 300
    while not (study_dir / "study.yaml").exists() and time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.05)
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
        proc = start_tune("resume", name, storage, ray_cluster)
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
        assert train == list(range(1, epochs + 1))
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


def test_sigterm_to_the_driver_stops_the_study_as_ctrl_c_does_and_resume_finishes_it(ray_cluster, tmp_path):
    """SIGTERM (a scheduler's stop, `kill`) once trials run: Ray's core would abort with a native
    stack dump (exit 134); the driver stops the study as for Ctrl-C, exits 143 saying how to go
    on, and `resume` then finishes it with every trial's epochs."""
    trials, epochs = 4, 2
    path = write_study(tmp_path / "term.yaml", space={"train.lr": {"float": [0.003, 0.03], "log": True}},
                       trials=trials, concurrency=2, scheduler={"type": "none"},
                       set={"method": "supervised", "train.epochs": epochs, "data.synthetic_count": 16,
                            "train.iters_per_epoch": 40})
    storage, name = tmp_path / "studies", "term"
    proc = start_tune("search", path, storage, ray_cluster)
    deadline = time.time() + 300
    while not list((storage / name / "trials").glob("*/metrics.jsonl")) and time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.1)
    t_term = time.time()
    proc.send_signal(signal.SIGTERM)  # the driver alone, as `kill PID` does
    out, _ = proc.communicate(timeout=300)
    stopped_s = time.time() - t_term
    assert proc.returncode == 143, out[-3000:]
    assert "interrupted: terminated (SIGTERM): stopped after" in out and f"`python -m tune resume {name}`" in out
    assert "SIGTERM received at time" not in out and "Traceback" not in out and "Tuner.restore(" not in out
    t_resume = time.time()
    proc = start_tune("resume", name, storage, ray_cluster)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    rows = [r for r in read_csv(storage / name / "trials.csv") if r["state"] != "ABANDONED"]
    assert len(rows) == trials and {r["state"] for r in rows} == {"COMPLETE"}, rows
    for r in rows:
        reported = read_jsonl_safe(storage / name / "trials" / r["trial_id"] / "reports.jsonl")
        assert [x["epoch"] for x in reported] == list(range(1, epochs + 1))
    print(f"\nSIGTERM: the driver stopped in {stopped_s:.1f}s with exit 143; resume finished {trials} of {trials} "
          f"trials in {time.time() - t_resume:.1f}s")
    print(out[-1500:])


def test_an_epoch_taken_by_this_driver_is_not_handed_to_tune_again(tmp_path):
    """The driver's record of the epoch it took (written before Tune has that epoch's checkpoint)
    counts only for the driver that wrote it: a trial restarted under a resumed driver goes by
    Tune's restored checkpoint and replays the rest."""
    from tune.paths import TAKEN
    from tune.taken import last_taken

    assert last_taken(tmp_path, 2, "01000000") == 2  # no record yet
    (tmp_path / TAKEN).write_text(json.dumps({"job": "01000000", "epoch": 3}))
    assert last_taken(tmp_path, 2, "01000000") == 3  # killed before the checkpoint came back
    assert last_taken(tmp_path, 4, "01000000") == 4  # the checkpoint is never behind by the record
    assert last_taken(tmp_path, 2, "02000000") == 2  # a new driver: Tune's restored state rules
    (tmp_path / TAKEN).write_text('{"job": "0100')  # torn by a crash
    assert last_taken(tmp_path, 2, "01000000") == 2
