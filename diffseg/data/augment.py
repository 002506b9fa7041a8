"""Augmentation on tensors: the paper's flips, transpose and 90-degree rotations, plus jitter.

The same geometric transform is applied to the image and every mask passed with it.
"""
from __future__ import annotations

import torch


def geometric(image: torch.Tensor, *masks: torch.Tensor, generator: torch.Generator | None = None):
    """image (C, H, W), masks (H, W): random flip, transpose and rotation by k * 90 degrees."""
    draws = torch.randint(0, 2, (3,), generator=generator).tolist()
    k = int(torch.randint(0, 4, (1,), generator=generator))
    tensors = [image] + [m[None] for m in masks]
    out = []
    for t in tensors:
        if draws[0]:
            t = t.flip(-1)
        if draws[1]:
            t = t.flip(-2)
        if draws[2]:
            t = t.transpose(-1, -2)
        out.append(torch.rot90(t, k, dims=(-2, -1)).contiguous())
    return (out[0], *[m[0] for m in out[1:]])


def intensity(image: torch.Tensor, strength: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Brightness and contrast jitter of relative size ``strength`` on a normalised image."""
    if strength <= 0:
        return image
    a, b = (torch.rand(2, generator=generator) * 2 - 1) * strength
    return image * (1 + a) + b
