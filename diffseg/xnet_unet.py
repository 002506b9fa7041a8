"""The U-Net of the XNet code base that the published GlaS baselines ran on
(``UNet_Transposed_Leaky`` of ``models/networks_2d/unet.py`` in the authors' repository; see
REPRODUCE.md), rebuilt layer for layer so that reproduced cells train the same network.

Encoder: five blocks of [conv 3x3, BN, LeakyReLU(0.01), dropout, conv 3x3, BN, LeakyReLU] with
dropout 0.05/0.1/0.2/0.3/0.5 by depth and max-pooling between them. Decoder: per level a 1x1
convolution, x2 bilinear upsampling (align_corners), concatenation [skip, up] and two
[conv 3x3, BN, ReLU] without dropout. Head: a 3x3 convolution. At width 16: 16-32-64-128-256,
about 1.81 M parameters. 2D only.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

DROPOUT = (0.05, 0.1, 0.2, 0.3, 0.5)


def block(c_in: int, c_out: int, act, dropout: float) -> nn.Sequential:
    layers = [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), act()]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers, nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), act())


class XNetUNet(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, width: int = 16, depth: int = 4, dropout: bool = True):
        super().__init__()
        if depth + 1 > len(DROPOUT):
            raise ValueError(f"the XNet U-Net has at most {len(DROPOUT) - 1} down-sampling stages, got {depth}")
        widths = [width * 2 ** i for i in range(depth + 1)]
        drops = DROPOUT[:depth + 1] if dropout else (0.0,) * (depth + 1)
        leaky = lambda: nn.LeakyReLU(0.01)  # noqa: E731
        self.encoder = nn.ModuleList(block(widths[i - 1] if i else in_ch, widths[i], leaky, drops[i])
                                     for i in range(depth + 1))
        self.reduce = nn.ModuleList(nn.Conv2d(widths[i + 1], widths[i], 1) for i in reversed(range(depth)))
        self.decoder = nn.ModuleList(block(2 * widths[i], widths[i], nn.ReLU, 0.0) for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], out_ch, 3, padding=1)
        for m in self.modules():  # the authors' init_weights(init_type="kaiming")
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, enc in enumerate(self.encoder):
            x = enc(F.max_pool2d(x, 2) if i else x)
            skips.append(x)
        x = skips.pop()
        for reduce, dec in zip(self.reduce, self.decoder):
            skip = skips.pop()
            up = F.interpolate(reduce(x), size=skip.shape[2:], mode="bilinear", align_corners=True)
            x = dec(torch.cat([skip, up], dim=1))
        return self.head(x)
