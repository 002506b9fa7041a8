"""Procedural images with gland- or lesion-like shapes: the embedded default dataset.

Textured (smoothed multi-scale noise, stain-like colours), so a model has to learn shape and
texture, not a threshold on one channel.
"""
from __future__ import annotations

import numpy as np


def _smooth_noise(rng: np.random.Generator, size: int, scales=(4, 8, 16)) -> np.ndarray:
    """Sum of bilinearly upsampled random grids: cheap fractal-ish texture in [0, 1]."""
    out = np.zeros((size, size), np.float32)
    for cells in scales:
        grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
        coords = np.linspace(0, cells, size, dtype=np.float32)
        i0 = np.minimum(coords.astype(int), cells - 1)
        f = coords - i0
        rows = grid[i0] * (1 - f)[:, None] + grid[i0 + 1] * f[:, None]
        out += rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]
    out -= out.min()
    return out / max(out.max(), 1e-6)


def _blob(rng, yy, xx, cy, cx, ry, rx, wobble: float) -> np.ndarray:
    """Signed 'inside' field of an irregular ellipse (> 0 inside)."""
    angle = np.arctan2(yy - cy, xx - cx)
    phase = rng.random(3) * 2 * np.pi
    radius = 1 + wobble * sum(np.sin((k + 2) * angle + phase[k]) / (k + 2) for k in range(3))
    dist = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    return radius - dist


def make_sample(index: int, size: int, kind: str = "glands") -> tuple[np.ndarray, np.ndarray]:
    """Image (size, size, 3) uint8 and mask (size, size) uint8 in {0, 1}, fixed by ``index``."""
    rng = np.random.default_rng(10_000 + index)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    texture = _smooth_noise(rng, size)
    fine = rng.random((size, size)).astype(np.float32)
    mask = np.zeros((size, size), bool)
    ring = np.zeros((size, size), bool)
    if kind == "glands":
        for _ in range(rng.integers(2, 6)):
            cy, cx = rng.uniform(0.15, 0.85, 2) * size
            ry, rx = rng.uniform(0.08, 0.2, 2) * size
            inside = _blob(rng, yy, xx, cy, cx, ry, rx, 0.25)
            mask |= inside > 0
            ring |= (inside > 0) & (inside < 0.35)  # dark epithelium around a pale lumen
        base = np.array([0.85, 0.6, 0.8])  # pink stroma
        fg = np.array([0.55, 0.3, 0.65])  # purple nuclei-rich epithelium
        lumen = np.array([0.95, 0.9, 0.95])
    else:
        cy, cx = rng.uniform(0.35, 0.65, 2) * size
        ry, rx = rng.uniform(0.18, 0.32, 2) * size
        mask = _blob(rng, yy, xx, cy, cx, ry, rx, 0.35) > 0
        ring = mask
        base = np.array([0.9, 0.72, 0.6])  # skin
        fg = np.array([0.45, 0.3, 0.22])  # pigmented lesion
        lumen = fg
    shade = 0.75 + 0.25 * texture[..., None] + 0.08 * (fine[..., None] - 0.5)
    image = base * shade
    colour = np.where(ring[..., None], fg, lumen) * (0.8 + 0.3 * texture[..., None])
    image = np.where(mask[..., None], colour, image)
    if kind == "lesions":  # a few dark hairs crossing the image, not part of the mask
        for _ in range(rng.integers(0, 4)):
            a, b = rng.uniform(-1, 1), rng.uniform(0, size)
            image[np.abs(yy - (a * xx + b)) < 0.8] *= 0.35
    image = np.clip(image + 0.04 * rng.standard_normal(image.shape), 0, 1)
    return (image * 255).astype(np.uint8), mask.astype(np.uint8)
