"""The U-Net every method builds on, in 2D (images) or 3D (volumes), and the factory of
``model.arch``.

One module serves both: ``dims`` picks the convolution, normalisation and pooling; 3D upsamples
with a transposed convolution (METHOD.md's 3D variant), 2D bilinearly."""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

from .blocks import CONV, conv_block


def timestep_embedding(t: torch.Tensor, dim: int = 64) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=1)


POOL = {2: F.max_pool2d, 3: F.max_pool3d}
UP_MODE = {2: "bilinear", 3: "trilinear"}


def resize_to(h: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """h brought to like's spatial size (only when they differ: odd sizes in the encoder)."""
    if h.shape[2:] == like.shape[2:]:
        return h
    return F.interpolate(h, size=like.shape[2:], mode=UP_MODE[h.dim() - 2], align_corners=False)


def level_widths(width: int, depth: int) -> list[int]:
    """Paper scale (width 64, depth 4): 64-64-128-256-512."""
    return [width] + [width * 2 ** max(0, i - 1) for i in range(1, depth + 1)]


class UNet(nn.Module):
    """Encoder of MaxPool + two [conv, BN, LeakyReLU] with growing dropout; a decoder that
    upsamples bilinearly (2D) or by transposed convolution (3D).

    With ``time_embedding`` a sinusoidal timestep embedding is added once after the first block.
    """

    def __init__(self, in_ch: int, out_ch: int, width: int = 64, depth: int = 4,
                 dropout: bool = True, time_embedding: bool = True, dims: int = 2):
        super().__init__()
        if dims not in CONV:
            raise ValueError(f"dims must be 2 or 3, got {dims}")
        self.dims = dims
        widths = level_widths(width, depth)
        drops = torch.linspace(0.05, 0.4, depth + 1).tolist() if dropout else [0.0] * (depth + 1)
        self.inc = conv_block(in_ch, widths[0], nn.LeakyReLU, drops[0], dims)
        self.time = (nn.Sequential(nn.Linear(64, 4 * width), nn.SiLU(), nn.Linear(4 * width, widths[0]))
                     if time_embedding else None)
        self.down = nn.ModuleList(conv_block(widths[i], widths[i + 1], nn.LeakyReLU, drops[i + 1], dims)
                                  for i in range(depth))
        # 3D: a learnt 2x upsampling per level; 2D keeps bilinear (its checkpoints stay valid)
        self.upsample = (nn.ModuleList(nn.ConvTranspose3d(widths[i + 1], widths[i + 1], 2, stride=2)
                                       for i in reversed(range(depth))) if dims == 3 else None)
        self.up = nn.ModuleList(conv_block(widths[i + 1] + widths[i], widths[i], nn.ReLU, dims=dims)
                                for i in reversed(range(depth)))
        self.out = CONV[dims](widths[0], out_ch, 1)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose3d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, a=0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        h = self.add_time(self.inc(x), t)
        skips = [h]
        pool = POOL[self.dims]
        for block in self.down:
            h = block(pool(h, 2))
            skips.append(h)
        skips.pop()
        for i, block in enumerate(self.up):
            skip = skips.pop()
            if self.upsample is not None:
                h = self.upsample[i](h)
            h = resize_to(h, skip)
            h = block(self.join(h, skip))
        return self.out(h)

    def add_time(self, h: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
        """The first block's features with the timestep embedding added (when there is one)."""
        if self.time is None:
            return h
        return h + self.time(timestep_embedding(t)).view(*h.shape[:2], *[1] * self.dims)

    def join(self, h: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """The decoder's input at a level: upsampled features beside the encoder's skip."""
        return torch.cat([h, skip], dim=1)


def build_segmenter(model_cfg, channels: int, dims: int, classes: int = 2) -> nn.Module:
    """The network of ``model.arch``: the U-Net (no time input) at the configured width and
    depth, so every method compares at equal width; or the U-Net on a timm encoder (2D)."""
    m = model_cfg
    if m.arch == "unet":
        return UNet(channels, classes, m.width, m.depth, m.dropout, time_embedding=False, dims=dims)
    if m.arch == "xnet_unet":
        from .xnet_unet import XNetUNet

        if dims != 2:
            raise ValueError("model.arch=xnet_unet is a 2D network")
        return XNetUNet(channels, classes, m.width, m.depth, m.dropout)
    from .timm_unet import TimmUNet  # timm is imported only when asked for

    return TimmUNet(m.timm_encoder, channels, classes, m.timm_weights)
