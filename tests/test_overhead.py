"""`python -m tune overhead`: the documented benchmark runs end to end on a tiny config (its own
local Ray instance, started and stopped by the command) and writes its figures."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from factories import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_overhead_command_runs_the_four_ways_and_writes_ratios(tmp_path):
    out = tmp_path / "overhead.json"
    tiny = ["train.epochs=2", "train.iters_per_epoch=2", "pretrain.epochs=1", "pretrain.iters_per_epoch=2",
            "data.size=32", "model.width=4", "model.depth=2", "data.synthetic_count=16"]
    # a private HOME and a short temp folder (Ray's socket paths have a length limit): the
    # command's own Ray instance must not join another cluster
    short = Path(tempfile.mkdtemp(prefix="dso", dir="/tmp"))
    env = os.environ | {"HOME": str(short), "TMPDIR": str(short), "RAY_TMPDIR": str(short),
                        "DIFFSEG_CACHE": str(tmp_path / "cache")}
    env.pop("RAY_ADDRESS", None)
    try:
        proc = subprocess.run([sys.executable, "-m", "tune", "overhead", "--config", "debug", "--set", *tiny,
                               "--output", str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=540)
    finally:
        shutil.rmtree(short, ignore_errors=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    run = result["runs"][0]
    assert result["epochs"] == 2 and result["repeats"] == 1
    for way in ("inprocess", "inprocess_ray_up", "torchtrainer", "tune_trial"):
        assert run[f"epoch_s_{way}"] > 0 and run[f"run_s_{way}"] > 0
    # the stored epoch times are rounded (to 0.1 ms): the ratio of the rounded ones agrees to 1 %
    assert result["median_epoch_ratio"] == pytest.approx(run["epoch_s_torchtrainer"] / run["epoch_s_inprocess"],
                                                         rel=0.01)
    assert result["median_tune_trial_run_ratio"] == pytest.approx(run["run_s_tune_trial"] / run["run_s_inprocess"],
                                                                  rel=0.05)
