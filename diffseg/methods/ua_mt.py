"""Uncertainty-aware Mean Teacher: Mean Teacher whose consistency counts only the pixels where
the teacher is certain, its uncertainty the entropy of the mean of stochastic passes (dropout
and input noise).

Yu, Wang, Li, Fu & Heng, "Uncertainty-aware Self-ensembling Model for Semi-supervised 3D Left
Atrium Segmentation", MICCAI 2019. Settings of SSL4MIS's
``train_uncertainty_aware_mean_teacher_2D.py``: 8 passes, threshold ramped from 0.75 to 1 times
ln(K) over the whole training (sigmoid), consistency sum(mask * mse) / (2 sum(mask)); the Mean
Teacher settings (``mean_teacher.*``) otherwise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .. import losses
from ..schema import spec
from .base import Step, sigmoid_ramp
from .mean_teacher import MeanTeacher


@dataclass(frozen=True)
class Settings:
    """UA-MT's uncertainty mask (SSL4MIS: 8 stochastic passes, threshold ramped 0.75 -> 1 of ln 2)."""
    passes: int = spec(8, low=1, high=256)
    threshold_start: float = spec(0.75, low=0.0, high=1.0)  # fraction of the maximal entropy ln(K) at the start


class UncertaintyAwareMeanTeacher(MeanTeacher):
    name = "ua_mt"
    sections = MeanTeacher.sections | {"ua_mt": Settings}  # the Mean Teacher settings, and its own

    def threshold(self, step: Step) -> float:
        """Entropy threshold: start * ln(K) at the start rising to ln(K) at the stage's end, by a
        sigmoid over its steps or epochs (``loss.ramp_per``)."""
        start = self.cfg.ua_mt.threshold_start
        per = self.cfg.loss.ramp_per
        ramp = sigmoid_ramp(step.count(per), step.length(per))
        return (start + (1 - start) * ramp) * math.log(2)

    @torch.no_grad()
    def certain(self, x_u: torch.Tensor, step: Step) -> tuple[torch.Tensor, float]:
        """(B, 1, H, W) float mask of the pixels whose predictive entropy is below the threshold."""
        probs = torch.stack([self.scores("ema", self.noised(x_u)).float().softmax(1)
                             for _ in range(self.cfg.ua_mt.passes)]).mean(0)
        entropy = -(probs * torch.log(probs + 1e-6)).sum(1, keepdim=True)
        threshold = self.threshold(step)
        return (entropy < threshold).float(), threshold

    def consistency(self, student_u: torch.Tensor, x_u: torch.Tensor, step: Step) -> torch.Tensor:
        with torch.no_grad():
            target = self.scores("ema", self.noised(x_u))
        mask, _ = self.certain(x_u, step)
        return (mask * losses.softmax_mse(student_u, target)).sum() / (2 * mask.sum() + 1e-16)

    def pseudo_label_cost(self) -> int:
        return 1 + self.cfg.ua_mt.passes
