"""The benchmark's scale presets: what each changes in every cell's base config."""
from __future__ import annotations

PRESETS = {
    # CI: minutes on 2 cores, checks the machinery end to end
    "smoke": {"data.size": 32, "model.width": 8, "model.depth": 2, "diffusion_cps.diffusion.steps": 50, "diffusion_cps.diffusion.start_t": 49,
              "diffusion_cps.rounds": 1, "pretrain.epochs": 1, "pretrain.iters_per_epoch": 2, "pretrain.batch_size": 4,
              "pretrain.warmup_epochs": 1, "pretrain.decay_every": 0, "train.epochs": 2,
              "train.iters_per_epoch": 2, "train.batch_size": 4, "train.warmup_epochs": 1, "train.decay_every": 0},
    # 2 CPU cores: 64 px, width 16. Stage 1: 1000 iterations, shared by the cells of one
    # (dataset, seed); on PH2 its label-free mask beats all-foreground from about 600, on GlaS it
    # stays below up to 2000 (README). Stage 2: 200 iterations for every method.
    "small": {"data.size": 64, "model.width": 16, "model.depth": 3, "diffusion_cps.diffusion.steps": 100,
              "diffusion_cps.diffusion.start_t": 99, "diffusion_cps.rounds": 1, "pretrain.epochs": 50, "pretrain.iters_per_epoch": 20,
              "pretrain.warmup_epochs": 1, "pretrain.decay_every": 0, "train.epochs": 20,
              "train.iters_per_epoch": 10, "train.warmup_epochs": 1, "train.decay_every": 0},
    # 2 CPU cores at the paper's 128 px: the paper's U-Net depth at width 16 (the XNet
    # baselines' width), T = 1000, batch 4, R = 1; stage 1: 200 iterations, stage 2: 120 for
    # every method (480 images). Few, long epochs: validating a tiled DRIVE image by a sliding
    # window costs seconds. Measured on 2 cores, two cells side by side: at batch 8 and 250 stage-1
    # iterations a stage-1 epoch of 50 iterations took 116 s and the table would have taken about
    # 3 hours. Datasets whose images are much larger than 128 px keep their structures by
    # training on tiles (drive_tiles.yaml)
    "mid": {"data.size": 128, "model.width": 16, "model.depth": 4, "diffusion_cps.rounds": 1,
            "pretrain.epochs": 4, "pretrain.iters_per_epoch": 50, "pretrain.batch_size": 4,
            "pretrain.warmup_epochs": 1, "pretrain.decay_every": 0, "train.epochs": 6,
            "train.iters_per_epoch": 20, "train.batch_size": 4, "train.warmup_epochs": 1,
            "train.decay_every": 0},
    # the dataset configs as shipped: the paper's settings, for GPUs
    "paper": {},
    # the dataset configs as the benchmark file names them, nothing changed (reproduce.yaml)
    "none": {},
}
# what each preset changes on top for a 3D dataset (LA): patches instead of image sizes, and the
# debug run's width and batch (a 3D step costs far more than a 2D one)
VOLUME_PRESETS = {
    "smoke": {"data.patch": [16, 16, 16], "model.width": 4, "model.depth": 2},
    "small": {"data.patch": [32, 32, 32], "model.width": 8, "pretrain.batch_size": 4, "train.batch_size": 4,
              "data.foreground_prob": 0.5},
    "mid": {"data.patch": [32, 32, 32], "model.width": 8, "pretrain.batch_size": 4, "train.batch_size": 4,
            "data.foreground_prob": 0.5},  # as small: a 3D step at 128 px patches does not fit 2 cores
    "paper": {},
    "none": {},
}


def preset_for(preset: str, dataset: str) -> dict:
    from diffseg.data import dims

    return PRESETS[preset] | (VOLUME_PRESETS[preset] if dims(dataset) == 3 else {})
