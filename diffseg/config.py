"""One typed, frozen config tree; loaded from YAML, changed with dotted overrides.

The sections every run has (``data``, ``eval``, ``model``, ``loss``, ``train``) are declared
here. Each method declares its own section next to it (``diffusion_cps.rounds``,
``cps.consistency``...) and registers it (``register_section``), so this module knows
no method. The same dotted names are used on the command line, in config files and in search
spaces; a file may start from another (``base: debug``).
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import schema
from .errors import ConfigError
from .schema import parse_override, read_text, read_yaml, resolve_shipped, spec  # noqa: F401 (re-exported)

CONFIG_DIR = Path(__file__).resolve().parent.parent / "experiments" / "configs"


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "synthetic"  # a name of diffseg.data's source table (checked there)
    size: int = spec(128, low=1, high=8192)  # 2D images are resized to size x size (the network's input)
    # 0: each image resized to size x size; > 0: images rescaled by this factor (aspect kept) and
    # trained on random size x size tiles, validated, tested and predicted by a sliding window
    # (for images much larger than size, where shrinking the whole image loses small structures)
    scale: float = spec(0.0, low=0.0, high=4.0)
    val_ratio: float = spec(0.15, low=0.0, high=1.0)
    # where validation comes from: "train", carved before the labeled subset is drawn, or
    # "unlabeled", carved after it from the rest (the labeled subset is then the one a run
    # without validation draws: the reproduction's honest protocol keeps the authors' subsets)
    val_from: str = spec("train", choices=("train", "unlabeled"))
    labeled_ratio: float = spec(0.1, low=0.0, high=1.0)
    labeled_count: int = spec(0, low=0)  # > 0 overrides labeled_ratio
    split_seed: int = 0
    # how the labeled subset is drawn from the training pool: "hashed" (a sha256 order of the
    # names, the same on every machine) or "shuffled" (the sorted names shuffled by Python's
    # random.Random(split_seed), the first ceil(N * ratio) labeled: the authors' XNet-based code)
    labeled_draw: str = spec("hashed", choices=("hashed", "shuffled"))
    # per-channel normalisation of 2D images in [0, 1]; empty: the training split's own statistics
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    augment: bool = True
    intensity_jitter: float = spec(0.0, low=0.0)  # 0 disables brightness/contrast jitter
    synthetic_count: int = spec(48, low=1, high=100_000)  # images made by the synthetic dataset
    synthetic_kind: str = spec("glands", choices=("glands", "lesions"))
    # 0: masks must be binary (0/1 or 0/255); > 0: a value above it is foreground (JPEG masks)
    mask_threshold: int = spec(0, low=0, high=254)
    # multi-label datasets (nnU-Net raw, the Decathlon): the labels that are foreground, as values
    # or as dataset.json's names ("1", "tumour"); empty: every label but 0
    foreground_labels: tuple[str, ...] = ()
    # 3D volumes (LA) are never resized: training takes random patches of this many voxels
    # (the paper's 96x96x80), and validation, test and predict slide a window of this size
    patch: tuple[int, ...] = (96, 96, 80)
    # the chance that a training patch of a labeled volume is centred near a random foreground
    # voxel rather than anywhere (unlabeled volumes are always cropped anywhere: no labels)
    foreground_prob: float = spec(0.33, low=0.0, high=1.0)
    # voxel spacing (mm) of volumes whose files carry none, such as LA's preprocessed HDF5
    # (empty: the dataset's documented default, 0.625 mm isotropic for LA); files that carry
    # their own spacing (.nrrd) keep it
    spacing: tuple[float, ...] = ()


@dataclass(frozen=True)
class EvalConfig:
    # where validation and test are scored: "original" (each image's own size: the predicted
    # probabilities upsampled, compared with the original masks, distances in original pixels)
    # or "training" (the paper's way: pooled at the training size, on resized masks)
    resolution: str = spec("original", choices=("original", "training"))
    overlap: float = spec(0.25, low=0.0)  # sliding-window overlap when data.scale > 0 (Gaussian blending)
    # validate (and so select) every N epochs of the selecting stage, and always after its last
    every: int = spec(1, low=1, high=1_000_000)
    # 0: each epoch's validation scores the whole selecting split; > 0: at most this many of its
    # items (a hashed subset, the same every epoch), so a large dataset's epochs stay short; the
    # kept model is scored on the whole split at the end
    max_items: int = spec(0, low=0, high=10**7)
    # the threshold grid (start, stop, step) searched on the selecting split by pooled Jaccard;
    # the authors' code searched 0 to 0.88
    thresholds: tuple[float, ...] = (0.02, 0.98, 0.02)


@dataclass(frozen=True)
class ModelConfig:
    width: int = spec(64, low=1, high=1024)
    depth: int = spec(4, low=1, high=8)  # number of down-sampling stages
    dropout: bool = True
    # the network a method trains: "unet" is the U-Net of the paper's networks (its width and
    # depth; the paper's method adds time and mask inputs), "timm" a U-Net decoder on a timm encoder
    # "xnet_unet": the U-Net of the XNet code the published GlaS baselines ran on
    # (UNet_Transposed_Leaky: width-16 levels 16-256, bilinear decoder; nets.XNetUNet)
    arch: str = spec("unet", choices=("unet", "timm", "xnet_unet"))
    timm_encoder: str = "resnet18"
    timm_weights: str = ""  # local weights file for the timm encoder; never downloaded


@dataclass(frozen=True)
class LossConfig:
    # epochs over which every method ramps its unlabeled-loss weight up to full;
    # 0 = all stage-2 epochs (the paper's ramp, and SSL4MIS's for the baselines)
    ramp_epochs: int = spec(0, low=0, high=1_000_000)
    # the baselines' ramp: "sigmoid", exp(-5 (1 - x)^2) (SSL4MIS), or "linear", (t + 1) / length
    # (the authors' XNet scripts: weight * (epoch + 1) / epochs). The paper's method ramps
    # linearly by epoch, as METHOD.md says, whatever these two keys say
    ramp: str = spec("sigmoid", choices=("sigmoid", "linear"))
    # what the baselines' ramps count (the unlabeled weight, UA-MT's threshold, the EMA decay's
    # warm-up): optimizer steps (SSL4MIS) or epochs (the authors' scripts)
    ramp_per: str = spec("step", choices=("step", "epoch"))
    # the baselines' loss on labels: "dice_ce", (cross-entropy + Dice) / 2 (SSL4MIS), or "dice",
    # the XNet scripts' Dice loss alone (squared denominators, smooth 1, per image; losses.xnet_dice)
    supervised: str = spec("dice_ce", choices=("dice_ce", "dice"))


@dataclass(frozen=True)
class StageConfig:
    """The schedule of one stage; a method's ``Stage`` names the section it reads."""
    epochs: int = spec(200, low=0, high=1_000_000)
    lr: float = spec(1e-3, above=0.0)
    batch_size: int = spec(8, low=1, high=65_536)
    warmup_epochs: int = 20
    decay_every: int = 50  # halve the learning rate every N epochs after warm-up
    iters_per_epoch: int = spec(0, low=0, high=10**7)  # 0: one pass over the stage's first input
    # adam (the paper's) or sgd (SSL4MIS's baselines)
    optimizer: str = spec("adam", choices=("adam", "sgd"))
    momentum: float = spec(0.9, low=0.0, high=1.0)  # SGD only
    weight_decay: float = spec(1e-4, low=0.0, high=1.0)  # SGD only (Adam runs without, as in the paper)
    # "halving": linear warm-up to lr over warmup_epochs, then halved every decay_every epochs
    # (the paper); "gradual_warmup": the authors' GradualWarmupScheduler around StepLR as their
    # scripts step it: lr 0 in epoch 0, lr * e / warmup_epochs up to it, then halved every
    # decay_every epochs counted from the epoch after warmup_epochs + 1 (REPRODUCE.md's table)
    schedule: str = spec("halving", choices=("halving", "gradual_warmup"))


# the core of every config; method sections are added after these (register_section)
CORE: list[tuple[str, Any, Any]] = [
    ("name", str, field(default="run")),
    ("method", str, field(default="diffusion_cps")),  # a name of diffseg.methods' table (checked there)
    ("seed", int, field(default=0)),
    ("protocol", str, spec("standard", choices=("standard", "paper"))),  # paper: the test split selects
    ("data", DataConfig, field(default_factory=DataConfig)),
    ("eval", EvalConfig, field(default_factory=EvalConfig)),
    ("model", ModelConfig, field(default_factory=ModelConfig)),
    ("loss", LossConfig, field(default_factory=LossConfig)),
    ("train", StageConfig, field(default_factory=lambda: StageConfig(lr=0.01))),
]
SECTIONS: dict[str, tuple[type, Callable]] = {}  # name -> (dataclass, default factory), by the methods
CHECKS: list[Callable] = []  # checks of the tables that own names (methods, datasets), by them
_CLASS: list = []  # the root class of the registered sections, built on first use

# Where a run executes is not a hyperparameter, and keys a method owns moved into its section:
# the old names are refused with the new one
MOVED = {
    "device": "where a run executes is not a hyperparameter; use --device (diffseg) or the Ray workers' own device",
    "amp": "where a run executes is not a hyperparameter; use --no-amp to turn mixed precision off on CUDA",
    "data.root": "where a run executes is not a hyperparameter; use --data-root or $DIFFSEG_DATA",
    "data.cache_dir": "where a run executes is not a hyperparameter; use --cache-dir or $DIFFSEG_CACHE",
    "data.num_workers": "where a run executes is not a hyperparameter; use --loader-workers",
}


def register_section(name: str, cls: type, factory: Callable | None = None) -> None:
    """A method's own config section; registering the same one twice is harmless."""
    if name in {n for n, _, _ in CORE}:
        raise ValueError(f"config section '{name}' is a core section")
    if name in SECTIONS and SECTIONS[name][0] is not cls:
        raise ValueError(f"config section '{name}' is registered already, with {SECTIONS[name][0].__name__}")
    SECTIONS[name] = (cls, factory or cls)
    _CLASS.clear()


def unregister_section(name: str) -> None:
    SECTIONS.pop(name, None)
    _CLASS.clear()


def register_moved(old: str, new: str) -> None:
    MOVED[old] = f"it is {new} now"


def config_class() -> type:
    """The root dataclass: the core fields, then every registered section."""
    if not _CLASS:
        extra = [(n, cls, field(default_factory=factory)) for n, (cls, factory) in SECTIONS.items()]
        cls = dataclasses.make_dataclass("Config", CORE + extra, frozen=True, namespace={
            # a config pickles as plain data, so a registered section never has to be importable
            "__reduce__": lambda self: (from_dict, (to_dict(self),)), "__module__": __name__})
        _CLASS.append(cls)
    return _CLASS[0]


def __getattr__(name: str):
    if name == "Config":  # config.Config: the root class of the sections registered now
        return config_class()
    raise AttributeError(name)


def validate(cfg):
    """Bounds (field metadata), the core's combinations, and the owning tables' checks."""
    schema.check(cfg)
    flat = to_flat(cfg)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", flat["name"]):
        raise ConfigError(f"config key 'name' = {flat['name']!r} must be letters, digits, '.', '_' or '-' "
                          f"(it names the run folder, which must stay inside its parent)")
    if flat["eval.overlap"] >= 1.0:
        raise ConfigError(f"config key 'eval.overlap' must be in [0, 1), got {flat['eval.overlap']}")
    if flat["train.epochs"] < 1:
        raise ConfigError("config key 'train.epochs' must be >= 1: with 0 nothing is trained or selected")
    if flat["protocol"] == "standard" and flat["data.val_ratio"] == 0:
        raise ConfigError("config key 'data.val_ratio' = 0 leaves an empty validation split, and selection "
                          "(protocol=standard) needs one; use a ratio in (0, 1)")
    if flat["data.val_ratio"] >= 1:
        raise ConfigError(f"config key 'data.val_ratio' = {flat['data.val_ratio']} leaves no training images")
    if flat["data.intensity_jitter"] >= 1:
        raise ConfigError(f"config key 'data.intensity_jitter' = {flat['data.intensity_jitter']}: a jitter of "
                          f"relative size 1 or more can invert or erase an image's contrast; use a value in [0, 1)")
    if len(flat["data.patch"]) != 3 or min(flat["data.patch"]) < 1:
        raise ConfigError(f"config key 'data.patch' must be three positive voxel counts, got {list(flat['data.patch'])}")
    if flat["data.spacing"] and (len(flat["data.spacing"]) != 3
                                 or not all(0 < v < float("inf") for v in flat["data.spacing"])):
        raise ConfigError(f"config key 'data.spacing' must be empty or three positive millimetre values, "
                          f"got {list(flat['data.spacing'])}")
    if len(flat["data.mean"]) != len(flat["data.std"]) or any(v <= 0 for v in flat["data.std"]):
        raise ConfigError(f"config keys 'data.mean' and 'data.std' must be empty or of one length per "
                          f"channel with positive std, got {list(flat['data.mean'])} and {list(flat['data.std'])}")
    start, stop, step = (flat["eval.thresholds"] + (0.0, 0.0, 0.0))[:3]
    if len(flat["eval.thresholds"]) != 3 or not (0 <= start <= stop < 1 and step > 0):
        raise ConfigError(f"config key 'eval.thresholds' must be (start, stop, step) with 0 <= start <= stop < 1 "
                          f"and step > 0, got {list(flat['eval.thresholds'])}")
    if flat["data.size"] % (2 ** flat["model.depth"]):
        raise ConfigError(f"config key 'data.size' = {flat['data.size']} must be divisible by "
                          f"2**model.depth = {2 ** flat['model.depth']}")
    for table_check in CHECKS:
        table_check(cfg)
    return cfg


to_dict, to_flat, nest = schema.to_dict, schema.to_flat, schema.nest


def defaults():
    return config_class()()


def apply_overrides(cfg, overrides: dict[str, Any] | list[str]):
    """Return a new config with dotted overrides applied and type-checked."""
    if isinstance(overrides, list):
        overrides = dict(parse_override(o) for o in overrides)
    return validate(schema.merge(cfg, nest(overrides), moved=MOVED))


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A file path, or the name of a shipped config (``debug``, ``glas``...)."""
    return resolve_shipped(name_or_path, CONFIG_DIR, "config")


def load(path: str | Path | None = None, overrides: dict | list | None = None):
    """Load a YAML config (or the defaults when ``path`` is None) and apply overrides."""
    cfg = defaults()
    if path is not None:
        path, data = schema.read_inherited(path, CONFIG_DIR, "config", _merge_files)
        try:
            cfg = schema.merge(cfg, nest(data), moved=MOVED)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    return apply_overrides(cfg, overrides or {})


def _merge_files(parent: dict, child: dict) -> dict:
    return schema.deep_merge(nest(parent), nest(child))


def from_dict(data: dict):
    return validate(schema.merge(defaults(), data, moved=MOVED))


# Keys added after run folders were first written, each with the value that reproduces what a
# run made before it did (every one is also its default). A stored config that lacks one gets it,
# and says so; one that lacks any other key of its run is refused, naming it.
MIGRATIONS: dict[str, Any] = {
    "data.labeled_draw": "hashed", "data.val_from": "train", "data.mean": (), "data.std": (),
    "eval.every": 1, "eval.max_items": 0, "eval.thresholds": (0.02, 0.98, 0.02), "loss.ramp": "sigmoid", "loss.ramp_per": "step",
    "loss.supervised": "dice_ce", "cps.pseudo_loss": "ce",
    "data.foreground_labels": ()}  # before the nnU-Net readers: no multi-label dataset was read
STAGE_MIGRATIONS = {"momentum": 0.9, "weight_decay": 1e-4, "schedule": "halving"}  # in every stage section
SECTIONS_OF: dict[str, tuple[str, ...]] = {}  # method -> the sections it declares (its registration fills it)


def from_stored(data: dict, source: str, log=None):
    """A config written by a run (config.yaml, a checkpoint, study.yaml), loaded as it ran: a key
    it lacks is filled only by a documented migration (``MIGRATIONS``; the fill is logged), never
    by today's default, and any other missing key of the core or of its method's sections is an
    error naming it. Keys of other methods' sections do not affect the run and take defaults."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the stored config is not a mapping")
    cfg = from_dict(data)
    have = set(schema.flat_keys(data))
    owned = {n for n, _, _ in CORE} | set(SECTIONS_OF.get(str(data.get("method", cfg.method)), ()))
    filled, lacking = {}, []
    for key, value in to_flat(cfg).items():
        if key in have or key.split(".", 1)[0] not in owned:
            continue
        section, leaf = key.rsplit(".", 1) if "." in key else ("", key)
        if key in MIGRATIONS:
            filled[key] = MIGRATIONS[key]
        elif leaf in STAGE_MIGRATIONS and isinstance(getattr(cfg, section.split(".")[0], None), StageConfig):
            filled[key] = STAGE_MIGRATIONS[leaf]
        else:
            lacking.append(key)
    if lacking:
        raise ConfigError(f"{source}: the stored config lacks {', '.join(lacking[:5])}"
                          f"{' ...' if len(lacking) > 5 else ''} (written by another version of diffseg): "
                          f"scoring or resuming it with today's defaults would not be the run it was")
    if filled and log is not None:
        log(f"{source}: filled {', '.join(f'{k}={v!r}' for k, v in filled.items())} "
            f"(keys added after it was written; these values are what it ran with)")
    return apply_overrides(cfg, filled)


def save(cfg, path: Path) -> None:
    import yaml

    from .durable import write_text

    write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
