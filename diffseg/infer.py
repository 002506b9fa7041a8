"""Class scores of any network, and a run's kept model rebuilt for scoring and prediction."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import checkpoint, config as config_mod
from .diffusion import Diffusion
from .nets import DiffusionSegmenter, scores_from_x0


def scores(net: nn.Module, x: torch.Tensor, diffusion: Diffusion, dcfg,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Class scores (B, K, H, W) of any segmenter; softmax gives the probabilities. A diffusion
    segmenter predicts from the noised empty mask (its mask pathway); others are plain networks."""
    if isinstance(net, DiffusionSegmenter):
        y0 = diffusion.predict_mask(net.mask, x, net.classes, dcfg.sample_steps, dcfg.start_t, generator)
        return scores_from_x0(y0)
    return net(x)


@dataclass
class Kept:
    """The model a run kept: one network (a predictor of its method) with its threshold."""
    cfg: config_mod.Config
    predictor: str
    net: nn.Module
    threshold: float
    selected: dict
    mean: list
    std: list
    channels: int
    diffusion: Diffusion

    def scores(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return scores(self.net, x, self.diffusion, self.cfg.diffusion, generator)


def load_kept(run_dir: str | Path, device: torch.device) -> Kept:
    """Rebuild a run's kept model from ``checkpoints/best.pt`` and the config stored with it."""
    from .methods import build_method  # methods import this module

    path = Path(run_dir) / "checkpoints" / "best.pt"
    if not path.exists():
        raise FileNotFoundError(f"no kept model in {run_dir} (missing {path}); did the run finish an epoch?")
    state = checkpoint.load(path, device)
    cfg = config_mod.from_dict(state["config"])
    method = build_method(cfg, state["channels"])
    net = method.networks[state["predictor"]].to(device)
    net.load_state_dict(state["network"])
    net.eval()
    return Kept(cfg, state["predictor"], net, state["selected"]["threshold"], state["selected"], state["mean"],
                state["std"], state["channels"], method.diffusion)
