"""Speed work must not change results: two tiny runs (one network; the paper's two pathways with
a stage 1) give the validation and test Dice, threshold and kept epoch that the code gave before
the throughput work (recorded at commit fdc1691 with the same settings, on this CPU)."""
import json

import pytest

from diffseg import config
from diffseg.loop import fit
from diffseg.runtime import local

SETTINGS = {"data.dataset": "synthetic", "data.size": 32, "data.synthetic_count": 16, "model.width": 4,
            "model.depth": 2, "train.epochs": 2, "train.iters_per_epoch": 2, "pretrain.epochs": 1,
            "pretrain.iters_per_epoch": 2}
# method -> (val dice, test dice, validation threshold), from `diffseg debug --set ...` at fdc1691
RECORDED = {"supervised": (0.8006756756756757, 0.8343313373253493, 0.98),
            "diffusion_cps": (0.8096054888507719, 0.8065395095367848, 0.54)}


@pytest.mark.parametrize("method", list(RECORDED))
def test_a_tiny_run_scores_what_it_scored_before_the_speed_work(method, tmp_path):
    cfg = config.apply_overrides(config.load("debug"), SETTINGS | {"method": method})
    summary = fit(cfg, tmp_path / "run", local("cpu"), log=lambda msg: None)
    val, test, threshold = RECORDED[method]
    assert summary["val"]["dice"] == pytest.approx(val, abs=1e-6)
    assert summary["test"]["dice"] == pytest.approx(test, abs=1e-6)
    assert summary["val"]["threshold"] == threshold
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["test"]["dice"] == summary["test"]["dice"]
