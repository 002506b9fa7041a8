"""Loss terms shared by the methods."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def channels_first(x: torch.Tensor) -> torch.Tensor:
    """(B, *spatial, K) -> (B, K, *spatial), for images and volumes alike."""
    return x.movedim(-1, 1)


def hard(scores: torch.Tensor) -> torch.Tensor:
    """argmax one-hot of class scores; carries no gradient (a pseudo-label)."""
    return channels_first(F.one_hot(scores.detach().argmax(1), scores.shape[1])).float()


def one_hot(mask: torch.Tensor, classes: int = 2) -> torch.Tensor:
    return channels_first(F.one_hot(mask.long(), classes)).float()


def dice_loss(scores: torch.Tensor, target: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Soft Dice on softmax(scores) against a one-hot target, averaged over classes."""
    probs = scores.float().softmax(1)
    dims = (0, *range(2, scores.dim()))  # batch and every spatial axis
    inter = (probs * target).sum(dims)
    denom = probs.sum(dims) + target.sum(dims)
    return 1 - ((2 * inter + eps) / (denom + eps)).mean()


def dice_ce(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The baselines' supervised loss, as in SSL4MIS: (cross-entropy + soft Dice) / 2."""
    return 0.5 * (F.cross_entropy(scores.float(), mask.long()) + dice_loss(scores, one_hot(mask, scores.shape[1])))


def softmax_mse(scores: torch.Tensor, target_scores: torch.Tensor) -> torch.Tensor:
    """Element-wise squared difference of the two softmax maps (B, K, ...); the target is detached."""
    return (scores.float().softmax(1) - target_scores.detach().float().softmax(1)) ** 2
