"""One epoch of each stage. Models, optimisers and loaders come in; logs go out."""
from __future__ import annotations

import math
from collections import defaultdict
from itertools import cycle

import torch

from . import losses
from .teacher import cycle_loss, rounds
from .students import predict_scores


def lr_at(stage, epoch: int) -> float:
    """Linear warm-up, then halve every ``decay_every`` epochs (paper: 20, 50)."""
    if epoch < stage.warmup_epochs:
        return stage.lr * (epoch + 1) / stage.warmup_epochs
    if stage.decay_every > 0:
        return stage.lr * 0.5 ** ((epoch - stage.warmup_epochs) // stage.decay_every)
    return stage.lr


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def step(optimizer, loss, runtime, *modules) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    runtime.sync_gradients(*modules)
    optimizer.step()


def batches(loader, n: int):
    """``n`` batches, starting the loader over when it runs out (small labeled sets)."""
    it = iter(loader)
    for _ in range(n):
        try:
            yield next(it)
        except StopIteration:
            it = iter(loader)
            yield next(it)


def pretrain_epoch(teacher, optimizer, diffusion, loader, iters: int, runtime) -> dict:
    teacher.train()
    total = 0.0
    for batch in batches(loader, iters):
        x = batch["image"].to(runtime.device)
        with runtime.autocast():
            loss = cycle_loss(teacher, diffusion, x)
        step(optimizer, loss, runtime, teacher)
        total += float(loss.detach())
    return {"loss_rec": runtime.mean(total / iters)}


def cotrain_loss(teacher, student, diffusion, cfg, x_l, y_l, x_u, epoch: int) -> tuple[torch.Tensor, dict]:
    """Stage-2 objective L_u + L_s of METHOD.md; returns the total and every term."""
    dcfg, R, w_align, w_rec = cfg.diffusion, cfg.rounds, cfg.loss.align, cfg.loss.rec
    # unlabeled part
    pt_u = predict_scores(teacher, x_u, diffusion, dcfg)
    ps_u = predict_scores(student, x_u, diffusion, dcfg)
    cps = losses.dice_loss(ps_u, losses.hard(pt_u)) + losses.dice_loss(pt_u, losses.hard(ps_u))
    segs_u, recs_u = rounds(teacher, diffusion, x_u, pt_u, R, cfg.round_mode, dcfg)
    student_label = losses.hard(ps_u)
    align_u = sum(losses.dice_loss(p, student_label) for p in segs_u) / R
    rec_u = sum(recs_u) / R
    lam = losses.ramp(epoch, cfg.train.epochs, cfg.loss.unlabeled)
    loss_u = lam * (cfg.loss.cps * cps + w_align * align_u + w_rec * rec_u)
    # labeled part: the same rounds, aligned to the ground truth
    y = losses.one_hot(y_l)
    pt_l = predict_scores(teacher, x_l, diffusion, dcfg)
    ps_l = predict_scores(student, x_l, diffusion, dcfg)
    sup_s, sup_t = losses.dice_loss(ps_l, y), losses.dice_loss(pt_l, y)
    segs_l, recs_l = rounds(teacher, diffusion, x_l, pt_l, R, cfg.round_mode, dcfg)
    align_l = sum(losses.dice_loss(p, y) for p in segs_l) / R
    rec_l = sum(recs_l) / R
    loss_s = sup_s + sup_t + w_align * align_l + w_rec * rec_l
    terms = {"loss": loss_u + loss_s, "loss_u": loss_u, "loss_s": loss_s, "cps": cps, "align_u": align_u,
             "rec_u": rec_u, "sup_student": sup_s, "sup_teacher": sup_t, "align_l": align_l, "rec_l": rec_l}
    return loss_u + loss_s, {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in terms.items()} | {"lambda_u": lam}


def cotrain_epoch(teacher, student, opt_t, opt_s, diffusion, labeled, unlabeled, iters: int, cfg,
                  epoch: int, runtime) -> dict:
    teacher.train()
    student.train()
    sums: dict[str, float] = defaultdict(float)
    for lab, unl in zip(batches(labeled, iters), batches(unlabeled, iters)):
        x_l, y_l = lab["image"].to(runtime.device), lab["mask"].to(runtime.device)
        x_u = unl["image"].to(runtime.device)
        with runtime.autocast():
            loss, terms = cotrain_loss(teacher, student, diffusion, cfg, x_l, y_l, x_u, epoch)
        opt_t.zero_grad(set_to_none=True)
        opt_s.zero_grad(set_to_none=True)
        loss.backward()  # both networks learn: the teacher keeps improving its pseudo-labels
        runtime.sync_gradients(teacher, student)
        opt_t.step()
        opt_s.step()
        if not math.isfinite(terms["loss"]):
            raise FloatingPointError(f"stage-2 loss became {terms['loss']} at epoch {epoch}: lower train.lr")
        for k, v in terms.items():
            sums[k] += v
    return {k: runtime.mean(v / iters) for k, v in sums.items()}
