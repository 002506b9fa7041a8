"""Chaos during a study, as Ray's own chaos release tests do: while a study of N trials runs, every
few seconds a seeded coin decides whether to kill something and what (the process training a
trial, or the driver, then resumed), for a bounded time. Afterwards every trial must hold its E
epochs exactly once in its run folder, in Tune's results and in Optuna, with the same scores as an
undisturbed run of the same config, and the cluster must be clean again: every CPU free, no
placement group or actor of a dead job left. (Losing a whole node is `test_cluster.py`'s: it needs
a cluster of several nodes, which this session's single-node cluster is not.)"""
import json
import os
import random
import signal
import time
from pathlib import Path

import optuna
import pytest

from tune.paths import journal

from helpers import alive
from factories import read_csv, start_tune, write_study
from test_tune_faults import read_jsonl_safe

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(1200)]
TRIALS, EPOCHS = 4, 3
# every EVERY_S seconds from the first trial's training on, with probability P_KILL: a trial's
# process (2 in 3) or the driver; at most MAX_KILLS kills within CHAOS_S seconds. A worker kill
# waits (up to a tick) for a trial to be training, as after a driver's restart none is, so the
# kinds follow from the seed alone: seed 0 kills a worker at 9 s and the driver at 15 s, then
# what the study's length leaves (a trial trains for about 24 s on an idle core: margin for a faster CI)
SEED, EVERY_S, P_KILL, CHAOS_S, MAX_KILLS = 0, 3.0, 0.5, 60.0, 4


def running_trials(study_dir: Path) -> list[int]:
    """PIDs of the processes training a trial now (a one-worker trial trains in its Tune trial's
    own process, named in ``nodes.json``): started, not finished, still alive."""
    pids = []
    for run in sorted((study_dir / "trials").glob("*")) if (study_dir / "trials").is_dir() else []:
        try:
            pid = json.loads((run / "nodes.json").read_text())[0]["pid"]
        except (OSError, ValueError, KeyError, IndexError):
            continue
        if not (run / "summary.json").exists() and alive(pid):
            pids.append(pid)
    return pids


def left_on_the_cluster(own_job: str) -> tuple[float, list, list]:
    """(CPUs in use, placement groups not removed, live actors of other jobs than this test's)."""
    import ray
    from ray.util.state import list_actors

    used = ray.cluster_resources().get("CPU", 0) - ray.available_resources().get("CPU", 0)
    groups = [g for g in ray.util.placement_group_table().values() if g["state"] != "REMOVED"]
    actors = [a for a in list_actors(filters=[("state", "=", "ALIVE")]) if a.job_id != own_job]
    return used, groups, actors


def undisturbed(config: Path, run_dir: Path) -> list[dict]:
    """The same config trained once without faults, as a trial's process trains it (one thread:
    Ray gives a 1-CPU trial OMP_NUM_THREADS=1); its stage-2 epoch records."""
    import torch

    from diffseg import config as config_mod
    from diffseg.loop import fit

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fit(config_mod.load(config), run_dir, log=lambda msg: None)
    finally:
        torch.set_num_threads(threads)
    return [r for r in read_jsonl_safe(run_dir / "metrics.jsonl") if r.get("stage") == "train"]


def test_chaos_during_a_study_loses_and_doubles_nothing_and_leaves_the_cluster_clean(ray_cluster, tmp_path):
    import ray

    path = write_study(tmp_path / "chaos.yaml", space={"train.lr": {"float": [0.003, 0.03], "log": True}},
                       trials=TRIALS, concurrency=2, scheduler={"type": "none"}, max_failures=MAX_KILLS,
                       set={"method": "supervised", "train.epochs": EPOCHS, "data.synthetic_count": 16,
                            "train.iters_per_epoch": 600})
    storage, name = tmp_path / "studies", "chaos"
    study_dir = storage / name
    rng = random.Random(SEED)
    kills: list[str] = []
    proc = start_tune("search", path, storage, ray_cluster)
    t0 = time.time()
    while not running_trials(study_dir) and time.time() - t0 < 300:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.1)
    t0 = time.time()
    while time.time() - t0 < CHAOS_S and len(kills) < MAX_KILLS and proc.poll() is None:
        time.sleep(EVERY_S)
        if proc.poll() is not None or rng.random() >= P_KILL:
            continue
        if rng.random() < 2 / 3:
            waited = time.time()
            while not (pids := running_trials(study_dir)) and time.time() - waited < EVERY_S and proc.poll() is None:
                time.sleep(0.2)
            if not pids:
                continue
            pid = rng.choice(pids)
            os.kill(pid, signal.SIGKILL)
            kills.append(f"worker {pid} at {time.time() - t0:.0f}s")
        else:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            kills.append(f"driver at {time.time() - t0:.0f}s")
            proc = start_tune("resume", name, storage, ray_cluster)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, (kills, out[-3000:])
    assert any(k.startswith("worker") for k in kills) and any(k.startswith("driver") for k in kills), kills

    rows = [r for r in read_csv(study_dir / "trials.csv") if r["state"] != "ABANDONED"]
    assert len(rows) == TRIALS and {r["state"] for r in rows} == {"COMPLETE"}, (kills, rows)
    ot = optuna.load_study(study_name=name, storage=journal(study_dir)).get_trials()
    assert len(ot) == TRIALS, [(t.number, t.state.name, t.user_attrs) for t in ot]  # one record per trial
    lost_or_doubled = 0
    epochs = list(range(1, EPOCHS + 1))
    for t in ot:
        tid = t.user_attrs["tune_trial_id"]
        run = study_dir / "trials" / tid
        reported = [r["epoch"] for r in read_jsonl_safe(run / "reports.jsonl")]
        trained = [r["epoch"] for r in read_jsonl_safe(run / "metrics.jsonl") if r.get("stage") == "train"]
        tune_results = [r["epoch"] for r in read_jsonl_safe(study_dir / "tune" / tid / "result.json")]
        for got in (reported, trained, tune_results, sorted(t.intermediate_values)):
            lost_or_doubled += len(set(epochs) ^ set(got)) + len(got) - len(set(got))
        assert (reported, trained, tune_results, sorted(t.intermediate_values)) == (epochs,) * 4, (tid, kills)
        assert t.state.name == "COMPLETE"
        # the same scores as an undisturbed run of the trial's own config (CPU training is
        # deterministic, and a resumed run restores its RNGs and loader position)
        ref = undisturbed(run / "config.yaml", tmp_path / "undisturbed" / tid)
        got = [r for r in read_jsonl_safe(run / "metrics.jsonl") if r.get("stage") == "train"]
        assert [r["val_dice"] for r in got] == pytest.approx([r["val_dice"] for r in ref], abs=1e-6), tid
        assert t.value == pytest.approx(ref[-1]["val_dice"], abs=1e-6)

    # within 60 s of the end, the cluster holds nothing of the study's (dead) jobs
    own_job = ray.get_runtime_context().get_job_id()
    deadline = time.time() + 60
    while True:
        used, groups, actors = left_on_the_cluster(own_job)
        if (used == 0 and not groups and not actors) or time.time() > deadline:
            break
        time.sleep(1)
    assert used == 0 and not groups and not actors, (used, groups, actors)
    print(f"\nchaos (seed {SEED}, every {EVERY_S:.0f}s with p={P_KILL}, {CHAOS_S:.0f}s at most): {', '.join(kills)}\n"
          f"kills: {len(kills)}, trials: {len(rows)} of {TRIALS} complete, epochs lost or doubled: {lost_or_doubled}, "
          f"orphan placement groups: {len(groups)}")
