"""The paper's method (METHOD.md): a conditional diffusion teacher pretrained without labels by
cycle consistency, co-trained with a twin student by cross pseudo supervision and R rounds of
pseudo-label regeneration.

Ciampi, Lagani, Amato, Falchi. "Semi-Supervised Biomedical Image Segmentation via Diffusion
Models and Teacher-Student Co-Training", arXiv 2504.01547 (2025).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ... import losses
from ...config import StageConfig
from ...diffusion import Diffusion
from ...errors import ConfigError
from ...schema import spec
from ..base import Method, Stage, Step
from .network import DiffusionSegmenter, build_student, build_teacher
from .objectives import cycle_loss, mask_scores, rounds


@dataclass(frozen=True)
class DiffusionSettings:
    """The Gaussian process of both pathways and how a mask is sampled from it."""
    steps: int = spec(1000, low=1, high=100_000)  # T
    schedule: str = spec("sigmoid", choices=("sigmoid", "linear", "cosine"))
    sample_steps: int = spec(1, low=1)  # 1 = the paper's single step; > 1 = DDIM-style sampling
    start_t: int = -1  # timestep the empty mask is noised to; -1 = random in [0, T)


@dataclass(frozen=True)
class LossWeights:
    """Weights of the stage-2 terms (METHOD.md's L_u and L_s)."""
    cps: float = spec(1.0, low=0.0)  # the teacher-student cross pseudo supervision
    align: float = spec(1.0, low=0.0)  # w for the round alignment terms
    rec: float = spec(1.0, low=0.0)  # w for the round reconstruction terms
    unlabeled: float = spec(1.0, low=0.0)  # lambda_u, ramped linearly over loss.ramp_epochs


@dataclass(frozen=True)
class Settings:
    rounds: int = spec(3, low=1, high=100)  # R
    round_mode: str = spec("independent", choices=("independent", "chained"))
    diffusion: DiffusionSettings = field(default_factory=DiffusionSettings)
    loss: LossWeights = field(default_factory=LossWeights)


SECTION = "diffusion_cps"
MOVED = {"rounds": "diffusion_cps.rounds", "round_mode": "diffusion_cps.round_mode",
         "diffusion": "diffusion_cps.diffusion"}
MOVED |= {f"diffusion.{k}": f"diffusion_cps.diffusion.{k}" for k in ("steps", "schedule", "sample_steps", "start_t")}
MOVED |= {f"loss.{k}": f"diffusion_cps.loss.{k}" for k in ("cps", "align", "rec", "unlabeled")}
MOVED |= {"model.student": "model.arch (twin -> unet, timm -> timm)"}  # the network every method trains


class DiffusionCPS(Method):
    name = "diffusion_cps"
    stages = (Stage("pretrain", "pretrain", inputs=("images",), optimizers=("pretrain",), monitor="teacher",
                    shares=True),
              Stage("train", "train", inputs=("labeled", "unlabeled"), optimizers=("teacher", "student")))
    predictors = ("teacher", "student")
    pretrained = ("teacher",)
    sections = {SECTION: Settings, "pretrain": StageConfig}
    moved = MOVED
    # stage 1 reads the images (never the labels: its pool is every training image, sorted),
    # the diffusion process, the networks' shape and its own schedule
    stage1_keys = ("method", "seed", "data.dataset", "data.size", "data.patch", "data.val_ratio", "data.split_seed",
                   "data.augment", "data.intensity_jitter", "data.synthetic_count", "data.synthetic_kind",
                   "diffusion_cps.diffusion.steps", "diffusion_cps.diffusion.schedule", "model.", "pretrain.")

    def __init__(self, cfg, channels: int, prepare=lambda m: m):
        self.settings: Settings = getattr(cfg, SECTION)
        self.process = Diffusion(self.settings.diffusion.steps, self.settings.diffusion.schedule)
        super().__init__(cfg, channels, prepare)

    @staticmethod
    def check(cfg) -> None:
        d = getattr(cfg, SECTION).diffusion
        if d.start_t >= d.steps:
            raise ConfigError(f"config key 'diffusion_cps.diffusion.start_t' = {d.start_t} must be < "
                              f"diffusion_cps.diffusion.steps = {d.steps} (or -1 for random)")
        if d.sample_steps > d.steps:
            raise ConfigError("config key 'diffusion_cps.diffusion.sample_steps' must not exceed "
                              "diffusion_cps.diffusion.steps")

    def build_networks(self):
        # the teacher is built first, so its initial weights do not depend on the student's kind
        m = self.cfg.model
        return {"teacher": build_teacher(m, self.channels, self.dims),
                "student": build_student(m, self.channels, self.dims)}

    def build_optimizers(self):
        return {"pretrain": self.optimizer(["teacher"], "pretrain"),
                "teacher": self.optimizer(["teacher"], "train"),
                "student": self.optimizer(["student"], "train")}

    def predict(self, name: str):
        net = self.networks[name]
        if not isinstance(net, DiffusionSegmenter):  # a timm student is a plain network
            return super().predict(name)
        d = self.settings.diffusion
        return lambda x, generator=None: mask_scores(net, self.process, x, d.sample_steps, d.start_t, generator)

    def rounds(self, x: torch.Tensor, first: torch.Tensor):
        s = self.settings
        return rounds(self.networks["teacher"], self.process, x, first, s.rounds, s.round_mode,
                      s.diffusion.sample_steps, s.diffusion.start_t)

    def loss(self, stage: str, batch, step: Step):
        if stage == "pretrain":
            loss = cycle_loss(self.networks["teacher"], self.process, batch["images"]["image"])
            return loss, {"loss": loss.detach()}
        return self.cotrain_loss(batch["labeled"]["image"], batch["labeled"]["mask"], batch["unlabeled"]["image"],
                                 step)

    def unlabeled_weight(self, step: Step) -> float:
        """lambda(e) = lambda_u * (e + 1) / E, with E = loss.ramp_epochs (0: all stage-2 epochs)."""
        ramp = self.cfg.loss.ramp_epochs or step.epochs
        return self.settings.loss.unlabeled * min(1.0, (step.epoch + 1) / ramp)

    def cotrain_loss(self, x_l, y_l, x_u, step: Step):
        """Stage-2 objective L_u + L_s of METHOD.md. A term whose weight is zero is not computed."""
        w = self.settings.loss
        R, w_cps, w_align, w_rec = self.settings.rounds, w.cps, w.align, w.rec
        with_rounds = w_align > 0 or w_rec > 0
        lam = self.unlabeled_weight(step)
        zero = x_l.new_zeros(())
        terms: dict[str, torch.Tensor] = {}
        # unlabeled part
        loss_u = zero
        if lam > 0 and (w_cps > 0 or with_rounds):
            pt_u, ps_u = self.scores("teacher", x_u), self.scores("student", x_u)
            student_label = losses.hard(ps_u)  # a pseudo-label: no gradient flows through it
            cps = align_u = rec_u = zero
            if w_cps > 0:
                cps = losses.dice_loss(ps_u, losses.hard(pt_u)) + losses.dice_loss(pt_u, student_label)
            if with_rounds:
                segs_u, recs_u = self.rounds(x_u, pt_u)
                align_u = sum(losses.dice_loss(p, student_label) for p in segs_u) / R
                rec_u = sum(recs_u) / R
            loss_u = lam * (w_cps * cps + w_align * align_u + w_rec * rec_u)
            terms |= {"cps": cps, "align_u": align_u, "rec_u": rec_u}
        # labeled part: the same rounds, aligned to the ground truth
        y = losses.one_hot(y_l)
        pt_l, ps_l = self.scores("teacher", x_l), self.scores("student", x_l)
        sup_s, sup_t = losses.dice_loss(ps_l, y), losses.dice_loss(pt_l, y)
        align_l = rec_l = zero
        if with_rounds:
            segs_l, recs_l = self.rounds(x_l, pt_l)
            align_l = sum(losses.dice_loss(p, y) for p in segs_l) / R
            rec_l = sum(recs_l) / R
        loss_s = sup_s + sup_t + w_align * align_l + w_rec * rec_l
        total = loss_u + loss_s
        terms |= {"loss": total, "loss_u": loss_u, "loss_s": loss_s, "sup_student": sup_s, "sup_teacher": sup_t,
                  "align_l": align_l, "rec_l": rec_l}
        return total, {k: v.detach() if torch.is_tensor(v) else float(v) for k, v in terms.items()} | {
            "lambda_u": lam}

    def snapshot(self, x):
        """Teacher, its pseudo-label of every round, student."""
        pt = self.scores("teacher", x)
        segs, _ = self.rounds(x, pt)
        return {"teacher": pt} | {f"round{j + 1}": p for j, p in enumerate(segs)} | {
            "student": self.scores("student", x)}

    def pseudo_label_cost(self) -> int:
        """The first mask and one per round (each ``sample_steps`` mask-pathway passes) plus one
        image-pathway pass per round. A second objective for studies that weigh Dice against cost."""
        s = self.settings
        return (1 + s.rounds) * s.diffusion.sample_steps + s.rounds
