"""Noise-aware stopping (tune/paired.py): a trial stops only when a paired test over the
validation images says it is worse than the best trial at the same epoch."""
import json
from types import SimpleNamespace

import optuna
import pytest
from ray.tune.schedulers import TrialScheduler

from diffseg.config import ConfigError
from diffseg.selection import KEPT_IMAGES
from tune import driver
from tune.paired import PairedStopping, paired_p
from tune.paths import journal
from tune.study import parse_study

from factories import read_csv, write_study

NAMES = [f"img{i:02d}" for i in range(12)]


def trial_with(storage, tid: str, dice: list[float], kept_epoch: int = 1, names=NAMES):
    run = storage / "trials" / tid
    run.mkdir(parents=True, exist_ok=True)
    (run / KEPT_IMAGES).write_text(json.dumps({"kept_epoch": kept_epoch, "images": dict(zip(names, dice))}))
    return SimpleNamespace(trial_id=tid)


def test_the_paired_rule_stops_only_a_trial_worse_image_by_image(tmp_path):
    rule = PairedStopping(tmp_path, lambda t: t.trial_id, "val_dice", "max", alpha=0.05, grace_period=2,
                          say=lambda msg: None)
    best = [0.80 + 0.01 * i for i in range(12)]
    a = trial_with(tmp_path, "a", best)
    worse = trial_with(tmp_path, "worse", [v - 0.05 - 0.001 * i for i, v in enumerate(best)])
    mixed = trial_with(tmp_path, "mixed", [v + (0.04 if i % 2 else -0.05) for i, v in enumerate(best)])
    other_images = trial_with(tmp_path, "elsewhere", [0.1] * 12, names=[f"x{i}" for i in range(12)])
    for epoch in (1, 2):
        assert rule.on_trial_result(None, a, {"epoch": epoch, "val_dice": 0.85}) == TrialScheduler.CONTINUE
    # before the grace period nothing stops; then a trial lower on every image does
    assert rule.on_trial_result(None, worse, {"epoch": 1, "val_dice": 0.80}) == TrialScheduler.CONTINUE
    assert rule.on_trial_result(None, worse, {"epoch": 2, "val_dice": 0.80}) == TrialScheduler.STOP
    assert "trial a's on the 12 validation images at epoch 2" in rule.stopped["worse"]
    # lower pooled, but up on half the images: no evidence, it goes on
    assert rule.on_trial_result(None, mixed, {"epoch": 2, "val_dice": 0.84}) == TrialScheduler.CONTINUE
    # scored on other images: nothing to pair with
    assert rule.on_trial_result(None, other_images, {"epoch": 2, "val_dice": 0.10}) == TrialScheduler.CONTINUE
    # a replayed epoch older than the kept model on file is not judged by that model
    late = trial_with(tmp_path, "late", [0.1] * 12, kept_epoch=3)
    assert rule.on_trial_result(None, late, {"epoch": 2, "val_dice": 0.10}) == TrialScheduler.CONTINUE
    assert paired_p(best, best) == 1.0


def test_the_paired_rule_needs_the_single_objective_val_dice(tmp_path):
    with pytest.raises(ConfigError, match="paired compares the kept models' Dice per validation image"):
        parse_study({"config": "debug", "space": {"train.lr": {"float": [0.001, 0.1]}},
                     "objective": {"metric": "pl_cost", "mode": "min"}, "scheduler": {"type": "paired"}})
    with pytest.raises(ConfigError, match="a searched data.split_seed gives each trial other images"):
        parse_study({"config": "debug", "space": {"data.split_seed": {"int": [0, 9]}}, "scheduler": {"type": "paired"}})
    with pytest.raises(ConfigError, match="alpha"):
        parse_study({"config": "debug", "space": {"train.lr": {"float": [0.001, 0.1]}},
                     "scheduler": {"type": "paired", "alpha": 0}})


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_study_stops_the_hopeless_trials_by_the_paired_test(ray_cluster, tmp_path):
    """A real study, one trial at a time: the base config (learning rate 0.02) runs first
    (``enqueue: base``), then the seeded searcher draws 1e-6 twice (seed 2): a network that has
    not moved is worse on every validation image, so both are stopped after epoch 1 (PRUNED in
    Optuna, one epoch in the report), and each run folder's kept-image file holds the validation
    split's images."""
    path = write_study(tmp_path / "paired.yaml", space={"train.lr": {"choice": [1e-6, 0.02]}},
                       trials=3, concurrency=1, searcher={"type": "tpe", "seed": 2}, enqueue="base",
                       scheduler={"type": "paired", "alpha": 0.05, "grace_period": 1},
                       set={"method": "supervised", "train.lr": 0.02, "train.epochs": 2, "train.iters_per_epoch": 30,
                            "data.synthetic_count": 64, "eval.max_items": 0})
    study_dir = driver.search(str(path), storage=str(tmp_path / "studies"))
    rows = read_csv(study_dir / "trials.csv")
    ot = {t.user_attrs["tune_trial_id"]: t for t in
          optuna.load_study(study_name="paired", storage=journal(study_dir)).get_trials()}
    assert [ot[r["trial_id"]].params["train.lr"] for r in rows] == [0.02, 1e-6, 1e-6], rows
    assert [r["state"] for r in rows] == ["COMPLETE", "PRUNED", "PRUNED"], rows
    assert [r["epochs"] for r in rows] == ["2", "1", "1"], rows
    for r in rows:
        run = study_dir / "trials" / r["trial_id"]
        kept = json.loads((run / KEPT_IMAGES).read_text())
        splits = json.loads((run / "splits.json").read_text())
        assert sorted(kept["images"]) == sorted(splits["val"]) and len(kept["images"]) >= 6
        assert ot[r["trial_id"]].state.name == r["state"]
