"""Noise-aware stopping (study key ``scheduler: {type: paired, alpha: A}``): a trial is stopped
only when a paired test over the validation images says its kept model is worse than the best
trial's at the same epoch, not because one seed's pooled Dice came out lower.

After ``grace_period`` epochs, at each epoch a trial reports, its kept model's Dice per
validation image (``kept_images.json`` in its run folder, written by the run's selection) is
compared, image by image, with that of the trial whose reported objective is best at the same
epoch; the trial stops when its objective is lower and a one-sided Wilcoxon signed-rank test over
the paired per-image differences gives p < A (as Optuna's ``WilcoxonPruner`` does over
instances). Trials compare only when they scored the same images (the same validation split:
``data.split_seed`` not searched). ASHA, beside it, stops by rank alone: it fits when epochs are
cheap and many trials are to be ranked quickly; this rule fits when a trial's objective is noisy
(few validation images, small differences between configurations) and a wrong stop costs more
than an epoch."""
from __future__ import annotations

import json
from pathlib import Path

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from diffseg.selection import KEPT_IMAGES


def paired_p(worse: list[float], better: list[float]) -> float:
    """One-sided p of a Wilcoxon signed-rank test that ``worse`` is lower than ``better``, image
    by image (1.0 when every difference is zero: nothing says it is worse)."""
    from scipy.stats import wilcoxon

    if all(a == b for a, b in zip(worse, better)):
        return 1.0
    return float(wilcoxon(worse, better, alternative="less").pvalue)


class PairedStopping(FIFOScheduler):
    """In the driver: reads each trial's ``kept_images.json`` from ``<storage>/trials/<name>``."""

    def __init__(self, storage: Path, name_of, metric: str, mode: str, alpha: float, grace_period: int, say=print):
        super().__init__()
        self.storage, self.name_of = Path(storage), name_of
        self._metric, self._mode = metric, mode  # TrialScheduler's own (its metric, mode properties)
        self.alpha, self.grace_period, self.say = alpha, grace_period, say
        self.seen: dict[int, dict[str, tuple[float, dict]]] = {}  # epoch -> trial -> (objective, images)
        self.stopped: dict[str, str] = {}  # trial -> why

    def kept_images(self, trial, epoch: int) -> dict | None:
        try:
            record = json.loads((self.storage / "trials" / self.name_of(trial) / KEPT_IMAGES).read_text())
        except (OSError, ValueError):
            return None
        if int(record.get("kept_epoch", 1e9)) > epoch:  # a replayed (older) epoch predates this kept model
            return None
        return record.get("images") or None

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if self._metric not in result or "epoch" not in result or result.get("diverged"):
            return TrialScheduler.CONTINUE
        epoch, value = int(result["epoch"]), float(result[self._metric])
        images = self.kept_images(trial, epoch)
        if images is None:
            return TrialScheduler.CONTINUE
        here = self.seen.setdefault(epoch, {})
        here[trial.trial_id] = (value, images)
        if epoch < self.grace_period:
            return TrialScheduler.CONTINUE
        sign = 1 if self._mode == "max" else -1
        others = [(v, imgs, tid) for tid, (v, imgs) in here.items() if tid != trial.trial_id and imgs.keys() == images.keys()]
        if not others:
            return TrialScheduler.CONTINUE
        best_value, best_images, best_id = max(others, key=lambda o: sign * o[0])
        if sign * value >= sign * best_value:
            return TrialScheduler.CONTINUE
        names = sorted(images)
        mine, theirs = [images[n] for n in names], [best_images[n] for n in names]
        if self._mode != "max":  # lower is better: "worse" is higher
            mine, theirs = [-v for v in mine], [-v for v in theirs]
        p = paired_p(mine, theirs)
        if p >= self.alpha:
            return TrialScheduler.CONTINUE
        why = (f"its kept model is worse than trial {best_id}'s on the {len(names)} validation images at epoch "
               f"{epoch} (Wilcoxon p = {p:.3g} < {self.alpha})")
        self.stopped[trial.trial_id] = why
        self.say(f"trial {trial.trial_id} stopped: {why}")
        return TrialScheduler.STOP
