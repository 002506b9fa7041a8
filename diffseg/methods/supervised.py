"""Labeled images only: the lower bound every semi-supervised method must beat, and with
``data.labeled_ratio=1.0`` the fully supervised upper bound.

The U-Net of Ronneberger, Fischer & Brox, "U-Net: Convolutional Networks for Biomedical Image
Segmentation", MICCAI 2015, here at the paper's student width and depth; loss as SSL4MIS's
``train_fully_supervised_2D.py``: (cross-entropy + Dice) / 2.
"""
from __future__ import annotations

from .. import losses
from ..nets import build_segmenter
from .base import Method, Stage, Step


class Supervised(Method):
    name = "supervised"
    stages = (Stage("train", "train", inputs=("labeled",), optimizers=("net",)),)
    predictors = ("net",)

    def build_networks(self):
        return {"net": build_segmenter(self.cfg.model, self.channels, self.dims)}

    def build_optimizers(self):
        return {"net": self.optimizer(["net"], "train")}

    def loss(self, stage: str, batch, step: Step):
        loss = self.supervised_loss(self.scores("net", batch["labeled"]["image"]), batch["labeled"]["mask"])
        return loss, {"loss": loss.detach()}
