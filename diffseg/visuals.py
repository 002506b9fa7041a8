"""TensorBoard image grids: image / ground truth / each of the method's snapshot masks."""
from __future__ import annotations

import torch
from torchvision.utils import make_grid

from .data.torchdata import denormalise
from .losses import hard


@torch.no_grad()
def log_images(writer, method, data, dataset, epoch: int, device: torch.device, n: int = 4) -> None:
    """One row per image: the image, its ground truth, then every mask ``method.snapshot`` names
    (by default each predictor; the paper's method adds its pseudo-label rounds)."""
    items = [dataset[i] for i in range(min(n, len(dataset)))]
    if not items:
        return
    volumes = items[0]["image"].dim() == 4
    if volumes:  # the central patch of each volume, shown by its middle axial slice
        items = [{"image": centre(it["image"], dataset.window), "mask": centre(it["mask"][None], dataset.window)[0]}
                 for it in items]
    # whole images of the tiles layout differ in size: show their common top-left part
    common = [min(it["mask"].shape[a] for it in items) for a in range(items[0]["mask"].dim())]
    x = torch.stack([it["image"][(slice(None), *(slice(0, c) for c in common))] for it in items]).to(device)
    gt = torch.stack([it["mask"][tuple(slice(0, c) for c in common)] for it in items]).float()
    with method.evaluating():
        masks = method.snapshot(x)
    if volumes:
        mid = x.shape[-1] // 2
        x, gt, masks = x[..., mid], gt[..., mid], {k: v[..., mid] for k, v in masks.items()}
    shown = denormalise(x.cpu().float(), data.mean, data.std).clamp(0, 1)
    if shown.shape[1] == 1:
        shown = shown.repeat(1, 3, 1, 1)

    def as_rgb(mask):  # (B, H, W) in {0, 1} -> (B, 3, H, W)
        return mask.cpu().float()[:, None].repeat(1, 3, 1, 1)

    columns = [shown, as_rgb(gt)] + [as_rgb(hard(s)[:, 1]) for s in masks.values()]
    tiles = torch.stack(columns, dim=1).flatten(0, 1)  # row per image
    writer.add_image("val/image_gt_" + "_".join(masks), make_grid(tiles, nrow=len(columns), padding=2), epoch)


def centre(t: torch.Tensor, window) -> torch.Tensor:
    """The central ``window`` of a (C, *spatial) tensor (all of an axis shorter than it)."""
    starts = [max(0, (s - w) // 2) for s, w in zip(t.shape[1:], window)]
    return t[(slice(None), *(slice(a, a + w) for a, w in zip(starts, window)))]
