"""Stage 1's readout diagnostic (diffseg/readout.py): a map that holds the mask reads near 1, noise
reads no better than the image, and a run of the paper's method records it per stage-1 epoch."""
import json

import numpy as np
import pytest
import torch

from diffseg import config, readout
from diffseg.loop import fit


def images(n: int, seed: int):
    """Blobs on noise: images whose intensity carries the mask, masks, fields of view."""
    g = torch.Generator().manual_seed(seed)
    masks = []
    for _ in range(n):
        yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
        cy, cx, r = (torch.randint(8, 24, (2,), generator=g).tolist() + [int(torch.randint(4, 9, (1,), generator=g))])
        masks.append(((yy - cy) ** 2 + (xx - cx) ** 2 < r * r).numpy())
    imgs = [torch.from_numpy(m).float()[None].repeat(3, 1, 1) * 0.6 + torch.randn(3, 32, 32, generator=g) * 0.5
            for m in masks]
    return imgs, masks, [np.ones_like(m) for m in masks]


def test_a_map_holding_the_mask_reads_near_one_and_noise_no_better_than_the_image():
    (img_l, m_l, f_l), (img_v, m_v, f_v) = images(9, 0), images(13, 1)
    holds = lambda ms: [torch.from_numpy(np.stack([~m, m])).float() * 4 for m in ms]  # noqa: E731
    mask_dice = readout.readout_dice((holds(m_l), m_l, f_l), (holds(m_v), m_v, f_v))
    assert mask_dice > 0.98
    assert readout.auc(holds(m_v), m_v, f_v) == pytest.approx(1.0)
    g = torch.Generator().manual_seed(5)
    noise = lambda n: [torch.randn(2, 32, 32, generator=g) for _ in range(n)]  # noqa: E731
    noise_dice = readout.readout_dice((noise(9), m_l, f_l), (noise(13), m_v, f_v))
    image_dice = readout.readout_dice((img_l, m_l, f_l), (img_v, m_v, f_v))
    assert noise_dice < image_dice and image_dice > 0.6
    assert readout.auc(noise(13), m_v, f_v) < 0.56  # chance, whichever way round
    # the AUC does not care which channel is foreground
    flipped = [h.flip(0) for h in holds(m_v)]
    assert readout.auc(flipped, m_v, f_v) == pytest.approx(1.0)


def test_paper_method_records_the_readout_and_both_controls_per_stage1_epoch(tmp_path):
    cfg = config.load("debug", {"data.size": 32, "data.synthetic_count": 16, "model.width": 4, "model.depth": 2,
                                "pretrain.epochs": 2, "pretrain.iters_per_epoch": 1, "train.epochs": 1,
                                "train.iters_per_epoch": 1})
    lines = []
    summary = fit(cfg, tmp_path / "run", log=lines.append)
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    pre = [r for r in records if r["stage"] == "pretrain"]
    assert len(pre) == 2
    for r in pre:
        for key in ("val_readout_dice", "val_mask_auc", "val_readout_dice_image", "val_readout_dice_random_init"):
            assert 0 <= r[key] <= 1, key
        assert r["stage1_learned"] == float(r["val_readout_dice"] > max(r["val_readout_dice_image"],
                                                                       r["val_readout_dice_random_init"]))
    # the controls do not change while stage 1 trains; the summary has the last epoch's verdict
    assert pre[0]["val_readout_dice_image"] == pre[1]["val_readout_dice_image"]
    assert summary["stage1"]["epoch"] == 2 and summary["stage1"]["learned"] == bool(pre[1]["stage1_learned"])
    assert any("readout" in x and "controls: image" in x and "learned" in x for x in lines if x.startswith("[pretrain"))
