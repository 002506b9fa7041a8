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


def test_a_study_key_that_cannot_be_made_is_refused_before_the_study_takes_its_name(tmp_path, capsys, monkeypatch):
    """A read-only HOME (here: the key's folder would lie below a file, which even root cannot
    write) was an OSError at Tune's first save, after the study folder had taken the name."""
    from tune import cli as tune_cli

    blocker = tmp_path / "home-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("DIFFSEG_STUDY_KEY", str(blocker / ".config" / "study.key"))
    tally.attempt(["search", "smoke", "--storage", str(tmp_path / "studies")], capsys,
                  r"the study key .*study.key cannot be made .*set DIFFSEG_STUDY_KEY", keep=(blocker,),
                  main=tune_cli.main)
    assert not (tmp_path / "studies" / "smoke").exists()  # the name stays free


def test_a_missing_or_full_ray_temp_folder_is_named_before_ray_starts(tmp_path, monkeypatch):
    """Ray, given a full TMPDIR, timed out waiting for its gcs_server_port file; the driver now
    names the folder and its free space before ray.init. A missing folder is tried for real
    through `tune search` in a process of its own (this session's Ray may be up already); a full
    disk cannot be made in a test, so there the free-space figure is replaced."""
    from collections import namedtuple

    from diffseg.config import ConfigError
    from tune import cluster_checks

    missing = tmp_path / "no-such-tmp"
    env = os.environ | {"RAY_TMPDIR": str(missing), "DIFFSEG_CACHE": str(tmp_path / "cache")}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([sys.executable, "-m", "tune", "search", "smoke", "--storage", str(tmp_path / "studies")],
                         env=env, capture_output=True, text=True, timeout=300)
    tally.TALLY["tried"] += 1
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert out.returncode == 2 and "Traceback" not in out.stderr and len(errors) == 1, out.stderr[-2000:]
    assert f"Ray's temp folder {missing} does not exist; set RAY_TMPDIR" in errors[0]
    tally.TALLY["clean"] += 1
    assert not (tmp_path / "studies" / "smoke").exists() and not missing.exists()

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(cluster_checks.shutil, "disk_usage", lambda p: usage(2**30, 2**30 - 5 * 2**20, 5 * 2**20))
    tally.refused(lambda: cluster_checks.check_temp_space(tmp_path), ConfigError,
                  rf"Ray's temp folder {re.escape(str(tmp_path))} is full \(5 MiB free, Ray needs about 256 MiB")
