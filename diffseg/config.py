"""One typed, frozen config tree; loaded from YAML, changed with dotted overrides.

The same dotted names (``diffusion.steps``, ``loss.cps``, ``rounds``) are used on the command
line, in config files and in search spaces.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "experiments" / "configs"


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "synthetic"
    size: int = 128  # 2D images are resized to size x size (the network's input)
    # 0: each image resized to size x size; > 0: images rescaled by this factor (aspect kept) and
    # trained on random size x size tiles, validated, tested and predicted by a sliding window
    # (for images much larger than size, where shrinking the whole image loses small structures)
    scale: float = 0.0
    val_ratio: float = 0.15
    labeled_ratio: float = 0.1
    labeled_count: int = 0  # > 0 overrides labeled_ratio
    split_seed: int = 0
    augment: bool = True
    intensity_jitter: float = 0.0  # 0 disables brightness/contrast jitter
    synthetic_count: int = 48  # images made by the synthetic dataset
    synthetic_kind: str = "glands"  # glands | lesions
    # 0: masks must be binary (0/1 or 0/255); > 0: a value above it is foreground (JPEG masks)
    mask_threshold: int = 0
    # 3D volumes (LA) are never resized: training takes random patches of this many voxels
    # (the paper's 96x96x80), and validation, test and predict slide a window of this size
    patch: tuple[int, ...] = (96, 96, 80)
    # the chance that a training patch of a labeled volume is centred near a random foreground
    # voxel rather than anywhere (unlabeled volumes are always cropped anywhere: no labels)
    foreground_prob: float = 0.33
    # voxel spacing (mm) of volumes whose files carry none, such as LA's preprocessed HDF5
    # (empty: the dataset's documented default, 0.625 mm isotropic for LA); files that carry
    # their own spacing (.nrrd) keep it
    spacing: tuple[float, ...] = ()


@dataclass(frozen=True)
class EvalConfig:
    # where validation and test are scored: "original" (each image's own size: the predicted
    # probabilities upsampled, compared with the original masks, distances in original pixels)
    # or "training" (the paper's way: pooled at the training size, on resized masks)
    resolution: str = "original"
    overlap: float = 0.25  # sliding-window overlap when data.scale > 0 (windows blended by a Gaussian)


@dataclass(frozen=True)
class DiffusionConfig:
    steps: int = 1000  # T
    schedule: str = "sigmoid"  # sigmoid | linear | cosine
    sample_steps: int = 1  # 1 = the paper's single step; > 1 = DDIM-style sampling
    start_t: int = -1  # timestep the empty mask is noised to; -1 = random in [0, T)


@dataclass(frozen=True)
class ModelConfig:
    width: int = 64
    depth: int = 4  # number of down-sampling stages
    dropout: bool = True
    # the network a method trains: "twin" is the U-Net of the teacher's mask pathway (the paper's
    # student; a plain U-Net of the same width and depth, no time input, for the baselines);
    # "timm" a U-Net decoder on a timm encoder
    student: str = "twin"  # twin | timm
    timm_encoder: str = "resnet18"
    timm_weights: str = ""  # local weights file for the timm encoder; never downloaded


@dataclass(frozen=True)
class LossConfig:
    cps: float = 1.0  # cross pseudo supervision
    align: float = 1.0  # w for the round alignment terms
    rec: float = 1.0  # w for the round reconstruction terms
    unlabeled: float = 1.0  # lambda_u, ramped linearly over loss.ramp_epochs
    # epochs over which every method ramps its unlabeled-loss weight up to full;
    # 0 = all stage-2 epochs (the paper's ramp, and SSL4MIS's for the baselines)
    ramp_epochs: int = 0


@dataclass(frozen=True)
class MeanTeacherConfig:
    """Mean Teacher and UA-MT; defaults from SSL4MIS's 2D scripts (train_mean_teacher_2D.py,
    train_uncertainty_aware_mean_teacher_2D.py)."""
    ema_decay: float = 0.99
    consistency: float = 0.1  # weight of the consistency term, ramped by a sigmoid
    noise: float = 0.1  # std of the Gaussian noise on the EMA network's input (clipped at 2x)


@dataclass(frozen=True)
class UncertaintyConfig:
    """UA-MT's uncertainty mask (SSL4MIS: 8 stochastic passes, threshold ramped 0.75 -> 1 of ln 2)."""
    passes: int = 8
    threshold_start: float = 0.75  # fraction of the maximal entropy ln(K) at the start of the ramp


@dataclass(frozen=True)
class CPSConfig:
    """Cross pseudo supervision of two networks (SSL4MIS's train_cross_pseudo_supervision_2D.py)."""
    consistency: float = 0.1  # weight of the two cross cross-entropy terms, ramped by a sigmoid


@dataclass(frozen=True)
class StageConfig:
    epochs: int = 200
    lr: float = 1e-3
    batch_size: int = 8
    warmup_epochs: int = 20
    decay_every: int = 50  # halve the learning rate every N epochs after warm-up
    iters_per_epoch: int = 0  # 0: stage default (see METHOD.md)
    # adam (the paper's) or sgd (momentum 0.9, weight decay 1e-4: SSL4MIS's baselines)
    optimizer: str = "adam"


@dataclass(frozen=True)
class Config:
    name: str = "run"
    method: str = "diffusion_cps"  # see diffseg/methods/__init__.py
    seed: int = 0
    protocol: str = "standard"  # standard (validation selects) | paper (test selects)
    rounds: int = 3  # R
    round_mode: str = "independent"  # independent | chained
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    mean_teacher: MeanTeacherConfig = field(default_factory=MeanTeacherConfig)
    ua_mt: UncertaintyConfig = field(default_factory=UncertaintyConfig)
    cps: CPSConfig = field(default_factory=CPSConfig)
    pretrain: StageConfig = field(default_factory=StageConfig)
    train: StageConfig = field(default_factory=lambda: StageConfig(lr=0.01))


# Where a run executes is not a hyperparameter: these keys moved to the command line (and to the
# Runtime), so a run resumes on another machine or data path and trials carry no driver paths.
MOVED = {
    "device": "--device (diffseg) or the Ray workers' own device",
    "amp": "--no-amp to turn mixed precision off on CUDA",
    "data.root": "--data-root or $DIFFSEG_DATA",
    "data.cache_dir": "--cache-dir or $DIFFSEG_CACHE",
    "data.num_workers": "--loader-workers",
}

def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Check ``value`` against the field type; ints are accepted where floats are expected."""
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif typ is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif typing.get_origin(typ) is tuple:  # tuple[int, ...] or tuple[float, ...]: a YAML list
        inner = typing.get_args(typ)[0]
        if isinstance(value, str):
            # "96,96,80", "96x96x80" or a printed tuple "(96, 96, 80)"
            value = [v for v in value.strip().strip("()[]").replace("x", ",").split(",") if v.strip()]
        if isinstance(value, (list, tuple)):
            return tuple(_coerce(f"{key}[{i}]", v, inner) for i, v in enumerate(value))
        raise ConfigError(f"config key '{key}' expects a list of {inner.__name__}, got {value!r}")
    raise ConfigError(f"config key '{key}' expects {getattr(typ, '__name__', typ)}, got {value!r}")


def _build(cls, data: dict, prefix: str = ""):
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys."""
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {data!r}")
    hints = _hints(cls)
    names = [f.name for f in fields(cls)]
    kwargs = {}
    for key, value in data.items():
        dotted = prefix + str(key)
        if key not in names:
            _unknown(dotted, prefix, names)
        typ = hints[key]
        if is_dataclass(typ):
            kwargs[key] = _build(typ, value, dotted + ".")
        else:
            kwargs[key] = _coerce(dotted, value, typ)
    return cls(**kwargs)


def _unknown(dotted: str, prefix: str, names: list[str]):
    if dotted in MOVED:
        raise ConfigError(f"'{dotted}' is no longer a config key: where a run executes is not a "
                          f"hyperparameter; use {MOVED[dotted]}")
    section = prefix.rstrip(".") or "<top level>"
    raise ConfigError(f"unknown config key '{dotted}'; valid keys in {section}: {', '.join(names)}")


def validate(cfg: Config) -> Config:
    """Value checks that the types alone cannot express (``config_checks``)."""
    from .config_checks import check

    check(to_flat(cfg))
    return cfg


def to_dict(cfg) -> dict:
    """Plain data (lists, not tuples): what YAML and JSON give back, so a config round-trips."""
    return _plain(dataclasses.asdict(cfg))


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def to_flat(cfg, prefix: str = "") -> dict[str, Any]:
    out = {}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if is_dataclass(value):
            out.update(to_flat(value, prefix + f.name + "."))
        else:
            out[prefix + f.name] = value
    return out


def valid_keys() -> list[str]:
    return sorted(to_flat(Config()))


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` with the value parsed as YAML (so 0.5 is a float and true a bool)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def nest(flat: dict[str, Any]) -> dict:
    out: dict = {}
    for key, value in flat.items():
        parts = key.split(".")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"config key '{key}' conflicts with a value set for '{part}'")
        node[parts[-1]] = value
    return out


def apply_overrides(cfg: Config, overrides: dict[str, Any] | list[str]) -> Config:
    """Return a new config with dotted overrides applied and type-checked."""
    if isinstance(overrides, list):
        overrides = dict(parse_override(o) for o in overrides)
    return validate(_merge(cfg, nest(overrides)))


def _merge(obj, changes: dict, prefix: str = ""):
    hints = _hints(type(obj))
    names = [f.name for f in fields(obj)]
    kwargs = {}
    for key, value in changes.items():
        dotted = prefix + key
        if key not in names:
            _unknown(dotted, prefix, names)
        current = getattr(obj, key)
        if is_dataclass(current):
            kwargs[key] = _merge(current, value if isinstance(value, dict) else _not_section(dotted, value),
                                 dotted + ".")
        else:
            kwargs[key] = _coerce(dotted, value, hints[key])
    return replace(obj, **kwargs)


def _not_section(key, value):
    raise ConfigError(f"config key '{key}' is a section; set its fields like {key}.<field>=..., got {value!r}")


def resolve_shipped(name_or_path: str | Path, directory: Path, what: str) -> Path:
    """A file path, or the name of a YAML file shipped in ``directory``."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = directory / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    known = ", ".join(sorted(p.stem for p in directory.glob("*.yaml")))
    raise ConfigError(f"{what} file '{name_or_path}' not found (shipped {what} files: {known})")


class StrictLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping (plain YAML keeps the last silently)."""


def _no_duplicates(loader: StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice in one mapping (lines {seen[key] + 1} and "
                f"{key_node.start_mark.line + 1})", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def read_text(path: Path, what: str) -> str:
    """A text file the project reads (configs, study and benchmark files, lists): UTF-8, or an
    error naming the file."""
    try:
        return Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} file '{path}' is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} file '{path}': {exc.strerror}") from None


def read_yaml(path: Path, what: str) -> dict:
    text = read_text(path, what)
    try:
        data = yaml.load(text, Loader=StrictLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} file '{path}' is not valid YAML: {exc}") from None
    if data is None:
        raise ConfigError(f"{what} file '{path}' is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"{what} file '{path}' must be a mapping of keys to values, got {type(data).__name__}")
    return data


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A file path, or the name of a shipped config (``debug``, ``glas``...)."""
    return resolve_shipped(name_or_path, CONFIG_DIR, "config")


def load(path: str | Path | None = None, overrides: dict | list | None = None) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None) and apply overrides."""
    cfg = Config()
    if path is not None:
        path = resolve_config_path(path)
        data = read_yaml(path, "config")
        try:
            cfg = _build(Config, data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    return apply_overrides(cfg, overrides or {})


def from_dict(data: dict) -> Config:
    return validate(_build(Config, data))


def save(cfg: Config, path: Path) -> None:
    from .durable import write_text

    write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
