"""Prediction over a split, the threshold chosen on validation, and scoring, at the resolution
the config asks for: each image's own size by default, or the training size (the paper's way)."""
from __future__ import annotations

import numpy as np
import torch

from .data.truth import Truth, upsample  # noqa: F401 (re-exported: evaluate.Truth, evaluate.upsample)
from .metrics import SetMetrics

def grid(start: float, stop: float, step: float) -> np.ndarray:
    """The thresholds start, start + step, ... up to stop (config key ``eval.thresholds``)."""
    return np.round(np.arange(start, stop + 1e-9, step), 6)


# the default threshold grid; a choice at either end is reported, since the best may lie beyond it
THRESHOLDS = grid(0.02, 0.98, 0.02)


@torch.no_grad()
def collect(predict, dataset, runtime, seed: int = 0, batch_size: int = 8, overlap: float = 0.25) -> list[np.ndarray]:
    """Foreground probabilities of every image of a split at the network's scale, from a
    predictor (``Method.predict``; its networks in eval mode): the training size, or each image
    whole by a sliding window of ``dataset.window`` (tiles of scaled images, patches of volumes)."""
    # a dedicated generator: the random start timesteps are the same on every evaluation
    gen = torch.Generator().manual_seed(seed)  # on the CPU: see diffusion._on

    def probabilities(x: torch.Tensor) -> torch.Tensor:  # (B, C, *spatial) -> (B, K, *spatial)
        with runtime.autocast():
            return predict(x, gen).float().softmax(1)

    window = tuple(getattr(dataset, "window", ()))
    loader = torch.utils.data.DataLoader(dataset, batch_size=1 if window else batch_size, shuffle=False)
    # volumes: few windows at once, so whole-volume validation fits a small machine's memory
    sw_batch = 2 if len(window) == 3 else batch_size
    probs = []
    for batch in loader:
        x = batch["image"].to(runtime.device)
        p = slide(probabilities, x, window, overlap, sw_batch) if window else probabilities(x)
        probs.extend(p[:, 1].cpu().numpy())
    return probs


def slide(probabilities, x: torch.Tensor, window, overlap: float, batch_size: int = 8) -> torch.Tensor:
    """Class probabilities of a whole image or volume from windows of shape ``window``,
    overlapping and blended with Gaussian weights (MONAI's sliding-window inference, the
    field's standard). Inputs smaller than a window are padded and the padding cut off again."""
    from monai.inferers import sliding_window_inference

    return sliding_window_inference(x, tuple(window), batch_size, probabilities, overlap=overlap,
                                    mode="gaussian", padding_mode="constant")


def best_threshold(probs, gts, fovs, thresholds: np.ndarray = THRESHOLDS) -> tuple[float, float]:
    """The grid threshold maximising pooled Jaccard; returns (t, Jaccard). One pass over the
    pixels: each is binned by how many grid values lie below it, so ``p > t_k`` is a suffix sum."""
    pos = np.zeros(len(thresholds) + 1, np.int64)  # foreground pixels per bin
    neg = np.zeros(len(thresholds) + 1, np.int64)
    for p, g, f in zip(probs, gts, fovs):
        bins = np.searchsorted(thresholds, p[f], side="left")  # thresholds strictly below p
        gt = g[f]
        pos += np.bincount(bins[gt], minlength=len(pos))
        neg += np.bincount(bins[~gt], minlength=len(neg))
    above_pos = np.cumsum(pos[::-1])[::-1]  # above_pos[k + 1]: foreground pixels with p > t_k
    above_neg = np.cumsum(neg[::-1])[::-1]
    total_pos = pos.sum()
    best = (0.5, -1.0)
    for k, t in enumerate(thresholds):
        inter, pred = above_pos[k + 1], above_pos[k + 1] + above_neg[k + 1]
        union = pred + total_pos - inter
        jac = 1.0 if union == 0 else inter / union
        if jac > best[1] + 1e-12:
            best = (float(t), float(jac))
    return best


def at_edge(threshold: float, thresholds: np.ndarray = THRESHOLDS) -> bool:
    return threshold in (float(thresholds[0]), float(thresholds[-1]))


def score(probs, gts, fovs, threshold: float, spacings=None, surface: bool = True, per_image: bool = False) -> dict:
    """Pooled and per-item metrics at ``threshold``; distances in the units of each item's
    spacing (millimetres for volumes, pixels for images). ``per_image``: also each item's Dice,
    in order (``dice_per_image``)."""
    metrics = SetMetrics(None, surface)
    for i, (p, g, f) in enumerate(zip(probs, gts, fovs)):
        metrics.add((p > threshold) & f, g & f, spacings[i] if spacings else None)
    out = metrics.result()
    out["threshold"] = threshold
    if per_image:
        out["dice_per_image"] = [r["dice"] for r in metrics.per_image]
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
