"""Cross pseudo supervision: two networks of the same shape, initialised differently, each
trained on the other's hard pseudo-labels of the unlabeled images.

Chen, Yuan, Zeng & Wang, "Semi-Supervised Semantic Segmentation with Cross Pseudo Supervision",
CVPR 2021. Settings of SSL4MIS's ``train_cross_pseudo_supervision_2D.py``: (CE + Dice) / 2 on
labels for each network, cross-entropy against the other's argmax with weight 0.1 ramped by a
sigmoid.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import losses
from ..schema import spec
from ..nets import build_segmenter
from .base import Method, Stage, Step, ramp


def cross(scores: torch.Tensor, other: torch.Tensor, kind: str = "ce") -> torch.Tensor:
    """The loss of ``scores`` against the other network's hard label (no gradient to it):
    cross-entropy, or the XNet scripts' Dice loss (``kind`` "dice")."""
    label = other.detach().argmax(1)
    if kind == "dice":
        return losses.xnet_dice(scores, label)
    return F.cross_entropy(scores.float(), label)


@dataclass(frozen=True)
class Settings:
    """Cross pseudo supervision of two networks (SSL4MIS's train_cross_pseudo_supervision_2D.py)."""
    consistency: float = spec(0.1, low=0.0)  # weight of the two cross terms, ramped (loss.ramp)
    # the loss against the other network's hard label: "ce", cross-entropy (SSL4MIS), or "dice",
    # the XNet scripts' Dice loss (losses.xnet_dice: the published GlaS baselines)
    pseudo_loss: str = spec("ce", choices=("ce", "dice"))


class CrossPseudoSupervision(Method):
    name = "cps"
    sections = {"cps": Settings}
    stages = (Stage("train", "train", inputs=("labeled", "unlabeled"), optimizers=("a", "b")),)
    predictors = ("a", "b")

    def build_networks(self):
        # built one after the other from one seeded stream: two different initialisations
        return {"a": build_segmenter(self.cfg.model, self.channels, self.dims), "b": build_segmenter(self.cfg.model, self.channels, self.dims)}

    def build_optimizers(self):
        return {"a": self.optimizer(["a"], "train"), "b": self.optimizer(["b"], "train")}

    def loss(self, stage: str, batch, step: Step):
        x_l, y_l = batch["labeled"]["image"], batch["labeled"]["mask"]
        sup = self.supervised_loss(self.scores("a", x_l), y_l) + self.supervised_loss(self.scores("b", x_l), y_l)
        w = self.cfg.cps.consistency * ramp(self.cfg.loss, step)
        pseudo = sup.new_zeros(())
        if w > 0:
            x_u = batch["unlabeled"]["image"]
            a, b = self.scores("a", x_u), self.scores("b", x_u)
            kind = self.cfg.cps.pseudo_loss
            pseudo = cross(a, b, kind) + cross(b, a, kind)
        loss = sup + w * pseudo
        return loss, {"loss": loss.detach(), "sup": sup.detach(), "cps": pseudo.detach(),
                      "cps_weight": w}

    def pseudo_label_cost(self) -> int:
        return 2
