"""The value checks of a config that its types alone cannot express: choices, bounds and
combinations, each error naming the key and the value. ``config.validate`` runs them on every
config it builds."""
from __future__ import annotations

import math
import re

from .errors import ConfigError

# sizes past these are typos, and some overflow what follows (a depth of 14285 did, in an error message)
UPPER = {"model.depth": 8, "model.width": 1024, "data.size": 8192, "diffusion.steps": 100_000, "rounds": 100,
         "ua_mt.passes": 256, "pretrain.batch_size": 65_536, "train.batch_size": 65_536,
         "pretrain.epochs": 1_000_000, "train.epochs": 1_000_000, "pretrain.iters_per_epoch": 10**7,
         "train.iters_per_epoch": 10**7, "data.synthetic_count": 100_000, "loss.ramp_epochs": 1_000_000}

CHOICES = {
    "data.synthetic_kind": ("glands", "lesions"),
    "eval.resolution": ("original", "training"),
    "diffusion.schedule": ("sigmoid", "linear", "cosine"),
    "model.student": ("twin", "timm"),
    "protocol": ("standard", "paper"),
    "pretrain.optimizer": ("adam", "sgd"),
    "train.optimizer": ("adam", "sgd"),
    "round_mode": ("independent", "chained"),
}


def check(flat: dict) -> None:
    """Raises ConfigError for the first value of the flat config (``config.to_flat``) at fault."""
    from .methods import METHODS  # the one table of methods (imports no config: no cycle)

    for key, value in flat.items():  # NaN and infinity pass every comparison below: refuse them first
        for v in value if isinstance(value, tuple) else (value,):
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"config key '{key}' must be a finite number, got {v}")
    from .data.sources import REGISTRY

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", flat["name"]):
        raise ConfigError(f"config key 'name' = {flat['name']!r} must be letters, digits, '.', '_' or '-' "
                          f"(it names the run folder, which must stay inside its parent)")

    for key, allowed in CHOICES.items() | {"method": tuple(METHODS), "data.dataset": tuple(REGISTRY)}.items():
        if flat[key] not in allowed:
            raise ConfigError(f"config key '{key}' = {flat[key]!r}; choose one of {', '.join(allowed)}")
    positive = ["data.size", "diffusion.steps", "diffusion.sample_steps", "model.width", "model.depth",
                "rounds", "pretrain.batch_size", "train.batch_size", "data.synthetic_count", "ua_mt.passes"]
    for key in positive:
        if flat[key] < 1:
            raise ConfigError(f"config key '{key}' must be >= 1, got {flat[key]}")
    for key, top in UPPER.items():  # sizes past these are typos, and some overflow what follows
        if flat[key] > top:
            raise ConfigError(f"config key '{key}' = {flat[key]} is beyond any sane setting (at most {top})")
    if not 0.0 <= flat["data.scale"] <= 4.0:
        raise ConfigError(f"config key 'data.scale' must be 0 (resize whole images) or in (0, 4], got {flat['data.scale']}")
    if not 0.0 <= flat["eval.overlap"] < 1.0:
        raise ConfigError(f"config key 'eval.overlap' must be in [0, 1), got {flat['eval.overlap']}")
    if not 0 <= flat["data.mask_threshold"] < 255:
        raise ConfigError(f"config key 'data.mask_threshold' must be in [0, 255), got {flat['data.mask_threshold']}")
    for key in ["data.val_ratio", "data.labeled_ratio", "mean_teacher.ema_decay", "ua_mt.threshold_start"]:
        if not 0.0 <= flat[key] < 1.0 + 1e-9:
            raise ConfigError(f"config key '{key}' must be in [0, 1], got {flat[key]}")
    for key in ["pretrain.epochs", "train.epochs", "pretrain.lr", "train.lr", "data.labeled_count",
                "data.mask_threshold", "loss.cps", "loss.align", "loss.rec", "loss.unlabeled",
                "loss.ramp_epochs", "mean_teacher.consistency", "mean_teacher.noise", "cps.consistency",
                "data.intensity_jitter", "pretrain.iters_per_epoch", "train.iters_per_epoch"]:
        if flat[key] < 0:
            raise ConfigError(f"config key '{key}' must be >= 0, got {flat[key]}")
    if flat["train.epochs"] < 1:
        raise ConfigError("config key 'train.epochs' must be >= 1: with 0 nothing is trained or selected")
    for key in ("pretrain.lr", "train.lr"):
        if flat[key] <= 0:
            raise ConfigError(f"config key '{key}' must be > 0, got {flat[key]}")
    if flat["protocol"] == "standard" and flat["data.val_ratio"] == 0:
        raise ConfigError("config key 'data.val_ratio' = 0 leaves an empty validation split, and selection "
                          "(protocol=standard) needs one; use a ratio in (0, 1)")
    if flat["data.val_ratio"] >= 1:
        raise ConfigError(f"config key 'data.val_ratio' = {flat['data.val_ratio']} leaves no training images")
    if flat["data.intensity_jitter"] >= 1:
        raise ConfigError(f"config key 'data.intensity_jitter' = {flat['data.intensity_jitter']}: a jitter of "
                          f"relative size 1 or more can invert or erase an image's contrast; use a value in [0, 1)")
    if flat["diffusion.start_t"] >= flat["diffusion.steps"]:
        raise ConfigError(f"config key 'diffusion.start_t' = {flat['diffusion.start_t']} must be < "
                          f"diffusion.steps = {flat['diffusion.steps']} (or -1 for random)")
    if flat["diffusion.sample_steps"] > flat["diffusion.steps"]:
        raise ConfigError("config key 'diffusion.sample_steps' must not exceed diffusion.steps")
    if len(flat["data.patch"]) != 3 or min(flat["data.patch"]) < 1:
        raise ConfigError(f"config key 'data.patch' must be three positive voxel counts, got {list(flat['data.patch'])}")
    from .data.sources import VOLUME_DATASETS

    if flat["data.dataset"] in VOLUME_DATASETS and flat["model.student"] == "timm":
        raise ConfigError(f"config key 'model.student' = 'timm' is 2D only; dataset '{flat['data.dataset']}' is "
                          f"3D volumes: use model.student=twin")
    if flat["data.dataset"] in VOLUME_DATASETS and any(v % 2 ** flat["model.depth"] for v in flat["data.patch"]):
        raise ConfigError(f"config key 'data.patch' = {list(flat['data.patch'])}: every side must be divisible by "
                          f"2**model.depth = {2 ** flat['model.depth']}")
    if not 0.0 <= flat["data.foreground_prob"] <= 1.0:
        raise ConfigError(f"config key 'data.foreground_prob' must be in [0, 1], got {flat['data.foreground_prob']}")
    if flat["data.spacing"] and (len(flat["data.spacing"]) != 3
                                 or not all(0 < v < float("inf") for v in flat["data.spacing"])):
        raise ConfigError(f"config key 'data.spacing' must be empty or three positive millimetre values, "
                          f"got {list(flat['data.spacing'])}")
    if flat["data.size"] % (2 ** flat["model.depth"]):
        raise ConfigError(f"config key 'data.size' = {flat['data.size']} must be divisible by "
                          f"2**model.depth = {2 ** flat['model.depth']}")
