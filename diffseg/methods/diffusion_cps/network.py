"""The paper's two-pathway diffusion segmenter (the teacher), and its student twin.

METHOD.md: a mask pathway M(y_t, x, t) -> y0_hat and an image pathway I(x_t, m, t) -> eps_hat,
each the project's U-Net with a time input; the student is the mask pathway alone.
"""
from __future__ import annotations

import torch
from torch import nn

from ...nets import UNet, build_segmenter


class MaskPathway(nn.Module):
    """M(y_t, x, t) -> y0_hat: the noisy mask and the image in, the clean mask out."""

    def __init__(self, channels: int, classes: int, width: int, depth: int, dropout: bool, dims: int = 2):
        super().__init__()
        self.net = UNet(classes + channels, classes, width, depth, dropout, dims=dims)

    def forward(self, y_t, x, t):
        return self.net(torch.cat([y_t, x], dim=1), t)


class ImagePathway(nn.Module):
    """I(x_t, m, t) -> eps_hat: the noisy image and a mask in, the noise out."""

    def __init__(self, channels: int, classes: int, width: int, depth: int, dropout: bool, dims: int = 2):
        super().__init__()
        self.net = UNet(channels + classes, channels, width, depth, dropout, dims=dims)

    def forward(self, x_t, m, t):
        return self.net(torch.cat([x_t, m], dim=1), t)


class DiffusionSegmenter(nn.Module):
    """The teacher: both pathways. A student twin uses only its mask pathway."""

    def __init__(self, channels: int = 3, classes: int = 2, width: int = 64, depth: int = 4,
                 dropout: bool = True, image_pathway: bool = True, dims: int = 2):
        super().__init__()
        self.classes, self.dims = classes, dims
        self.mask = MaskPathway(channels, classes, width, depth, dropout, dims)
        self.image = ImagePathway(channels, classes, width, depth, dropout, dims) if image_pathway else None


def build_teacher(model_cfg, channels: int, dims: int, classes: int = 2) -> DiffusionSegmenter:
    m = model_cfg
    return DiffusionSegmenter(channels, classes, m.width, m.depth, m.dropout, dims=dims)


def build_student(model_cfg, channels: int, dims: int, classes: int = 2) -> nn.Module:
    """The paper's twin (the teacher's mask pathway alone) for model.arch=unet, else the timm U-Net."""
    m = model_cfg
    if m.arch == "unet":
        return DiffusionSegmenter(channels, classes, m.width, m.depth, m.dropout, image_pathway=False, dims=dims)
    return build_segmenter(model_cfg, channels, dims, classes)


def scores_from_x0(y0: torch.Tensor) -> torch.Tensor:
    """Mask x0 estimate in [-1, 1] scale -> class scores in [0, 1] scale (softmax logits)."""
    return (y0 + 1) / 2
