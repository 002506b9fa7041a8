"""Mean Teacher: the teacher is an exponential moving average of the student's weights, and the
student's predictions on unlabeled images are pulled towards the teacher's on a noised copy.

Tarvainen & Valpola, "Mean teachers are better role models: Weight-averaged consistency targets
improve semi-supervised deep learning results", NeurIPS 2017. Settings of SSL4MIS's
``train_mean_teacher_2D.py``: EMA decay 0.99 (warmed up as min(1 - 1/(step + 1), decay)),
softmax-MSE consistency with weight 0.1 ramped by a sigmoid, input noise N(0, 0.1) clipped at 0.2.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from .. import losses
from ..schema import spec
from ..nets import build_segmenter
from .base import Method, Stage, Step, ramp


@dataclass(frozen=True)
class Settings:
    """Mean Teacher and UA-MT; defaults from SSL4MIS's 2D scripts (train_mean_teacher_2D.py,
    train_uncertainty_aware_mean_teacher_2D.py)."""
    ema_decay: float = spec(0.99, low=0.0, high=1.0)
    consistency: float = spec(0.1, low=0.0)  # weight of the consistency term, ramped by a sigmoid
    noise: float = spec(0.1, low=0.0)  # std of the Gaussian noise on the EMA network's input (clipped at 2x)


class MeanTeacher(Method):
    name = "mean_teacher"
    sections = {"mean_teacher": Settings}
    stages = (Stage("train", "train", inputs=("labeled", "unlabeled"), optimizers=("student",)),)
    predictors = ("student", "ema")

    def build_networks(self):
        student = build_segmenter(self.cfg.model, self.channels, self.dims)
        ema = copy.deepcopy(student)
        for p in ema.parameters():
            p.requires_grad_(False)  # moved only by the EMA update, never by a gradient
        return {"student": student, "ema": ema}

    def build_optimizers(self):
        return {"student": self.optimizer(["student"], "train")}

    def consistency_weight(self, step: Step) -> float:
        mt = self.cfg.mean_teacher
        return mt.consistency * ramp(self.cfg.loss, step)

    def noised(self, x: torch.Tensor) -> torch.Tensor:
        sd = self.cfg.mean_teacher.noise
        return x + (torch.randn_like(x) * sd).clamp(-2 * sd, 2 * sd) if sd > 0 else x

    def loss(self, stage: str, batch, step: Step):
        sup = self.supervised_loss(self.scores("student", batch["labeled"]["image"]), batch["labeled"]["mask"])
        w = self.consistency_weight(step)
        cons = sup.new_zeros(())
        if w > 0:  # a zero weight computes nothing
            x_u = batch["unlabeled"]["image"]
            student_u = self.scores("student", x_u)
            cons = self.consistency(student_u, x_u, step)
        loss = sup + w * cons
        return loss, {"loss": loss.detach(), "sup": sup.detach(), "consistency": cons.detach(),
                      "consistency_weight": w}

    def consistency(self, student_u: torch.Tensor, x_u: torch.Tensor, step: Step) -> torch.Tensor:
        with torch.no_grad():
            target = self.scores("ema", self.noised(x_u))
        return losses.softmax_mse(student_u, target).mean()

    @torch.no_grad()
    def after_step(self, stage: str, step: Step) -> None:
        # warmed up over steps (SSL4MIS) or epochs (the authors' code: in epoch 0 the teacher
        # copies the student after every step)
        alpha = min(1.0 - 1.0 / (step.count(self.cfg.loss.ramp_per) + 1), self.cfg.mean_teacher.ema_decay)
        for e, s in zip(self.networks["ema"].parameters(), self.networks["student"].parameters()):
            e.mul_(alpha).add_(s.detach(), alpha=1.0 - alpha)

    def pseudo_label_cost(self) -> int:
        return 1
