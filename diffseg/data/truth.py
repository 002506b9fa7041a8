"""The ground truth of a split at the resolution it is scored at, and probabilities brought to it."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .cache import open_cache, original, read_item


def upsample(prob: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A training-size probability map brought to an image's own size (bilinear): the same
    operation ``diffseg predict`` applies before it writes a mask."""
    if tuple(prob.shape) == tuple(shape):
        return prob
    t = torch.from_numpy(np.ascontiguousarray(prob, dtype=np.float32))[None, None]
    return F.interpolate(t, size=tuple(int(v) for v in shape), mode="bilinear", align_corners=False)[0, 0].numpy()


class Truth:
    """The ground truth (and field of view) of one split at the resolution it is scored at, with
    each item's pixel or voxel spacing. The prepared data builds it (``data.truth(part, ...)``)."""

    def __init__(self, gts: list[np.ndarray], fovs: list[np.ndarray], spacings: list[tuple], resolution: str):
        self.gts, self.fovs, self.spacings, self.resolution = gts, fovs, spacings, resolution
        self._trivial: dict | None = None

    @classmethod
    def of_images(cls, data, part: str, resolution: str = "original") -> "Truth":
        """A 2D split from the cache: at the network's scale, or each image's original size."""
        rows = data.dataset(part).indices
        with open_cache(data.cache_path) as fh:
            if resolution == "training":  # the network's scale: size x size, or the scaled image
                items = [read_item(fh, i) for i in rows]
                gts = [m.astype(bool) for _, m, _ in items]
                fovs = [f.astype(bool) if f is not None else np.ones_like(g) for (_, _, f), g in zip(items, gts)]
            else:
                gts = [original(fh, "orig_masks", i).astype(bool) for i in rows]
                fovs = [original(fh, "orig_fov", i).astype(bool) if "orig_fov" in fh else np.ones_like(g)
                        for i, g in zip(rows, gts)]
        return cls(gts, fovs, [tuple(data.source.spacing)] * len(gts), resolution)

    def resize(self, probs: list[np.ndarray]) -> list[np.ndarray]:
        """Training-size probabilities at this truth's resolution, image by image."""
        return [upsample(p, g.shape) for p, g in zip(probs, self.gts)]

    def trivial(self) -> dict:
        """Pooled Dice of predicting foreground everywhere and background everywhere (inside the
        field of view): the floor any model must beat to carry signal. Computed once."""
        if self._trivial is None:
            gt = sum(int((g & f).sum()) for g, f in zip(self.gts, self.fovs))
            area = sum(int(f.sum()) for f in self.fovs)
            self._trivial = {"all_foreground_dice": 1.0 if area + gt == 0 else 2 * gt / (area + gt),
                             "all_background_dice": 1.0 if gt == 0 else 0.0}
        return dict(self._trivial)
