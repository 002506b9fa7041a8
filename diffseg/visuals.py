"""TensorBoard image grids: image / ground truth / teacher pseudo-label per round / student."""
from __future__ import annotations

import torch
from torchvision.utils import make_grid

from .losses import hard
from .students import predict_scores
from .teacher import rounds


@torch.no_grad()
def log_images(writer, trainer, dataset, epoch: int, n: int = 4) -> None:
    rt, cfg = trainer.rt, trainer.cfg
    items = [dataset[i] for i in range(min(n, len(dataset)))]
    if not items:
        return
    x = torch.stack([it["image"] for it in items]).to(rt.device)
    gt = torch.stack([it["mask"] for it in items]).float()
    teacher, student = trainer.teacher, trainer.student
    modes = teacher.training, student.training
    teacher.eval()
    student.eval()
    pt = predict_scores(teacher, x, trainer.diffusion, cfg.diffusion)
    segs, _ = rounds(teacher, trainer.diffusion, x, pt, cfg.rounds, cfg.round_mode, cfg.diffusion)
    ps = predict_scores(student, x, trainer.diffusion, cfg.diffusion)
    teacher.train(modes[0])
    student.train(modes[1])
    mean = torch.as_tensor(trainer.data.mean, dtype=torch.float32)[:, None, None]
    std = torch.as_tensor(trainer.data.std, dtype=torch.float32)[:, None, None]
    shown = (x.cpu().float() * std + mean).clamp(0, 1)
    if shown.shape[1] == 1:
        shown = shown.repeat(1, 3, 1, 1)

    def as_rgb(mask):  # (B, H, W) in {0, 1} -> (B, 3, H, W)
        return mask.cpu().float()[:, None].repeat(1, 3, 1, 1)

    columns = [shown, as_rgb(gt), as_rgb(hard(pt)[:, 1])] + [as_rgb(hard(p)[:, 1]) for p in segs]
    columns.append(as_rgb(hard(ps)[:, 1]))
    tiles = torch.stack(columns, dim=1).flatten(0, 1)  # row per image
    writer.add_image("val/image_gt_teacher_rounds_student", make_grid(tiles, nrow=len(columns), padding=2),
                     epoch)
