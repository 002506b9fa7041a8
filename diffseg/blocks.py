"""The convolution block of every U-Net here (the project's own and the timm decoder's)."""
from __future__ import annotations

from torch import nn

CONV = {2: nn.Conv2d, 3: nn.Conv3d}
NORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def conv_block(cin: int, cout: int, act: type[nn.Module], dropout: float = 0.0, dims: int = 2) -> nn.Sequential:
    conv, norm = CONV[dims], NORM[dims]
    layers = [conv(cin, cout, 3, padding=1), norm(cout), act()]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers += [conv(cout, cout, 3, padding=1), norm(cout), act()]
    return nn.Sequential(*layers)
