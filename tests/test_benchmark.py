"""The methods benchmark: a smoke benchmark on real GlaS through Ray trials, its tables and plots
read back, a second invocation that runs nothing again, and the intervals by hand."""
import csv
import math
import re

import pytest

from diffseg.errors import ConfigError
from experiments import bench_report, benchmark


def test_confidence_interval_and_paired_verdicts_by_hand():
    mean, half = bench_report.mean_ci([1.0, 2.0, 3.0])
    # sd = 1, n = 3, t(0.975, 2) = 4.302653
    assert mean == 2.0 and half == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert math.isnan(bench_report.mean_ci([0.7])[1])
    rows = [{"dataset": "d", "ratio": 0.1, "seed": s, "method": m, "test_dice": v}
            for s, (p, b) in enumerate([(0.80, 0.70), (0.82, 0.71), (0.79, 0.70)])
            for m, v in (("diffusion_cps", p), ("supervised", b))]
    result = bench_report.paired(rows, "supervised")[("d", 0.1)]
    assert result["diffs"] == pytest.approx([0.10, 0.11, 0.09]) and result["verdict"] == "paper wins"
    noisy = [dict(r, test_dice=r["test_dice"] + (0.2 if r["seed"] == 1 and r["method"] == "supervised" else 0))
             for r in rows]
    assert bench_report.paired(noisy, "supervised")[("d", 0.1)]["verdict"] == "cannot tell"


def test_cells_have_stable_names_and_presets():
    bench = benchmark.load("default")
    cells = bench.cells({"glas"})
    assert len(cells) == 3 * 3 * 5 and "glas-cps-r10-s0" in {c.name for c in cells}
    cell = next(c for c in cells if c.name == "glas-ua_mt-r5-s2")
    assert cell.config["method"] == "ua_mt" and cell.config["data"]["labeled_ratio"] == 0.05
    assert cell.config["seed"] == 2 and cell.config["data"]["size"] == 64  # the small preset
    with pytest.raises(ConfigError, match="'preset' = 'huge'; choose one of smoke"):
        benchmark.load("default", preset="huge")


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_la_benchmark_has_five_seeds_and_3d_presets():
    bench = benchmark.load("la", "smoke")
    cells = bench.cells()
    assert len(cells) == 3 * 5 * len(bench.methods) and bench.seeds == (0, 1, 2, 3, 4)
    assert {tuple(c.config["data"]["patch"]) for c in cells} == {(16, 16, 16)}
    small = benchmark.load("la", "small").cells()[0].config
    assert small["data"]["patch"] == [32, 32, 32] and small["model"]["width"] == 8
    glas = benchmark.load("small").cells()[0].config  # 2D cells keep the shipped patch (unused)
    assert glas["data"]["size"] == 64 and glas["data"]["patch"] == [96, 96, 80]


def test_smoke_benchmark_on_real_glas_runs_reports_and_skips_finished_cells(ray_cluster, shared_data, tmp_path, capsys):
    folder = benchmark.run("smoke", storage=str(tmp_path), data_root=str(shared_data))
    out = capsys.readouterr().out
    assert "6 cells" in out and "0 already finished, 6 to run" in out and "6/6 done" in out
    with open(folder / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["cell"] for r in rows) == sorted(
        f"glas-{m}-r10-s{s}" for m in ("diffusion_cps", "supervised", "cps") for s in (0, 1))
    assert all(0 <= float(r["test_dice"]) <= 1 and r["device"] == "cpu" and float(r["wall_s"]) > 0 for r in rows)
    table = (folder / "table.md").read_text()
    assert "### glas, 10 % labels" in table and "| diffusion_cps | 2 |" in table
    assert "The paper's method against each baseline" in table and "| glas | 10 % | cps |" in table
    assert "Predicting foreground everywhere scores test Dice" in table
    for png in ("dice_vs_ratio.png", "cost.png"):
        assert (folder / "plots" / png).stat().st_size > 1000
    # stage 1 of the paper's method: one pretraining per stage-1 key (two seeds: two keys)
    assert len(list((folder / "pretrained").glob("*.pt"))) == 2
    # a second invocation runs no cell again and rebuilds the same table
    starts = len(list((folder / "trial_starts").glob("*.json")))
    benchmark.run("smoke", storage=str(tmp_path), data_root=str(shared_data))
    assert "6 already finished, 0 to run" in capsys.readouterr().out
    assert len(list((folder / "trial_starts").glob("*.json"))) == starts
    assert (folder / "table.md").read_text() == table
    assert benchmark.main(["report", "smoke", "--storage", str(tmp_path)]) == 0


def test_local_lanes_run_cells_without_ray_into_the_same_folders(shared_data, tmp_path, capsys):
    folder = benchmark.run("smoke", storage=str(tmp_path), data_root=str(shared_data), local=2, device="cpu",
                           only=("glas-supervised-*",))
    out = capsys.readouterr().out
    assert "2 of its 6 by --only" in out and "2/2 done, about 0 min left" in out
    assert re.search(r"cell glas-supervised-r10-s0 finished \(val Dice 0\.\d{4}\); [12]/2 done", out), out
    with open(folder / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["cell"] for r in rows) == ["glas-supervised-r10-s0", "glas-supervised-r10-s1"]
    assert all(0 <= float(r["test_dice"]) <= 1 for r in rows)
    benchmark.run("smoke", storage=str(tmp_path), data_root=str(shared_data), local=2, only=("glas-supervised-*",))
    assert "2 already finished, 0 to run" in capsys.readouterr().out


def test_a_local_benchmark_needs_neither_ray_nor_optuna():
    import subprocess
    import sys

    code = ("import sys; from experiments import benchmark, local, bench_report; "
            "cells = benchmark.load('gpu_glas_authors').cells(); "
            "assert cells[0].config['protocol'] == 'paper'; "
            "print(sorted(m for m in ('ray', 'optuna') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


def test_mid_preset_keeps_the_structures_it_scores(shared_data):
    """The `mid` table trains at the paper's 128 px, and no 2D cell shrinks its images more than
    4x (where `data info` warns that small structures vanish): DRIVE's 565 px images train on
    tiles at their own scale instead."""
    from diffseg import config as config_mod
    from diffseg.data import sources

    bench = benchmark.load("mid")
    cells = bench.cells()
    assert len(cells) == 3 * 3 * 5 and bench.preset == "mid"
    first = {}
    for cell in cells:
        first.setdefault(cell.config["data"]["dataset"], cell.config)
    assert set(first) == {"glas", "ph2", "drive"}
    for name, raw in first.items():
        data = config_mod.from_dict(raw).data
        assert data.size == 128, name
        source = sources.open_source(data, shared_data)
        image, _, _ = source.read(source.items[0])
        shrink = max(image.shape[:2]) / data.size if data.scale == 0 else 1 / data.scale
        assert shrink <= 4, f"{name}: images of {image.shape[:2]} shrunk {shrink:.1f}x"
    assert config_mod.from_dict(first["drive"]).data.scale == 1.0
    # equal budget: every method's stage 2 has the same iterations and batch
    budgets = {(c.config["train"]["epochs"] * c.config["train"]["iters_per_epoch"], c.config["train"]["batch_size"])
               for c in cells}
    assert budgets == {(120, 4)}


def test_a_tuned_config_is_scored_on_seeds_its_study_never_saw_and_the_table_says_it_was_tuned(tmp_path):
    """`tuned:` hands the paper's method a study's best config: the benchmark refuses final seeds
    the study trained on, and the table says the comparison is tuned against untuned."""
    import tally
    from diffseg import config as config_mod

    best = tmp_path / "best.yaml"
    config_mod.save(config_mod.load("glas", {"train.lr": 0.0123, "seed": 0, "data.split_seed": 0}), best)
    data = {"name": "t", "datasets": {"glas": "glas"}, "ratios": [0.1], "methods": ["diffusion_cps", "supervised"],
            "preset": "smoke", "tuned": {"glas": str(best)}}
    tally.refused(lambda: benchmark.parse(data | {"seeds": [0, 1]}), ConfigError,
                  r"tuned with seed and data.split_seed values \[0\], and this benchmark scores seed\(s\) \[0\] again.*"
                  r"seeds: \[1, 2\]")
    bench = benchmark.parse(data | {"seeds": [1, 2]})
    lr = {c.name: c.config["train"]["lr"] for c in bench.cells()}
    assert lr["glas-diffusion_cps-r10-s1"] == 0.0123 and lr["glas-supervised-r10-s1"] != 0.0123
    caveat = "\n".join(bench_report.tuned_caveat({"tuned": {"glas": str(best)}}))
    assert "Tuned against untuned" in caveat and "not a fair comparison" in caveat
    assert bench_report.tuned_caveat({"tuned": {}}) == []
