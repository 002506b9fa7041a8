"""Real studies on the session's Ray cluster: Optuna + ASHA over TorchTrainer trials on real data,
the report read without Ray, and the refusal to overwrite."""
import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from diffseg import config
from diffseg.config import ConfigError
from tune import driver
from tune.paths import journal

from factories import journal_states, read_csv, write_study

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parent.parent
@pytest.fixture(scope="module")
def glas_study(ray_cluster, shared_data, tmp_path_factory):
    """Six trials on real GlaS, every one through a 1-worker TorchTrainer."""
    tmp = tmp_path_factory.mktemp("glas_study")
    # the method is searched too, with each method's own keys under `when`
    only_paper = {"when": {"method": ["diffusion_cps"]}}
    space = {"method": {"choice": ["diffusion_cps", "mean_teacher"]},
             "diffusion_cps.diffusion.steps": {"choice": [100, 200]} | only_paper,
             "diffusion_cps.rounds": {"int": [1, 2]} | only_paper,
             "diffusion_cps.round_mode": {"choice": ["independent", "chained"], "when": {"diffusion_cps.rounds": [2]}},
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
        # a one-worker trial trains in its own process (no Train run); its checkpoint exists
        # once, in its run folder
        assert not (study_dir / "train" / tid).exists() and (run / "checkpoints" / "last.pt").exists(), tid
        assert "trial process rank 0 of 1" in (run / "train.log").read_text()
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
        assert (row["diffusion_cps.rounds"] != "") == (methods[tid] == "diffusion_cps"), row
    # stage 1 (the paper's method only) depends on diffusion_cps.diffusion.steps among the searched keys:
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
    for png in ("val_dice_curves.png", "parallel_coordinates.png"):
        assert (study_dir / "plots" / png).stat().st_size > 1000, png
        assert f"plots/{png}" in report
    # Optuna's own figures, one offline page: plotly.js inline, one div per figure
    page = (study_dir / "report.html").read_text()
    assert "[report.html](report.html)" in report and "plotly" in page and '<script src="http' not in page
    for div in ("fig-optimisation-history", "fig-parallel-coordinates-complete-trials", "fig-parameter-importance",
                "fig-slices-the-objective-against-each-parameter"):
        assert f'id="{div}"' in page, div
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


RAYLET_WARNING_SCRIPT = """
import os, sys, time
sys.path.insert(0, sys.argv[1])
import ray
if sys.argv[2] == "quiet":
    from tune.tuner import quiet
    quiet()
# one CPU and no IO workers: the raylet warns from 4 worker processes on (4x its CPU count)
ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False,
         _system_config={"max_io_workers": 0})

@ray.remote(num_cpus=0)
class Waiter:  # as a trial function or Train controller: a process that asks for no CPU
    def pid(self):
        return os.getpid()

waiters = [Waiter.remote() for _ in range(6)]
ray.get([w.pid.remote() for w in waiters])
time.sleep(3)  # the warning travels raylet -> GCS -> the driver's error listener
print("END", flush=True)
ray.shutdown()
"""


@pytest.mark.timeout(300)
def test_the_raylet_warning_about_zero_cpu_processes_stays_off_a_quiet_console(tmp_path):
    """Ray's "N PYTHON worker processes have been started" reaches the console as a raylet message,
    not a log record; a driver that went through ``tuner.quiet`` does not print it. The same
    script without ``quiet`` shows that this Ray prints it."""
    script = tmp_path / "warn.py"
    script.write_text(RAYLET_WARNING_SCRIPT)
    outputs = {}
    for mode in ("loud", "quiet"):
        done = subprocess.run([sys.executable, str(script), str(ROOT), mode], capture_output=True, text=True,
                              timeout=240)
        assert done.returncode == 0 and "END" in done.stdout, done.stderr[-2000:]
        outputs[mode] = done.stdout + done.stderr
    assert "worker processes have been started" in outputs["loud"], outputs["loud"][-2000:]
    assert "worker processes have been started" not in outputs["quiet"], outputs["quiet"][-2000:]
