"""One process owns a run folder or a benchmark folder: a second is refused with the holder's pid,
and the lock goes with the process however it ends."""
import os
import subprocess
import sys
import time

import pytest

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
        with pytest.raises(StorageError, match=f"run folder .* is in use by pid {proc.pid} on "):
            FolderLock(tmp_path / "run", "run folder").acquire()
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
