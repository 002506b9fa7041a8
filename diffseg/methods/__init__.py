"""The method table: the paper's method and the field's baselines. ``method:`` in a config picks one.

Adding a method is a module that defines a ``Method`` subclass (with its config section, if it
has one) and one line in ``TABLE`` below; ``register`` does the same from anywhere (a test, a
plug-in).
"""
from __future__ import annotations

import hashlib
import json

from .. import config as config_mod
from ..data.sources import dims as dataset_dims
from ..errors import ConfigError
from .base import Method, Predictor, Stage, Step, sigmoid_ramp
from .cps import CrossPseudoSupervision
from .diffusion_cps import DiffusionCPS
from .mean_teacher import MeanTeacher
from .supervised import Supervised
from .ua_mt import UncertaintyAwareMeanTeacher

TABLE = (DiffusionCPS, Supervised, MeanTeacher, UncertaintyAwareMeanTeacher, CrossPseudoSupervision)
METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Put a method in the table and its config sections (and moved keys) in the config."""
    for section, declared in cls.sections.items():
        kind, factory = declared if isinstance(declared, tuple) else (declared, declared)
        config_mod.register_section(section, kind, factory)
    for old, new in cls.moved.items():
        config_mod.register_moved(old, new)
    config_mod.SECTIONS_OF[cls.name] = tuple(cls.sections)
    METHODS[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    """Take a method out of the table, with the sections no other method declares."""
    cls = METHODS.pop(name)
    config_mod.SECTIONS_OF.pop(name, None)
    still = {s for m in METHODS.values() for s in m.sections}
    for section in set(cls.sections) - still:
        config_mod.unregister_section(section)


def check(cfg) -> None:
    """The table's own names, then every method's combinations (a config holds every section)."""
    if cfg.method not in METHODS:
        raise ConfigError(f"config key 'method' = {cfg.method!r}; choose one of {', '.join(METHODS)}")
    if cfg.model.arch in ("timm", "xnet_unet") and dataset_dims(cfg.data.dataset) == 3:
        raise ConfigError(f"config key 'model.arch' = '{cfg.model.arch}' is 2D only; dataset '{cfg.data.dataset}' "
                          f"is 3D volumes: use model.arch=unet")
    if cfg.model.arch == "xnet_unet" and cfg.model.depth > 4:
        raise ConfigError(f"config key 'model.depth' = {cfg.model.depth}: the XNet U-Net (model.arch=xnet_unet) "
                          f"has at most 4 down-sampling stages")
    for cls in METHODS.values():
        cls.check(cfg)


def method_class(name: str) -> type[Method]:
    return METHODS[name]  # config validation has already refused unknown names


def build_method(cfg, channels: int, prepare=lambda m: m) -> Method:
    return method_class(cfg.method)(cfg, channels, prepare)


def stage1_config(cfg, numerics: dict) -> dict:
    """What a method's stage 1 depends on: its stage-1 config keys, plus how the numbers are
    computed (worker count, device type, mixed precision). Empty for a method without stage 1."""
    keys = method_class(cfg.method).stage1_keys
    if not keys:
        return {}
    flat = config_mod.to_flat(cfg)
    chosen = {k: v for k, v in flat.items() if any(k == s or (s.endswith(".") and k.startswith(s)) for s in keys)}
    return chosen | dict(numerics)


def stage1_key(cfg, numerics: dict) -> str:
    """Two configs with the same key produce the identical pretrained networks."""
    text = json.dumps(stage1_config(cfg, numerics), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


for _cls in TABLE:
    register(_cls)
config_mod.CHECKS.append(check)

__all__ = ["METHODS", "Method", "Predictor", "Stage", "Step", "TABLE", "build_method", "check", "method_class",
           "register", "sigmoid_ramp", "stage1_config", "stage1_key", "unregister"]
