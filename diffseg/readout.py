"""Stage 1's diagnostic: did the label-free mask learn something a reader of labels can use?

The authors monitored stage 1 with a small readout trained on labels: a 3x3 convolution over
the two mask channels, its gradients kept out of the network that makes them. Here, after each
stage-1 epoch, such a readout is fitted afresh on the labeled split only (the maps detached:
nothing reaches the monitored network), its threshold chosen on validation and its pooled Dice
scored on validation. Beside it: the threshold-free, polarity-free AUC of the two channels'
difference, and two controls fitted the same way, on the raw image and on the monitored
network as randomly initialised.
A threshold scan always includes all-foreground, so beating all-foreground says little; stage 1
"learned" only when its readout beats both controls. 2D images at the network's scale.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from . import evaluate

FIT_STEPS = 150  # full-batch Adam steps: the fit has 2 * C * 9 + 2 weights, it converges long before


@torch.no_grad()
def maps(predict, dataset, device, seed: int = 0, batch_size: int = 8) -> tuple[list, list, list]:
    """Per image, the predictor's class scores (K, H, W) on the CPU, its mask and its field of
    view (bool), at the network's scale. ``predict`` None: the images themselves (the image
    control)."""
    gen = torch.Generator().manual_seed(seed)  # as evaluate.collect: the same draws every epoch
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    feats, masks, fovs = [], [], []
    for batch in loader:
        x = batch["image"].to(device)
        out = x if predict is None else predict(x, gen)
        feats.extend(out.float().cpu())
        masks.extend(batch["mask"].numpy().astype(bool))
        fovs.extend(batch["fov"].numpy().astype(bool))
    return feats, masks, fovs


def fit(feats: list[torch.Tensor], masks: list[np.ndarray], fovs: list[np.ndarray], seed: int = 0
        ) -> torch.nn.Module:
    """A 3x3 convolution from the maps' channels to 2 classes, fitted by cross-entropy on these
    (labeled) images inside their fields of view; inputs standardised per channel."""
    x = torch.stack(feats)
    mean, std = x.mean((0, 2, 3), keepdim=True), x.std((0, 2, 3), keepdim=True).clamp_min(1e-6)
    y = torch.from_numpy(np.stack(masks)).long()
    y[~torch.from_numpy(np.stack(fovs))] = -100  # cross_entropy's ignore_index
    gen = torch.Generator().manual_seed(seed)
    conv = torch.nn.Conv2d(x.shape[1], 2, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * 0.01)
        conv.bias.zero_()
    opt = torch.optim.Adam(conv.parameters(), lr=0.05)
    z = (x - mean) / std
    with torch.enable_grad():
        for _ in range(FIT_STEPS):
            opt.zero_grad()
            F.cross_entropy(conv(z), y).backward()
            opt.step()
    readout = torch.nn.Sequential(Standardise(mean, std), conv).eval()
    return readout


class Standardise(torch.nn.Module):
    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x):
        return (x - self.mean) / self.std


@torch.no_grad()
def score(readout, feats: list[torch.Tensor], masks: list[np.ndarray], fovs: list[np.ndarray],
          thresholds=evaluate.THRESHOLDS) -> float:
    """Pooled Dice of the readout on these (validation) images at the grid threshold that
    maximises their pooled Jaccard."""
    probs = [readout(f[None]).softmax(1)[0, 1].numpy() for f in feats]
    t, _ = evaluate.best_threshold(probs, masks, fovs, thresholds)
    return float(evaluate.score(probs, masks, fovs, t, surface=False)["dice"])


def auc(feats: list[torch.Tensor], masks: list[np.ndarray], fovs: list[np.ndarray]) -> float:
    """AUC of channel 1 minus channel 0 against the mask inside the field of view, whichever
    channel is foreground: max(AUC, 1 - AUC); 0.5 is chance. Rank-based (Mann-Whitney)."""
    from scipy.stats import rankdata

    s = np.concatenate([(f[1] - f[0]).numpy()[v] for f, v in zip(feats, fovs)])
    y = np.concatenate([m[v] for m, v in zip(masks, fovs)])
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    value = (rankdata(s)[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return float(max(value, 1 - value))


def readout_dice(labeled: tuple, val: tuple, seed: int = 0, thresholds=evaluate.THRESHOLDS) -> float:
    """Fit on the labeled maps, score on the validation maps: (feats, masks, fovs) each."""
    return score(fit(*labeled, seed=seed), *val, thresholds=thresholds)
