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
from .base import Method, Stage, Step, sigmoid_ramp


def cross(scores: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``scores`` against the other network's hard label (no gradient to it)."""
    return F.cross_entropy(scores.float(), other.detach().argmax(1))


@dataclass(frozen=True)
class Settings:
    """Cross pseudo supervision of two networks (SSL4MIS's train_cross_pseudo_supervision_2D.py)."""
    consistency: float = spec(0.1, low=0.0)  # weight of the two cross cross-entropy terms, ramped by a sigmoid


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
        sup = losses.dice_ce(self.scores("a", x_l), y_l) + losses.dice_ce(self.scores("b", x_l), y_l)
        w = self.cfg.cps.consistency * sigmoid_ramp(step.global_step, step.ramp_steps(self.cfg.loss.ramp_epochs))
        pseudo = sup.new_zeros(())
        if w > 0:
            x_u = batch["unlabeled"]["image"]
            a, b = self.scores("a", x_u), self.scores("b", x_u)
            pseudo = cross(a, b) + cross(b, a)
        loss = sup + w * pseudo
        return loss, {"loss": loss.detach(), "sup": sup.detach(), "cps": pseudo.detach(),
                      "cps_weight": w}

    def pseudo_label_cost(self) -> int:
        return 2
