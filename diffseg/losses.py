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


def xnet_dice(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The Dice loss of the XNet code the published GlaS baselines ran on (its ``DiceLoss``):
    softmax, then per class and per image 1 - (2 sum(p t) + 1) / (sum(p^2) + sum(t^2) + 1),
    averaged over the batch, then over the classes of the target's one-hot. That one-hot is taken
    without a class count, as theirs: a batch whose labels are all 0 scores background alone."""
    probs = scores.float().softmax(1)
    target = channels_first(F.one_hot(labels.long()))  # (B, max label + 1, ...), as F.one_hot gives it
    classes = target.shape[1]
    p, t = probs[:, :classes].flatten(2), target.flatten(2).float()
    per_image = 1 - (2 * (p * t).sum(2) + 1) / ((p ** 2).sum(2) + (t ** 2).sum(2) + 1)  # (B, classes)
    return per_image.mean(0).sum() / classes


def supervised(kind: str, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The loss on labels that config key ``loss.supervised`` names."""
    return xnet_dice(scores, mask) if kind == "dice" else dice_ce(scores, mask)


def softmax_mse(scores: torch.Tensor, target_scores: torch.Tensor) -> torch.Tensor:
    """Element-wise squared difference of the two softmax maps (B, K, ...); the target is detached."""
    return (scores.float().softmax(1) - target_scores.detach().float().softmax(1)) ** 2
