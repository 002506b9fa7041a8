"""Network factories: the diffusion teacher, the paper's twin student, the baselines' U-Net, and a
U-Net on any timm encoder (for every method)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
import torch.nn.functional as F

from .errors import ConfigError
from .nets import DiffusionSegmenter, UNet, conv_block


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


def spatial_dims(cfg) -> int:
    """2 for images, 3 for volumes: a property of the dataset, so a run's config says it."""
    from .data.sources import VOLUME_DATASETS

    return 3 if cfg.data.dataset in VOLUME_DATASETS else 2


def build_teacher(cfg, channels: int, classes: int = 2) -> DiffusionSegmenter:
    m = cfg.model
    return DiffusionSegmenter(channels, classes, m.width, m.depth, m.dropout, dims=spatial_dims(cfg))


def build_student(cfg, channels: int, classes: int = 2) -> nn.Module:
    m = cfg.model
    if m.student == "twin":
        return DiffusionSegmenter(channels, classes, m.width, m.depth, m.dropout, image_pathway=False,
                                  dims=spatial_dims(cfg))
    return build_segmenter(cfg, channels, classes)


def build_segmenter(cfg, channels: int, classes: int = 2) -> nn.Module:
    """The baselines' network: the paper's student U-Net (same width and depth) without the time
    input or the noisy-mask channels, so comparisons are at equal width; or the timm U-Net."""
    m = cfg.model
    if m.student == "twin":
        return UNet(channels, classes, m.width, m.depth, m.dropout, time_embedding=False, dims=spatial_dims(cfg))
    return TimmUNet(m.timm_encoder, channels, classes, m.timm_weights)
