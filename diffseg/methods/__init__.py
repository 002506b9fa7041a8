"""Methods by name: the paper's and the field's baselines. ``method:`` in a config picks one."""
from __future__ import annotations

import hashlib
import json

from .base import Method, Stage, Step, sigmoid_ramp
from .cps import CrossPseudoSupervision
from .diffusion_cps import DiffusionCPS
from .mean_teacher import MeanTeacher
from .supervised import Supervised
from .ua_mt import UncertaintyAwareMeanTeacher

METHODS: dict[str, type[Method]] = {m.name: m for m in (
    DiffusionCPS, Supervised, MeanTeacher, UncertaintyAwareMeanTeacher, CrossPseudoSupervision)}


def method_class(name: str) -> type[Method]:
    return METHODS[name]  # config validation has already refused unknown names


def build_method(cfg, channels: int, prepare=lambda m: m) -> Method:
    return method_class(cfg.method)(cfg, channels, prepare)


def stage1_config(cfg, numerics: dict) -> dict:
    """What a method's stage 1 depends on: its stage-1 config keys, plus how the numbers are
    computed (worker count, device type, mixed precision). Empty for a method without stage 1."""
    from ..config import to_flat

    keys = method_class(cfg.method).stage1_keys
    if not keys:
        return {}
    flat = to_flat(cfg)
    chosen = {k: v for k, v in flat.items() if any(k == s or (s.endswith(".") and k.startswith(s)) for s in keys)}
    return chosen | dict(numerics)


def stage1_key(cfg, numerics: dict) -> str:
    """Two configs with the same key produce the identical pretrained networks."""
    text = json.dumps(stage1_config(cfg, numerics), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


__all__ = ["METHODS", "Method", "Stage", "Step", "build_method", "method_class", "sigmoid_ramp", "stage1_config",
           "stage1_key"]
