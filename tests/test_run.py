"""Whole runs: determinism, resume, the run directory, the command line, real GlaS end to end."""
import json

import numpy as np
import pytest
from PIL import Image

from diffseg import cli, config
from diffseg.data import prepare
from diffseg.errors import ConfigError
from diffseg.loop import Loop, fit as train
from diffseg.methods import METHODS
from diffseg.runtime import Runtime


def train_records(run_dir):
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


def without_time(records):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def test_run_directory_contents_and_determinism(tiny_cfg, tmp_path):
    a = train(tiny_cfg, tmp_path / "a", log=lambda m: None)
    b = train(tiny_cfg, tmp_path / "b", log=lambda m: None)
    assert a["test"] == b["test"] and a["selected"] == b["selected"]
    assert without_time(train_records(tmp_path / "a")) == without_time(train_records(tmp_path / "b"))
    run = tmp_path / "a"
    for name in ("config.yaml", "environment.json", "splits.json", "metrics.jsonl", "summary.json",
                 "pretrained.pt", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (run / name).exists(), name
    assert config.load(run / "config.yaml") == tiny_cfg
    env = json.loads((run / "environment.json").read_text())
    assert env["packages"]["torch"] and env["device"] == "cpu" and "git_commit" in env
    assert list((run / "tb").glob("events.out.tfevents.*"))
    stages = [r["stage"] for r in train_records(run)]
    assert stages == ["pretrain"] + ["train"] * 2 + ["final"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["protocol"] == "standard" and {"dice", "jaccard", "hd95_mean", "asd_mean"} <= set(summary["test"])
    assert summary["selected"]["predictor"] in ("teacher", "student") and summary["method"] == "diffusion_cps"
    # stage 1 shows whether it learned: the label-free teacher mask beside the all-foreground Dice
    pre = [r for r in train_records(run) if r["stage"] == "pretrain"]
    assert 0 <= pre[0]["val_dice_unsupervised"] <= 1 and 0 < pre[0]["val_dice_all_foreground"] <= 1


class Killed(Exception):
    pass


def test_resume_equals_uninterrupted(tiny_cfg, tmp_path):
    cfg = config.apply_overrides(tiny_cfg, {"train.epochs": 3})
    full = train(cfg, tmp_path / "full", log=lambda m: None)

    def kill_after_first_epoch(metrics):
        if metrics["epoch"] == 1:
            raise Killed

    with pytest.raises(Killed):
        Loop(cfg, tmp_path / "cut", Runtime(report=kill_after_first_epoch), log=lambda m: None).fit()
    # a record written after the checkpoint by the killed process must not be duplicated
    with open(tmp_path / "cut" / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps({"stage": "train", "epoch": 2, "loss": 123.0}) + "\n")
    messages = []
    resumed = train(cfg, tmp_path / "cut", log=messages.append)
    assert any("resuming" in m and "train epoch 1" in m for m in messages)
    assert resumed["test"] == full["test"] and resumed["selected"] == full["selected"]
    assert without_time(train_records(tmp_path / "cut")) == without_time(train_records(tmp_path / "full"))


def test_run_killed_after_its_last_epoch_resumes_to_the_end(tiny_cfg, tmp_path):
    """Stopped between the last epoch's checkpoint and the summary: the resume reports the last
    epoch again (a Tune scheduler must see it) and finishes without training again."""
    def killed_before_scoring(message: str) -> None:
        if message.startswith("training done"):  # the last checkpoint is saved, no summary yet
            raise Killed

    with pytest.raises(Killed):
        Loop(tiny_cfg, tmp_path / "r", log=killed_before_scoring).fit()
    assert not (tmp_path / "r" / "summary.json").exists()
    reports = []
    summary = Loop(tiny_cfg, tmp_path / "r", Runtime(report=reports.append), log=lambda m: None).fit()
    assert [r["epoch"] for r in reports] == [tiny_cfg.train.epochs]
    uninterrupted = train(tiny_cfg, tmp_path / "whole", log=lambda m: None)
    assert summary["test"] == uninterrupted["test"] and summary["selected"] == uninterrupted["selected"]
    stages = [r["stage"] for r in train_records(tmp_path / "r")]
    assert stages == ["pretrain"] + ["train"] * tiny_cfg.train.epochs + ["final"]


def test_run_dir_of_another_config_is_refused(tiny_cfg, tmp_path):
    train(tiny_cfg, tmp_path / "r", log=lambda m: None)
    other = config.apply_overrides(tiny_cfg, {"diffusion_cps.loss.cps": 0.5})
    with pytest.raises(ConfigError, match="another config"):
        train(other, tmp_path / "r", log=lambda m: None)
    assert config.load(tmp_path / "r" / "config.yaml") == tiny_cfg  # nothing overwritten


def test_bad_data_fails_before_the_run_directory_is_written(tmp_path):
    from helpers import make_folder_dataset, write_pair

    root = make_folder_dataset(tmp_path / "d", 6)
    write_pair(root / "images", root / "masks", "img4", mask_values=(0, 3))
    code = cli.main(["debug", "--dataset", "folder", "--data-root", str(root), "--run-dir", str(tmp_path / "run")])
    assert code == 2 and not (tmp_path / "run").exists()


def test_paper_protocol_says_so(tiny_cfg, tmp_path):
    cfg = config.apply_overrides(tiny_cfg, {"protocol": "paper", "train.epochs": 1})
    reports = []
    summary = train(cfg, tmp_path / "p", Runtime(report=reports.append), log=lambda m: None)
    assert "TEST split" in summary["note"] and summary["selected"]["split"] == "test"
    assert "TEST split" in (tmp_path / "p" / "summary.json").read_text()
    # the selection metrics are named for the split they come from, in every output
    stage2 = [r for r in train_records(tmp_path / "p") if r["stage"] == "train"]
    for record in stage2 + reports:
        assert "test_dice" in record and "test_dice_teacher" in record
        assert not any(k.startswith("val_dice") for k in record), record


def test_cli_debug_eval_predict(tmp_path, capsys):
    run = tmp_path / "run"
    sets = ["data.size=32", "model.width=4", "model.depth=2", "pretrain.epochs=1", "train.epochs=1",
            "train.iters_per_epoch=1", "data.synthetic_count=16"]
    assert cli.main(["debug", "--run-dir", str(run), "--set", *sets]) == 0
    out = capsys.readouterr().out
    assert "[pretrain 1/1]" in out and "label-free teacher mask" in out and "[train 1/1]" in out
    assert "final test dice" in out
    assert cli.main(["eval", str(run), "--split", "val"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["split"] == "val" and 0 <= result["dice"] <= 1 and result["method"] == "diffusion_cps"
    images = tmp_path / "new"
    images.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(images / "a.png")
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (33, 20, 3), dtype=np.uint8)).save(images / "b.jpg")
    assert cli.main(["predict", str(run), "--input", str(images), "--output", str(tmp_path / "out"),
                     "--probabilities"]) == 0
    mask = np.array(Image.open(tmp_path / "out" / "a.png"))
    assert mask.shape == (50, 70) and set(np.unique(mask)) <= {0, 255}
    assert np.array(Image.open(tmp_path / "out" / "b.png")).shape == (33, 20)
    assert (tmp_path / "out" / "a_prob.png").exists()
    assert cli.main(["predict", str(run), "--input", str(tmp_path / "empty"), "--output", str(tmp_path / "o2")]) == 2


def test_bench_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    assert cli.main(["bench", "--steps", "1", "--output", str(out), "--set", "data.size=32", "model.width=4",
                     "model.depth=2"]) == 0
    result = json.loads(out.read_text())
    names = [r["name"] for r in result["rows"]]
    assert "diffusion_cps stage1 step" in names and "diffusion_cps R=3 chained" in names
    assert "predict sample_steps=10" in names
    assert {f"train step {m}" for m in ("diffusion_cps", "supervised", "mean_teacher", "ua_mt", "cps")} <= set(names)
    costs = {r["method"]: r["relative_cost"] for r in result["rows"] if "relative_cost" in r}
    # costs are ratios of two timings; their size is a benchmark's figure, not a test's (a
    # one-step timing on a busy machine can invert them), so only their form is checked here
    assert costs["supervised"] == 1.0 and set(costs) == set(METHODS) and all(c > 0 for c in costs.values())
    assert result["hardware"]["device"] == "cpu" and all(r["steps_per_s"] > 0 for r in result["rows"])


def test_bench_and_overhead_keep_an_earlier_result_unless_told(tmp_path, capsys):
    """An existing --output is someone's earlier measurement: refused before any measuring."""
    import tally
    from tune import cli as tune_cli

    earlier = tmp_path / "bench.json"
    earlier.write_text('{"rows": "an earlier result"}')
    tally.attempt(["bench", "--steps", "1", "--output", str(earlier)], capsys,
                  r"--output .*bench.json exists \(an earlier result\).*--overwrite", keep=(earlier,))
    tally.attempt(["bench", "--output", str(tmp_path)], capsys, "is a folder; name a file")
    tally.attempt(["bench", "--output", str(earlier / "out.json")], capsys, r"bench.json is a file, not a folder",
                  keep=(earlier,))
    tally.attempt(["overhead", "--output", str(earlier)], capsys, "exists .*--overwrite", keep=(earlier,),
                  main=tune_cli.main)


@pytest.mark.slow
def test_debug_on_real_glas_beats_all_foreground(shared_data, tmp_path, capsys):
    run = tmp_path / "glas"
    assert cli.main(["debug", "--dataset", "glas", "--data-root", str(shared_data), "--run-dir", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    cfg = config.load(run / "config.yaml")
    data = prepare(cfg.data, root=shared_data)
    test = data.dataset("test")
    gt = np.stack([test[i]["mask"].numpy() for i in range(len(test))]).astype(bool)
    trivial = 2 * gt.sum() / (gt.size + gt.sum())  # Dice of predicting foreground everywhere
    assert summary["test"]["n"] == 80
    assert summary["test"]["dice"] > trivial + 0.01, (summary["test"], trivial)
