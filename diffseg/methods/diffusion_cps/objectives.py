"""The teacher's mask prediction and its own objectives: stage-1 cycle consistency and the
pseudo-label rounds."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...diffusion import Diffusion
from .network import DiffusionSegmenter, scores_from_x0


def mask_scores(net: DiffusionSegmenter, process: Diffusion, x: torch.Tensor, sample_steps: int, start_t: int,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Class scores (B, K, *spatial) of a diffusion segmenter: its mask pathway predicts from
    the noised empty mask (one step is the paper's; more walk DDIM from ``start_t``)."""
    y0 = process.predict_mask(net.mask, x, net.classes, sample_steps, start_t, generator)
    return scores_from_x0(y0)


def cycle_loss(teacher: DiffusionSegmenter, process: Diffusion, x: torch.Tensor) -> torch.Tensor:
    """Stage 1: the mask pathway's map must help the image pathway denoise x (no labels)."""
    y0 = process.predict_mask(teacher.mask, x, teacher.classes, 1, -1)  # t1 random, one step
    m = scores_from_x0(y0)  # keeps the graph: the gradient reaches M through the conditioning
    t2 = process.sample_t(x.shape[0], x.device)
    eps = torch.randn_like(x)
    eps_hat = teacher.image(process.q_sample(x, t2, eps), m, t2)
    return F.mse_loss(eps_hat.float(), eps.float())


def rounds(teacher: DiffusionSegmenter, process: Diffusion, x: torch.Tensor, first: torch.Tensor, n_rounds: int,
           mode: str, sample_steps: int, start_t: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """R rounds of reconstruct-then-re-segment. Returns per-round scores p_j and noise MSEs.

    ``independent``: every round is conditioned on the teacher's first mask (authors' code);
    ``chained``: round j is conditioned on the mask of round j - 1.
    """
    condition = first.detach()
    lo, hi = x.min().detach(), x.max().detach()
    segs, recs = [], []
    for _ in range(n_rounds):
        t = process.sample_t(x.shape[0], x.device)
        eps = torch.randn_like(x)
        x_t = process.q_sample(x, t, eps)
        eps_hat = teacher.image(x_t, condition, t)
        recs.append(F.mse_loss(eps_hat.float(), eps.float()))
        # x0 from a large-t estimate divides by a tiny sqrt(abar): keep it in the data's range
        x_hat = process.x0_from_eps(x_t, t, eps_hat).detach().clamp(lo, hi)
        p = mask_scores(teacher, process, x_hat, sample_steps, start_t)
        segs.append(p)
        if mode == "chained":
            condition = p.detach()
    return segs, recs
