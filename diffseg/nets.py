"""The two-pathway diffusion segmenter (2D) and its U-Net."""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F


def timestep_embedding(t: torch.Tensor, dim: int = 64) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=1)


def conv_block(cin: int, cout: int, act: type[nn.Module], dropout: float = 0.0) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), act()]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers += [nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), act()]
    return nn.Sequential(*layers)


def level_widths(width: int, depth: int) -> list[int]:
    """Paper scale (width 64, depth 4): 64-64-128-256-512."""
    return [width] + [width * 2 ** max(0, i - 1) for i in range(1, depth + 1)]


class UNet(nn.Module):
    """Encoder of MaxPool + two [conv, BN, LeakyReLU] with growing dropout; bilinear decoder.

    With ``time_embedding`` a sinusoidal timestep embedding is added once after the first block.
    """

    def __init__(self, in_ch: int, out_ch: int, width: int = 64, depth: int = 4,
                 dropout: bool = True, time_embedding: bool = True):
        super().__init__()
        widths = level_widths(width, depth)
        drops = torch.linspace(0.05, 0.4, depth + 1).tolist() if dropout else [0.0] * (depth + 1)
        self.inc = conv_block(in_ch, widths[0], nn.LeakyReLU, drops[0])
        self.time = (nn.Sequential(nn.Linear(64, 4 * width), nn.SiLU(), nn.Linear(4 * width, widths[0]))
                     if time_embedding else None)
        self.down = nn.ModuleList(conv_block(widths[i], widths[i + 1], nn.LeakyReLU, drops[i + 1])
                                  for i in range(depth))
        self.up = nn.ModuleList(conv_block(widths[i + 1] + widths[i], widths[i], nn.ReLU)
                                for i in reversed(range(depth)))
        self.out = nn.Conv2d(widths[0], out_ch, 1)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, a=0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        h = self.inc(x)
        if self.time is not None:
            h = h + self.time(timestep_embedding(t))[:, :, None, None]
        skips = [h]
        for block in self.down:
            h = block(F.max_pool2d(h, 2))
            skips.append(h)
        skips.pop()
        for block in self.up:
            skip = skips.pop()
            h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            h = block(torch.cat([h, skip], dim=1))
        return self.out(h)


class MaskPathway(nn.Module):
    """M(y_t, x, t) -> y0_hat: the noisy mask and the image in, the clean mask out."""

    def __init__(self, channels: int, classes: int, width: int, depth: int, dropout: bool):
        super().__init__()
        self.net = UNet(classes + channels, classes, width, depth, dropout)

    def forward(self, y_t, x, t):
        return self.net(torch.cat([y_t, x], dim=1), t)


class ImagePathway(nn.Module):
    """I(x_t, m, t) -> eps_hat: the noisy image and a mask in, the noise out."""

    def __init__(self, channels: int, classes: int, width: int, depth: int, dropout: bool):
        super().__init__()
        self.net = UNet(channels + classes, channels, width, depth, dropout)

    def forward(self, x_t, m, t):
        return self.net(torch.cat([x_t, m], dim=1), t)


class DiffusionSegmenter(nn.Module):
    """The teacher: both pathways. A student twin uses only its mask pathway."""

    def __init__(self, channels: int = 3, classes: int = 2, width: int = 64, depth: int = 4,
                 dropout: bool = True, image_pathway: bool = True):
        super().__init__()
        self.classes = classes
        self.mask = MaskPathway(channels, classes, width, depth, dropout)
        self.image = ImagePathway(channels, classes, width, depth, dropout) if image_pathway else None


def scores_from_x0(y0: torch.Tensor) -> torch.Tensor:
    """Mask x0 estimate in [-1, 1] scale -> class scores in [0, 1] scale (softmax logits)."""
    return (y0 + 1) / 2
