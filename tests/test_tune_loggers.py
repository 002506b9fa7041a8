"""Tune's per-trial files hold each epoch once when a resumed driver replays epochs the killed
driver had already logged (tune/loggers.py; seen in the chaos test as epochs 1, 2, 2, 3)."""
import csv
import json
from types import SimpleNamespace

from tune.loggers import each_epoch_once


class Trial(SimpleNamespace):
    """What Tune's loggers use of a trial: its folder, config, and no checkpoint to restore."""
    __hash__ = object.__hash__


def test_a_replayed_epoch_is_logged_once_and_new_epochs_still_are(tmp_path):
    folder = tmp_path / "tune" / "t1"
    folder.mkdir(parents=True)  # Tune makes it before any logger starts
    trial = Trial(local_path=str(folder), config={"train.lr": 0.01}, checkpoint=None, trial_id="t1", evaluated_params={},
                  init_local_path=lambda: folder.mkdir(parents=True, exist_ok=True))
    first = each_epoch_once()  # the killed driver's loggers: epochs 1 and 2
    for logger in first:
        logger.log_trial_start(trial)
        for epoch in (1, 2):
            logger.log_trial_result(epoch, trial, {"epoch": epoch, "val_dice": 0.1 * epoch, "training_iteration": epoch})
        logger.log_trial_end(trial)
    second = each_epoch_once()  # the resumed driver's: Tune's state said epoch 1, so 2 is replayed
    for logger in second:
        logger.log_trial_start(trial)
        for epoch in (2, 3):
            logger.log_trial_result(epoch, trial, {"epoch": epoch, "val_dice": 0.1 * epoch, "training_iteration": epoch})
        logger.log_trial_result(4, trial, {"done": True, "training_iteration": 4})  # a result without an epoch still passes
        logger.log_trial_end(trial)

    results = [json.loads(line) for line in (folder / "result.json").read_text().splitlines()]
    assert [r.get("epoch") for r in results] == [1, 2, 3, None]
    with (folder / "progress.csv").open(newline="") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["1", "2", "3", ""]
    assert [type(x).__name__ for x in second] == ["JsonOnce", "CsvOnce", "TensorBoardOnce"]
