"""Prediction over a split, the threshold chosen on validation, and scoring, at the resolution
the config asks for: each image's own size by default, or the training size (the paper's way)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .data.cache import open_cache, original, read_item
from .infer import scores as predict_scores
from .metrics import SetMetrics

# the threshold grid; a choice at either end is reported, since the best may lie beyond it
THRESHOLDS = np.round(np.arange(0.02, 0.98 + 1e-9, 0.02), 2)


@torch.no_grad()
def collect(model, dataset, diffusion, dcfg, runtime, seed: int = 0, batch_size: int = 8,
            overlap: float = 0.25) -> list[np.ndarray]:
    """Foreground probabilities of every image of a split at the network's scale: the training
    size, or (tiles, ``dataset.window`` > 0) each image's scaled size, by a sliding window; every
    volume whole, by a sliding window of the training patch (``dataset.window`` a shape)."""
    was_training = model.training
    model.eval()
    # a dedicated generator: the random start timesteps are the same on every evaluation
    gen = torch.Generator().manual_seed(seed)  # on the CPU: see diffusion._on

    def probabilities(x: torch.Tensor) -> torch.Tensor:  # (B, C, h, w) -> (B, K, h, w)
        with runtime.autocast():
            return predict_scores(model, x, diffusion, dcfg, gen).float().softmax(1)

    window = getattr(dataset, "window", 0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=1 if window else batch_size, shuffle=False)
    probs = []
    for batch in loader:
        x = batch["image"].to(runtime.device)
        # volumes: few windows at once, so whole-volume validation fits a small machine's memory
        sw_batch = 2 if isinstance(window, tuple) else batch_size
        p = slide(probabilities, x, window, overlap, sw_batch) if window else probabilities(x)
        probs.extend(p[:, 1].cpu().numpy())
    model.train(was_training)
    return probs


def slide(probabilities, x: torch.Tensor, window, overlap: float, batch_size: int = 8) -> torch.Tensor:
    """Class probabilities of a whole image or volume from windows (an int: window x window
    tiles; a tuple: its shape), overlapping and blended with Gaussian weights (MONAI's
    sliding-window inference, the field's standard). Inputs smaller than a window are padded
    and the padding cut off again."""
    from monai.inferers import sliding_window_inference

    roi = tuple(window) if isinstance(window, (tuple, list)) else (window, window)
    return sliding_window_inference(x, roi, batch_size, probabilities, overlap=overlap,
                                    mode="gaussian", padding_mode="constant")


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


def best_threshold(probs, gts, fovs) -> tuple[float, float]:
    """The grid threshold maximising pooled Jaccard; returns (t, Jaccard). One pass over the
    pixels: each is binned by how many grid values lie below it, so ``p > t_k`` is a suffix sum."""
    pos = np.zeros(len(THRESHOLDS) + 1, np.int64)  # foreground pixels per bin
    neg = np.zeros(len(THRESHOLDS) + 1, np.int64)
    for p, g, f in zip(probs, gts, fovs):
        bins = np.searchsorted(THRESHOLDS, p[f], side="left")  # thresholds strictly below p
        gt = g[f]
        pos += np.bincount(bins[gt], minlength=len(pos))
        neg += np.bincount(bins[~gt], minlength=len(neg))
    above_pos = np.cumsum(pos[::-1])[::-1]  # above_pos[k + 1]: foreground pixels with p > t_k
    above_neg = np.cumsum(neg[::-1])[::-1]
    total_pos = pos.sum()
    best = (0.5, -1.0)
    for k, t in enumerate(THRESHOLDS):
        inter, pred = above_pos[k + 1], above_pos[k + 1] + above_neg[k + 1]
        union = pred + total_pos - inter
        jac = 1.0 if union == 0 else inter / union
        if jac > best[1] + 1e-12:
            best = (float(t), float(jac))
    return best


def at_edge(threshold: float) -> bool:
    return threshold in (float(THRESHOLDS[0]), float(THRESHOLDS[-1]))


def score(probs, gts, fovs, threshold: float, spacings=None, surface: bool = True) -> dict:
    """Pooled and per-item metrics at ``threshold``; distances in the units of each item's
    spacing (millimetres for volumes, pixels for images)."""
    metrics = SetMetrics(None, surface)
    for i, (p, g, f) in enumerate(zip(probs, gts, fovs)):
        metrics.add((p > threshold) & f, g & f, spacings[i] if spacings else None)
    out = metrics.result()
    out["threshold"] = threshold
    return out


def label_free_dice(probs, gts, fovs) -> float:
    """Pooled Dice of a mask learnt without labels: it may call the foreground either of its two
    channels, so the better of (p > 0.5) and (p <= 0.5) counts. A readout only, never a loss."""
    inter = [0, 0]
    pred = [0, 0]
    gt_sum = 0
    for p, g, f in zip(probs, gts, fovs):
        gt = g & f
        gt_sum += int(gt.sum())
        for c, mask in enumerate(((p > 0.5) & f, (p <= 0.5) & f)):
            inter[c] += int((mask & gt).sum())
            pred[c] += int(mask.sum())
    return max(1.0 if pred[c] + gt_sum == 0 else 2 * inter[c] / (pred[c] + gt_sum) for c in (0, 1))
