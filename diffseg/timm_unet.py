"""A U-Net decoder over any timm encoder, for every method (2D); weights only from a local file."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
import torch.nn.functional as F

from .errors import ConfigError
from .blocks import conv_block


class TimmUNet(nn.Module):
    """U-Net decoder over a timm ``features_only`` encoder; weights only from a local file."""

    def __init__(self, encoder: str, channels: int, classes: int, weights: str = ""):
        super().__init__()
        import timm

        try:
            self.encoder = timm.create_model(encoder, features_only=True, pretrained=False, in_chans=channels)
        except (RuntimeError, ValueError) as exc:
            raise ConfigError(f"model.timm_encoder = {encoder!r}: {exc}") from None
        if weights:
            path = Path(weights)
            if not path.is_file():
                raise ConfigError(f"model.timm_weights file not found: {path}")
            state = torch.load(path, map_location="cpu", weights_only=True)
            missing, _ = self.encoder.load_state_dict(state, strict=False)
            if len(missing) == len(self.encoder.state_dict()):
                raise ConfigError(f"model.timm_weights {path} matches no parameter of encoder '{encoder}'")
        chans = self.encoder.feature_info.channels()
        self.up = nn.ModuleList(conv_block(chans[i + 1] + chans[i], chans[i], nn.ReLU)
                                for i in reversed(range(len(chans) - 1)))
        self.head = nn.Conv2d(chans[0], classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.encoder(x)
        h = feats[-1]
        for block, skip in zip(self.up, reversed(feats[:-1])):
            h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            h = block(torch.cat([h, skip], dim=1))
        return F.interpolate(self.head(h), size=x.shape[-2:], mode="bilinear", align_corners=False)
