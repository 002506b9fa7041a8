"""Full and read-only storage, on real small file systems: a tmpfs mounted inside a private user
and mount namespace (`unshare -rm`, no privileges needed), so nothing outside the test sees it.

Each failing write must end the command with one line naming the path and the cause (exit 2, no
traceback), and nothing half-written may be taken for complete: once there is room again the same
command finishes the run with every epoch recorded once."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SETS = ["data.size=32", "data.synthetic_count=24", "model.width=4", "model.depth=2", "pretrain.epochs=1",
        "train.epochs=2", "pretrain.iters_per_epoch=2", "train.iters_per_epoch=2"]


def namespaces_work() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.fixture(scope="module")
def in_namespace():
    if not namespaces_work():
        if os.environ.get("CI") == "true":
            pytest.fail("`unshare -rm` cannot mount a tmpfs here: the storage tests need user namespaces")
        pytest.skip("`unshare -rm` cannot mount a tmpfs on this machine")

    def run(script: str, tmp_path: Path) -> str:
        (tmp_path / "script.sh").write_text("set -u\nexec 2>&1\n" + script)
        done = subprocess.run(["unshare", "-rm", "sh", str(tmp_path / "script.sh")], capture_output=True, text=True,
                              cwd=ROOT, timeout=600, env=os.environ | {"PYTHONUNBUFFERED": "1"})
        return done.stdout + done.stderr
    return run


def errors(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("error:")]


def test_full_and_read_only_storage_give_one_line_errors_and_lose_nothing(in_namespace, tmp_path):
    mnt, cache = tmp_path / "mnt", tmp_path / "cache"
    mnt.mkdir(), cache.mkdir()
    py = f"{sys.executable} -m diffseg debug --set {' '.join(SETS)}"
    script = f"""
export DIFFSEG_CACHE={tmp_path}/shared-cache
D={mnt}
mount -t tmpfs -o size=100k tmpfs $D
echo "== full"; {py} --run-dir $D/run; echo "rc=$?"
find $D -name '*.tmp' | sed 's/^/temporary left: /'
mount -o remount,size=20m $D
echo "== room again"; {py} --run-dir $D/run > /dev/null; echo "rc=$?"
sed 's/^/metrics: /' $D/run/metrics.jsonl
cp $D/run/summary.json {tmp_path}/summary.before
mount -o remount,ro $D
echo "== read-only, the finished run again"; {py} --run-dir $D/run; echo "rc=$?"
echo "== read-only, a new run"; {py} --run-dir $D/new; echo "rc=$?"
cmp -s $D/run/summary.json {tmp_path}/summary.before && echo "summary intact"
mount -t tmpfs -o size=200k tmpfs {cache}
echo "== full cache folder"; DIFFSEG_CACHE={cache} {py} --run-dir {tmp_path}/run3 --set data.size=64; echo "rc=$?"
ls -A {cache} | sed 's/^/cache holds: /'
"""
    out = in_namespace(script, tmp_path)
    assert "Traceback" not in out, out
    sections = {part.split("\n", 1)[0].strip(): part.split("\n", 1)[1] for part in out.split("== ")[1:]}
    full = sections["full"]
    assert "rc=2" in full and len(errors(full)) == 1, full
    assert str(mnt / "run") in errors(full)[0] and "No space left on device" in errors(full)[0]
    assert "temporary left" not in full
    again = sections["room again"]
    assert "rc=0" in again, out
    stages = [line for line in again.splitlines() if line.startswith("metrics: ")]
    epochs = [(s.split('"stage": "')[1].split('"')[0], s.split('"epoch": ')[1].split(",")[0]) for s in stages
              if '"epoch"' in s]
    assert len(epochs) == len(set(epochs)) and ("train", "1") in epochs, stages  # every epoch once
    for name, why in (("read-only, the finished run again", "holds a finished run"),  # final before it is written
                      ("read-only, a new run", "Read-only file system")):
        section = sections[name]
        assert "rc=2" in section and len(errors(section)) == 1, section
        assert why in errors(section)[0] and str(mnt) in errors(section)[0]
    assert "summary intact" in sections["read-only, a new run"]
    cache_full = sections["full cache folder"]
    assert "rc=2" in cache_full and len(errors(cache_full)) == 1, cache_full
    assert str(cache) in errors(cache_full)[0] and "MB are free" in errors(cache_full)[0]
    held = [line for line in cache_full.splitlines() if line.startswith("cache holds: ")]
    assert all(line.endswith(".lock") for line in held), held  # no half-built cache file
    print("\nstorage faults tried: 4 (full run folder, full cache folder, read-only finished run, read-only "
          "new run): 4 one-line errors naming the path, 0 tracebacks, 0 temporaries left, "
          "the full run finished once there was room with every epoch recorded once")
