"""TensorBoard image grids: image / ground truth / each of the method's snapshot masks."""
from __future__ import annotations

import torch
from torchvision.utils import make_grid

from .data.torchdata import denormalise
from .losses import hard


@torch.no_grad()
def log_images(writer, method, data, dataset, epoch: int, device: torch.device, n: int = 4) -> None:
    """One row per image: the image, its ground truth, then every mask ``method.snapshot`` names
    (teacher, rounds, student for the paper's method; each predictor for the baselines)."""
    items = [dataset[i] for i in range(min(n, len(dataset)))]
    if not items:
        return
    # whole images of the tiles layout differ in size: show their common top-left part
    h, w = min(it["mask"].shape[0] for it in items), min(it["mask"].shape[1] for it in items)
    x = torch.stack([it["image"][:, :h, :w] for it in items]).to(device)
    gt = torch.stack([it["mask"][:h, :w] for it in items]).float()
    modes = {k: net.training for k, net in method.networks.items()}
    method.train_mode(False)
    masks = method.snapshot(x)
    for k, net in method.networks.items():
        net.train(modes[k])
    shown = denormalise(x.cpu().float(), data.mean, data.std).clamp(0, 1)
    if shown.shape[1] == 1:
        shown = shown.repeat(1, 3, 1, 1)

    def as_rgb(mask):  # (B, H, W) in {0, 1} -> (B, 3, H, W)
        return mask.cpu().float()[:, None].repeat(1, 3, 1, 1)

    columns = [shown, as_rgb(gt)] + [as_rgb(hard(s)[:, 1]) for s in masks.values()]
    tiles = torch.stack(columns, dim=1).flatten(0, 1)  # row per image
    writer.add_image("val/image_gt_" + "_".join(masks), make_grid(tiles, nrow=len(columns), padding=2), epoch)
