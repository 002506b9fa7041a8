"""Prediction over a split, threshold choice on validation, and scoring."""
from __future__ import annotations

import numpy as np
import torch

from .metrics import SetMetrics
from .infer import scores as predict_scores

THRESHOLDS = np.round(np.arange(0.0, 0.9 + 1e-9, 0.02), 2)


@torch.no_grad()
def collect(model, dataset, diffusion, dcfg, runtime, seed: int = 0, batch_size: int = 8):
    """Foreground probabilities, ground truths and field-of-view masks of a whole split (numpy)."""
    was_training = model.training
    model.eval()
    # a dedicated generator: the random start timesteps are the same on every evaluation
    gen = torch.Generator(device=runtime.device).manual_seed(seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    probs, gts, fovs = [], [], []
    for batch in loader:
        x = batch["image"].to(runtime.device)
        with runtime.autocast():
            scores = predict_scores(model, x, diffusion, dcfg, gen)
        probs.append(scores.float().softmax(1)[:, 1].cpu().numpy())
        gts.append(batch["mask"].numpy())
        fovs.append(batch["fov"].numpy())
    model.train(was_training)
    return np.concatenate(probs), np.concatenate(gts).astype(bool), np.concatenate(fovs).astype(bool)


def best_threshold(probs: np.ndarray, gts: np.ndarray, fovs: np.ndarray) -> tuple[float, float]:
    """The grid threshold (0..0.9, step 0.02) maximising pooled Jaccard; returns (t, Jaccard)."""
    gt = gts & fovs
    best = (0.5, -1.0)
    for t in THRESHOLDS:
        pred = (probs > t) & fovs
        inter = np.logical_and(pred, gt).sum()
        union = np.logical_or(pred, gt).sum()
        jac = 1.0 if union == 0 else inter / union
        if jac > best[1] + 1e-12:
            best = (float(t), float(jac))
    return best


def score(probs, gts, fovs, threshold: float, spacing=None, surface: bool = True) -> dict:
    metrics = SetMetrics(spacing, surface)
    for p, g, f in zip(probs, gts, fovs):
        metrics.add((p > threshold) & f, g & f)
    out = metrics.result()
    out["threshold"] = threshold
    return out


def label_free_dice(probs, gts, fovs) -> float:
    """Pooled Dice of a mask learnt without labels: it may call the foreground either of its two
    channels, so the better of (p > 0.5) and (p <= 0.5) counts. A readout only, never a loss."""
    gt = gts & fovs
    best = 0.0
    for pred in ((probs > 0.5) & fovs, (probs <= 0.5) & fovs):
        denom = pred.sum() + gt.sum()
        best = max(best, 1.0 if denom == 0 else float(2 * np.logical_and(pred, gt).sum() / denom))
    return best


def all_foreground_dice(gts, fovs) -> float:
    """Pooled Dice of predicting foreground everywhere (inside the field of view): the floor a
    model must beat to carry any signal."""
    gt = gts & fovs
    denom = fovs.sum() + gt.sum()
    return 1.0 if denom == 0 else float(2 * gt.sum() / denom)
