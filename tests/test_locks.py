"""One process owns a run folder or a benchmark folder: a second is refused with the holder's pid,
and the lock goes with the process however it ends."""
import os
import re
import subprocess
import sys
import time

import tally
from diffseg.durable import FolderLock
from diffseg.errors import StorageError


def holder(folder, seconds: float = 30) -> subprocess.Popen:
    """Another process that takes the folder's lock and keeps it."""
    code = (f"from diffseg.durable import FolderLock; FolderLock({str(folder)!r}).acquire(); print('held', flush=True); "
            f"import time; time.sleep({seconds})")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_is_refused_naming_the_holder_until_it_dies(tmp_path):
    proc = holder(tmp_path / "run")
    try:
        tally.refused(lambda: FolderLock(tmp_path / "run", "run folder").acquire(), StorageError,
                      f"run folder .* is in use by pid {proc.pid} on ")
    finally:
        proc.kill()
        proc.wait()
    with FolderLock(tmp_path / "run") as lock:  # killed: the OS released it
        assert lock.fd is not None
        with FolderLock(tmp_path / "run"):  # re-entrant within one process
            pass
        assert lock.fd is not None


def test_debug_into_a_run_folder_another_process_trains_is_refused_and_writes_nothing(tmp_path):
    run = tmp_path / "run"
    proc = holder(run)
    try:
        out = subprocess.run([sys.executable, "-m", "diffseg", "debug", "--run-dir", str(run)], capture_output=True,
                             text=True, timeout=300)
    finally:
        proc.kill()
        proc.wait()
    assert out.returncode == 2 and f"is in use by pid {proc.pid}" in out.stderr and "Traceback" not in out.stderr
    assert sorted(os.listdir(run)) == [".lock"]
    tally.clean()  # checked above, in a process of its own


def test_a_second_search_of_one_study_name_is_refused_before_ray_starts(tmp_path, capsys):
    from tune import cli as tune_cli

    study_dir = tmp_path / "studies" / "smoke"
    proc = holder(study_dir)
    try:
        tally.attempt(["search", "smoke", "--storage", str(tmp_path / "studies")], capsys,
                      re.escape(f"study folder {study_dir} is in use by pid {proc.pid}"), keep=(study_dir,),
                      main=tune_cli.main)
    finally:
        proc.kill()
        proc.wait()
    assert sorted(p.name for p in study_dir.iterdir()) == [".lock"]  # the holder's folder, untouched


def test_a_torn_study_yaml_is_named_by_report_and_resume(tmp_path, capsys):
    from tune import cli as tune_cli

    study_dir = tmp_path / "studies" / "torn"
    study_dir.mkdir(parents=True)
    for text, why in (("name: torn\nconfig: {}\n", "it lacks space"), ("name: [torn\n", "not YAML")):
        (study_dir / "study.yaml").write_text(text)
        for command in ("report", "resume"):
            tally.attempt([command, "torn", "--storage", str(tmp_path / "studies")], capsys,
                          f"study.yaml is damaged.*{why}", keep=(study_dir / "study.yaml",), main=tune_cli.main)


def test_a_second_invocation_of_one_benchmark_is_refused_before_any_cell_runs(shared_data, tmp_path):
    from experiments import benchmark

    proc = holder(tmp_path / "smoke")
    try:
        tally.refused(lambda: benchmark.run("smoke", storage=str(tmp_path), data_root=str(shared_data)),
                      StorageError, f"benchmark folder .* is in use by pid {proc.pid}")
    finally:
        proc.kill()
        proc.wait()
    assert sorted(p.name for p in (tmp_path / "smoke").iterdir()) == [".lock"]
