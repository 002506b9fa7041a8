"""The reproduction protocol (experiments/benchmarks/reproduce.yaml, REPRODUCE.md): its cells
train the authors' network with their optimizer, batch, epochs and schedule, draw their labeled
subsets, select on the test split with their grid, and the honest twin keeps the same subsets.
Also the pieces it is made of (the XNet Dice loss, the schedule, variants in benchmark files)."""
import dataclasses
import math
import random
import re

import pytest
import torch

import tally
from diffseg import config, losses
from diffseg.data import prepare
from diffseg.errors import ConfigError
from diffseg.loop import Loop, iterations, lr_at
from diffseg.methods import Step, build_method
from diffseg.methods.base import ramp
from diffseg.runtime import local
from experiments import bench_report, benchmark


def cell(bench, name):
    return next(c for c in benchmark.load(bench).cells() if c.name == name).config


def test_reproduce_cells_train_with_the_spec_optimizer_batch_epochs_and_network():
    cells = benchmark.load("reproduce").cells()
    assert len(cells) == 50  # 5 published cells x 10 seeds (no UA-MT at 20 %)
    assert {c.config["seed"] for c in cells} == set(range(10))
    for c in cells:
        cfg = config.from_dict(c.config)
        t = cfg.train
        assert (t.optimizer, t.lr, t.momentum, t.weight_decay, t.batch_size, t.epochs) == ("sgd", 0.5, 0.9, 5e-5, 2, 200)
        assert (t.schedule, t.warmup_epochs, t.decay_every) == ("gradual_warmup", 20, 50)
        assert (cfg.model.arch, cfg.model.width, cfg.data.size, cfg.loss.supervised) == ("xnet_unet", 16, 128, "dice")
        assert cfg.protocol == "paper" and cfg.eval.resolution == "training" and cfg.data.val_ratio == 0
        assert cfg.eval.every == (2 if cfg.method == "supervised" else 1)
    cps = config.from_dict(cell("reproduce", "glas-cps-r20-s3"))
    assert (cps.cps.pseudo_loss, cps.cps.consistency, cps.loss.ramp, cps.loss.ramp_per) == ("dice", 5.0, "linear", "epoch")
    net = build_method(config.from_dict(cell("reproduce", "glas-supervised-r10-s0")), 3).networks["net"]
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(1.81e6, rel=0.01)  # REPRODUCE.md: about 1.81 M


def test_the_schedule_is_the_table_of_the_spec():
    t = config.from_dict(cell("reproduce", "glas-supervised-r10-s0")).train
    table = {0: 0.0, 1: 0.025, 10: 0.25, 19: 0.475, 20: 0.5, 70: 0.5, 71: 0.25, 120: 0.25, 121: 0.125,
             170: 0.125, 171: 0.0625, 199: 0.0625}
    assert {e: lr_at(t, e) for e in table} == pytest.approx(table)


def test_labeled_subsets_iterations_and_the_honest_twin_on_real_glas(shared_data):
    for ratio, n_lab, iters in ((0.1, 9, 5), (0.2, 17, 9)):
        name = f"glas-cps-r{round(ratio * 100)}-s4"
        authors = config.from_dict(cell("reproduce", name))
        data = prepare(authors.data, progress=False, root=shared_data)
        s = data.splits
        names = sorted(s.labeled + s.unlabeled)
        random.Random(4).shuffle(names)  # the authors' draw, sorted order standing in for os.listdir
        assert s.labeled == tuple(sorted(names[:n_lab])) and len(s.unlabeled) == 85 - n_lab and not s.val
        assert iterations(len(s.labeled), authors.train.batch_size, 1, 0) == iters
        honest = config.from_dict(cell("reproduce_honest", name))
        assert honest.protocol == "standard" and honest.eval.resolution == "original"
        h = prepare(honest.data, progress=False, root=shared_data).splits
        assert h.labeled == s.labeled and len(h.val) == 13 and set(h.val) <= set(s.unlabeled)
        assert not set(h.val) & set(h.unlabeled) and h.test == s.test


def test_xnet_dice_matches_the_formula_and_scores_background_alone_without_foreground():
    scores = torch.randn(2, 2, 4, 4)
    labels = (torch.rand(2, 4, 4) > 0.5).long()
    p = scores.softmax(1)
    want = 0.0
    for k in range(2):
        t = (labels == k).float()
        per = [1 - (2 * (p[b, k] * t[b]).sum() + 1) / ((p[b, k] ** 2).sum() + (t[b] ** 2).sum() + 1) for b in range(2)]
        want += sum(per) / 2
    assert losses.xnet_dice(scores, labels) == pytest.approx(float(want) / 2, rel=1e-6)
    empty = torch.zeros(2, 4, 4, dtype=torch.long)  # F.one_hot without a class count: one channel
    t = torch.ones(4, 4)
    alone = sum(1 - (2 * (p[b, 0] * t).sum() + 1) / ((p[b, 0] ** 2).sum() + 16 + 1) for b in range(2)) / 2
    assert losses.xnet_dice(scores, empty) == pytest.approx(float(alone), rel=1e-6)


def test_linear_ramp_by_epoch_is_the_authors_weight():
    cfg = config.from_dict(cell("reproduce", "glas-ua_mt-r10-s0"))
    for epoch in (0, 57, 199):
        step = Step(epoch, 3, 5, 200)
        assert 5.0 * ramp(cfg.loss, step) == pytest.approx(5 * (epoch + 1) / 200)
    ua = build_method(cfg, 3)
    start = ua.threshold(Step(0, 4, 5, 200))
    assert start == pytest.approx((0.75 + 0.25 * math.exp(-5)) * math.log(2))  # sigmoid_rampup(0, 200)
    assert ua.threshold(Step(100, 0, 5, 200)) == ua.threshold(Step(100, 4, 5, 200))  # counted by epoch


def test_validation_every_two_epochs_reports_only_the_validated_ones(tmp_path):
    cfg = config.load("debug", {"method": "supervised", "data.size": 32, "data.synthetic_count": 12, "model.width": 4,
                                "model.depth": 2, "train.epochs": 5, "train.iters_per_epoch": 1, "eval.every": 2,
                                "eval.thresholds": [0.0, 0.88, 0.02]})
    reports = []
    runtime = dataclasses.replace(local("cpu"), report=reports.append)
    summary = Loop(cfg, tmp_path / "run", runtime, log=lambda m: None).fit()
    assert [r["epoch"] for r in reports] == [2, 4, 5]  # epochs 2 and 4 (from 1), and the last
    assert summary["selected"]["epoch"] in (2, 4, 5) and 0.0 <= summary["selected"]["threshold"] <= 0.88


def test_benchmark_variants_exclude_and_references_are_checked(tmp_path):
    good = {"name": "t", "datasets": {"glas": "glas"}, "preset": "smoke", "seeds": [0, 1],
            "methods": ["supervised", {"name": "sup_every2", "method": "supervised", "set": {"eval.every": 2}}],
            "reference": {"glas-supervised-r10": {"dice": 80.83, "source": "a paper"}}}
    bench = benchmark.parse(good)
    names = [c.name for c in bench.cells()]
    assert names == ["glas-supervised-r10-s0", "glas-sup_every2-r10-s0", "glas-supervised-r10-s1",
                     "glas-sup_every2-r10-s1"]
    assert bench.cells()[1].config["eval"]["every"] == 2 and bench.parent("sup_every2") == "supervised"
    assert len(benchmark.parse(good | {"exclude": ["glas-sup_every2-r10"]}).cells()) == 2
    for bad, message in [
            ({"exclude": ["glas-cps-r10"]}, "exclude: 'glas-cps-r10' is no row"),
            ({"reference": {"glas-supervised-r10": {"dice": 0.81}}}, "must be {dice"),
            ({"reference": {"glas-supervised-r10": {"dice": 180, "source": "x"}}}, "percentage in"),
            ({"methods": ["supervised", {"name": "a-b", "method": "supervised"}]}, "variant name 'a-b'"),
            ({"methods": ["supervised", {"name": "v", "method": "nope"}]}, "method 'nope' is not one of"),
            ({"methods": ["supervised", {"name": "v", "method": "supervised", "set": {"train.lrr": 1}}]}, "cell glas-v-r10-s0: unknown"),
            ({"methods": ["supervised", "cps", "cps"]}, "names a row twice"),
            ({"literature": {"BCP": {"dice": 0.9, "source": "x", "year": 2023}}}, "literature 'BCP' must be {dice")]:
        tally.refused(lambda: benchmark.parse(good | bad), ConfigError, re.escape(message))


def test_the_report_puts_published_values_and_variants_beside_ours():
    bench = {"reference": {"glas-supervised-r10": {"dice": 80.0, "source": "s", "protocol": "p"}},
             "variants": {"v": {"name": "v", "method": "supervised", "set": {}}}, "methods": ["supervised", "v"]}
    rows = [{"dataset": "glas", "ratio": 0.1, "seed": s, "method": m, "test_dice": d}
            for s, (a, b) in enumerate([(0.80, 0.70), (0.82, 0.71), (0.81, 0.72)])
            for m, d in (("supervised", a), ("v", b))]
    groups = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["ratio"], r["method"]), []).append(r)
    table = "\n".join(bench_report.against_published(bench, groups))
    half90 = bench_report.mean_ci([80.0, 82.0, 81.0], 0.90)[1]
    assert f"| glas-supervised-r10 | 80.00 | p | 81.00 | {half90:.2f} |" in table and "| 3 | +1.00 |" in table
    assert "| glas | 10 % | v | supervised | -0.100, -0.110, -0.090 |" in "\n".join(bench_report.against_parents(bench, rows))
    assert "v lower" in "\n".join(bench_report.against_parents(bench, rows))


def test_config_refuses_a_grid_or_statistics_it_cannot_use():
    for bad, message in [({"eval.thresholds": [0.5, 0.2, 0.02]}, "eval.thresholds"),
                         ({"eval.thresholds": [0.0, 0.9]}, "eval.thresholds"),
                         ({"data.mean": [0.5], "data.std": []}, "data.mean"),
                         ({"data.mean": [0.5], "data.std": [0.0]}, "data.mean"),
                         ({"model.arch": "xnet_unet", "data.dataset": "la"}, "2D only")]:
        tally.refused(lambda: config.load("debug", bad), ConfigError, message)


def test_reproduce_table_pairs_the_two_protocols_by_seed(tmp_path):
    import json

    import yaml

    from experiments import reproduce_table

    for name, dice in (("reproduce", {0: 0.81, 1: 0.80}), ("reproduce_honest", {0: 0.78, 1: 0.79})):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "benchmark.yaml").write_text(yaml.safe_dump(
            {"reference": {"glas-supervised-r10": {"dice": 80.83, "source": "s", "protocol": "p"}}}))
        for seed, d in dice.items():
            run = folder / "trials" / f"glas-supervised-r10-s{seed}"
            run.mkdir(parents=True)
            (run / "config.yaml").write_text(yaml.safe_dump(
                {"data": {"dataset": "glas", "labeled_ratio": 0.1}, "seed": seed, "method": "supervised"}))
            (run / "summary.json").write_text(json.dumps(
                {"selected": {"predictor": "net"}, "test": {"dice": d}, "val": {}, "wall_s": 120.0}))
    out = reproduce_table.write(tmp_path, tmp_path / "out")
    text = out.read_text()
    # authors' mean 80.50 (-0.33 from 80.83); honest 78.50; paired effect +3.0 and +1.0: 2.00
    assert "| glas-supervised-r10 | 80.83 | 80.50 ± " in text and "| 2 | -0.33 | 78.50 ± " in text
    assert "| 2.00 ± " in text and "| 2.0 |" in text
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "table.md").write_text("my notes")
    with pytest.raises(SystemExit, match="was not written by this table"):
        reproduce_table.write(tmp_path, tmp_path / "mine")
    assert (tmp_path / "mine" / "table.md").read_text() == "my notes"


def test_the_ablation_file_runs_each_variant_of_the_paper_method_against_it():
    bench = benchmark.load("ablation")
    assert bench.methods == ("diffusion_cps", "no_stage1", "one_round", "chained")
    assert [bench.parent(m) for m in bench.methods] == [None, "diffusion_cps", "diffusion_cps", "diffusion_cps"]
    cfg = {c.name: c.config for c in bench.cells()}
    assert cfg["ph2-no_stage1-r10-s2"]["pretrain"]["epochs"] == 0
    assert cfg["glas-diffusion_cps-r10-s0"]["diffusion_cps"]["rounds"] == 3
    assert cfg["glas-chained-r10-s1"]["diffusion_cps"]["round_mode"] == "chained"


def test_max_items_bounds_each_epochs_validation_and_the_kept_model_is_scored_on_all(tmp_path):
    cfg = config.load("debug", {"method": "supervised", "data.size": 32, "data.synthetic_count": 40, "model.width": 4,
                                "model.depth": 2, "train.epochs": 2, "train.iters_per_epoch": 1, "eval.max_items": 2,
                                "data.val_ratio": 0.25})
    loop = Loop(cfg, tmp_path / "run", log=lambda m: None)
    chosen = loop.selection.items("epoch:val")
    assert len(chosen) == 2 and set(chosen) <= set(loop.data.splits.val) and chosen == loop.selection.items("epoch:val")
    assert loop.selection.items("val") == "val"
    summary = loop.fit()
    assert summary["val"]["n"] == len(loop.data.splits.val) > 2


def test_the_fields_published_values_of_other_methods_are_printed_as_context():
    """`literature:` names methods the benchmark does not run (LA's BCP, AD-MT): their values go
    beside the table as the field's, never as a row of ours."""
    bench = benchmark.load("la")
    assert bench.literature["BCP (LA, 10 %)"]["dice"] == 89.62
    lines = "\n".join(bench_report.the_field({"literature": bench.literature}))
    assert "## The field's published values (methods not run here)" in lines and "| AD-MT (LA, 10 %) | 90.55 |" in lines
    assert bench_report.the_field({"literature": {}}) == []

