"""The paper's method (METHOD.md): a conditional diffusion teacher pretrained without labels by
cycle consistency, co-trained with a twin student by cross pseudo supervision and R rounds of
pseudo-label regeneration.

Ciampi, Lagani, Amato, Falchi. "Semi-Supervised Biomedical Image Segmentation via Diffusion
Models and Teacher-Student Co-Training", arXiv 2504.01547 (2025).
"""
from __future__ import annotations

import torch

from .. import losses
from ..students import build_student, build_teacher
from ..teacher import cycle_loss, rounds
from .base import Method, Stage, Step


class DiffusionCPS(Method):
    name = "diffusion_cps"
    stages = (Stage("pretrain", inputs=("images",), optimizers=("pretrain",), monitor="teacher"),
              Stage("train", inputs=("labeled", "unlabeled"), optimizers=("teacher", "student")))
    predictors = ("teacher", "student")
    pretrained = ("teacher",)
    # stage 1 reads the images (never the labels: its pool is every training image, sorted),
    # the diffusion process, the networks' shape and its own schedule
    stage1_keys = ("method", "seed", "data.dataset", "data.size", "data.patch", "data.val_ratio", "data.split_seed",
                   "data.augment", "data.intensity_jitter", "data.synthetic_count", "data.synthetic_kind",
                   "diffusion.steps", "diffusion.schedule", "model.", "pretrain.")

    def build_networks(self):
        # the teacher is built first, so its initial weights do not depend on the student's kind
        return {"teacher": build_teacher(self.cfg, self.channels), "student": build_student(self.cfg, self.channels)}

    def build_optimizers(self):
        return {"pretrain": self.optimizer(["teacher"], "pretrain"),
                "teacher": self.optimizer(["teacher"], "train"),
                "student": self.optimizer(["student"], "train")}

    def loss(self, stage: str, batch, step: Step):
        if stage == "pretrain":
            loss = cycle_loss(self.networks["teacher"], self.diffusion, batch["images"]["image"])
            return loss, {"loss": float(loss.detach())}
        return self.cotrain_loss(batch["labeled"]["image"], batch["labeled"]["mask"], batch["unlabeled"]["image"],
                                 step)

    def unlabeled_weight(self, step: Step) -> float:
        """lambda(e) = lambda_u * (e + 1) / E, with E = loss.ramp_epochs (0: all stage-2 epochs)."""
        ramp = self.cfg.loss.ramp_epochs or step.epochs
        return self.cfg.loss.unlabeled * min(1.0, (step.epoch + 1) / ramp)

    def cotrain_loss(self, x_l, y_l, x_u, step: Step):
        """Stage-2 objective L_u + L_s of METHOD.md. A term whose weight is zero is not computed."""
        cfg, teacher = self.cfg, self.networks["teacher"]
        R, w_cps, w_align, w_rec = cfg.rounds, cfg.loss.cps, cfg.loss.align, cfg.loss.rec
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
                segs_u, recs_u = rounds(teacher, self.diffusion, x_u, pt_u, R, cfg.round_mode, cfg.diffusion)
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
            segs_l, recs_l = rounds(teacher, self.diffusion, x_l, pt_l, R, cfg.round_mode, cfg.diffusion)
            align_l = sum(losses.dice_loss(p, y) for p in segs_l) / R
            rec_l = sum(recs_l) / R
        loss_s = sup_s + sup_t + w_align * align_l + w_rec * rec_l
        total = loss_u + loss_s
        terms |= {"loss": total, "loss_u": loss_u, "loss_s": loss_s, "sup_student": sup_s, "sup_teacher": sup_t,
                  "align_l": align_l, "rec_l": rec_l}
        return total, {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in terms.items()} | {
            "lambda_u": lam}

    def snapshot(self, x):
        """Teacher, its pseudo-label of every round, student."""
        pt = self.scores("teacher", x)
        segs, _ = rounds(self.networks["teacher"], self.diffusion, x, pt, self.cfg.rounds, self.cfg.round_mode,
                         self.cfg.diffusion)
        return {"teacher": pt} | {f"round{j + 1}": p for j, p in enumerate(segs)} | {
            "student": self.scores("student", x)}

    def pseudo_label_cost(self) -> int:
        """The first mask and one per round (each ``sample_steps`` mask-pathway passes) plus one
        image-pathway pass per round. A second objective for studies that weigh Dice against cost."""
        return (1 + self.cfg.rounds) * self.cfg.diffusion.sample_steps + self.cfg.rounds
