"""What a method is, for the loop (``diffseg/loop.py``) that runs any of them.

A method names its networks, its stages (each reading one config section) and the optimizers
each stage steps, computes the loss of one step with every term named, may act after a step (an
EMA update), and names its predictors: the networks selection chooses between, each scored
through ``predict(name)``, a function from images to class scores. It declares its own config
sections (``sections``) and checks them (``check``). Everything else (epochs, learning-rate
schedule, data, resume, validation, selection, test, summary, reports) is the loop's.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch
from torch import nn

from .. import losses
from ..data.sources import dims as dataset_dims

# images (B, C, *spatial) and an optional generator for any noise it draws -> class scores (B, K, *spatial)
Predictor = Callable[[torch.Tensor, Optional[torch.Generator]], torch.Tensor]


@dataclass(frozen=True)
class Stage:
    """One stage of a method."""
    name: str  # what the logs, metrics.jsonl and checkpoints call it
    section: str  # the config section with its epochs, lr and batch size ("train" for the one that selects)
    inputs: tuple[str, ...]  # "labeled" (images, masks), "unlabeled" or "images" (all training images, no masks)
    optimizers: tuple[str, ...]  # the method's optimizers this stage steps
    monitor: str = ""  # a network whose label-free mask is scored on validation each epoch (either channel)
    # when it ends, the method's ``pretrained`` networks are published (studies share them) and
    # ``--pretrained`` skips up to here
    shares: bool = False


@dataclass(frozen=True)
class Step:
    """Where one step sits in its stage; ramps are computed from it."""
    epoch: int
    index: int  # within the epoch
    per_epoch: int
    epochs: int

    @property
    def global_step(self) -> int:
        return self.epoch * self.per_epoch + self.index

    def ramp_steps(self, ramp_epochs: int) -> int:
        """Length of a ramp in steps; ``ramp_epochs`` 0 spans the whole stage."""
        return max(1, (ramp_epochs or self.epochs) * self.per_epoch)

    def count(self, per: str) -> int:
        """Where the step sits in what ramps count (config key ``loss.ramp_per``)."""
        return self.epoch if per == "epoch" else self.global_step

    def length(self, per: str, ramp_epochs: int = 0) -> int:
        """A ramp's length in what ramps count; ``ramp_epochs`` 0 spans the whole stage."""
        return max(1, ramp_epochs or self.epochs) if per == "epoch" else self.ramp_steps(ramp_epochs)


def ramp(loss_cfg, step: Step) -> float:
    """The factor in [0, 1] of an unlabeled-loss weight at ``step`` (``loss.ramp`` over
    ``loss.ramp_epochs``, counted in ``loss.ramp_per``)."""
    at, length = step.count(loss_cfg.ramp_per), step.length(loss_cfg.ramp_per, loss_cfg.ramp_epochs)
    if loss_cfg.ramp == "linear":
        return min(1.0, (at + 1) / length)
    return sigmoid_ramp(at, length)


def sigmoid_ramp(current: float, length: float) -> float:
    """exp(-5 (1 - x)^2) of Laine & Aila (2017), as SSL4MIS ramps its consistency weights."""
    if length <= 0:
        return 1.0
    x = min(max(current, 0.0), length) / length
    return float(math.exp(-5.0 * (1.0 - x) ** 2))


class Method:
    """Base class. Subclasses set ``name``, ``stages`` and ``predictors``, and implement
    ``build_networks``, ``build_optimizers`` and ``loss``."""

    name = ""
    stages: tuple[Stage, ...] = ()
    predictors: tuple[str, ...] = ()  # networks selection chooses between, in order
    # the config sections this method declares: name -> frozen dataclass (defaults) or
    # (dataclass, default factory); registered with the config when the method is
    sections: dict = {}
    # keys moved into this method's sections: old dotted key -> new
    moved: dict[str, str] = {}
    # config keys (a trailing '.' takes a whole section) that stage 1 reads: two configs that
    # agree on them produce the identical pretrained networks, so trials can share them
    stage1_keys: tuple[str, ...] = ()
    pretrained: tuple[str, ...] = ()  # the networks stage 1 trains: what a shared pretrained file holds

    def __init__(self, cfg, channels: int, prepare: Callable[[nn.Module], nn.Module] = lambda m: m):
        self.cfg, self.channels = cfg, channels
        self.dims = dataset_dims(cfg.data.dataset)  # 2 for images, 3 for volumes: the source says
        self.networks: dict[str, nn.Module] = {k: prepare(v) for k, v in self.build_networks().items()}
        self.optimizers: dict[str, torch.optim.Optimizer] = self.build_optimizers()

    @staticmethod
    def check(cfg) -> None:
        """Combinations of this method's keys that their bounds cannot express; raise ConfigError."""

    # ---- what a subclass provides
    def build_networks(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        raise NotImplementedError

    def loss(self, stage: str, batch: dict[str, dict[str, torch.Tensor]], step: Step
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        """The loss of one step and every term by name, for the logs: detached tensors (the loop
        reads them once per epoch, so a step never waits for the host) or plain floats."""
        raise NotImplementedError

    def after_step(self, stage: str, step: Step) -> None:
        """Called after the optimizers stepped (Mean Teacher's EMA update)."""

    def predict(self, name: str) -> Predictor:
        """The class scores of network ``name``; by default the network itself."""
        net = self.networks[name]
        return lambda x, generator=None: net(x)

    def snapshot(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named class scores for the TensorBoard image grid; by default every predictor."""
        return {name: self.scores(name, x) for name in self.predictors}

    # ---- shared
    def scores(self, name: str, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.predict(name)(x, generator)

    def train_mode(self, on: bool = True) -> None:
        for net in self.networks.values():
            net.train(on)

    @contextlib.contextmanager
    def evaluating(self):
        """Every network in eval mode for the block, each put back as it was after."""
        modes = {k: net.training for k, net in self.networks.items()}
        self.train_mode(False)
        try:
            yield self
        finally:
            for k, net in self.networks.items():
                net.train(modes[k])

    def optimizer(self, names: Iterable[str], section: str) -> torch.optim.Optimizer:
        """The optimizer of config section ``section`` over the named networks."""
        scfg = getattr(self.cfg, section)
        params = [p for n in names for p in self.networks[n].parameters()]
        if scfg.optimizer == "sgd":
            return torch.optim.SGD(params, lr=scfg.lr, momentum=scfg.momentum, weight_decay=scfg.weight_decay)
        return torch.optim.Adam(params, lr=scfg.lr)

    def supervised_loss(self, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The loss on labels of a baseline (config key ``loss.supervised``)."""
        return losses.supervised(self.cfg.loss.supervised, scores, mask)

    def pseudo_label_cost(self) -> int:
        """Network evaluations per unlabeled image to make its training targets (0: none)."""
        return 0
