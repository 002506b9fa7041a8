"""Loss terms of both stages."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def hard(scores: torch.Tensor) -> torch.Tensor:
    """argmax one-hot of class scores; carries no gradient (a pseudo-label)."""
    return F.one_hot(scores.detach().argmax(1), scores.shape[1]).permute(0, 3, 1, 2).float()


def one_hot(mask: torch.Tensor, classes: int = 2) -> torch.Tensor:
    return F.one_hot(mask.long(), classes).permute(0, 3, 1, 2).float()


def dice_loss(scores: torch.Tensor, target: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Soft Dice on softmax(scores) against a one-hot target, averaged over classes."""
    probs = scores.float().softmax(1)
    dims = (0, 2, 3)
    inter = (probs * target).sum(dims)
    denom = probs.sum(dims) + target.sum(dims)
    return 1 - ((2 * inter + eps) / (denom + eps)).mean()


def ramp(epoch: int, epochs: int, weight: float) -> float:
    """lambda(e) = lambda_u * (e + 1) / epochs."""
    return weight * (epoch + 1) / max(epochs, 1)
