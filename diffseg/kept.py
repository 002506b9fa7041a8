"""The model a run kept (``checkpoints/best.pt``): one predictor of its method with its
threshold, rebuilt for scoring (``score_kept``) and prediction."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from . import checkpoint, config as config_mod, evaluate
from .methods import Method, build_method


@dataclass
class Kept:
    cfg: object  # the run's config, as stored with its weights
    method: Method  # in eval mode, with the kept network's weights loaded
    predictor: str
    threshold: float
    selected: dict
    mean: list
    std: list
    channels: int

    @property
    def dims(self) -> int:
        return self.method.dims

    def scores(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.method.predict(self.predictor)(x, generator)


def kept_state(method: Method, name: str, cfg, selected: dict, data) -> dict:
    """What ``best.pt`` holds: the network, the selection, the config and the normalisation."""
    return {"method": cfg.method, "predictor": name, "selected": dict(selected),
            "network": method.networks[name].state_dict(), "config": config_mod.to_dict(cfg),
            "mean": [float(v) for v in data.mean], "std": [float(v) for v in data.std],
            "channels": data.source.channels}


def load_kept(run_dir: str | Path, device: torch.device) -> Kept:
    """Rebuild a run's kept model from ``checkpoints/best.pt`` and the config stored with it."""
    path = Path(run_dir) / "checkpoints" / "best.pt"
    if not path.exists():
        raise FileNotFoundError(f"no kept model in {run_dir} (missing {path}); did the run finish an epoch?")
    state = checkpoint.load(path, device)
    cfg = config_mod.from_stored(state["config"], str(path), log=lambda msg: print(msg, file=sys.stderr))
    method = build_method(cfg, state["channels"], lambda m: m.to(device))
    method.networks[state["predictor"]].load_state_dict(state["network"])
    method.train_mode(False)
    return Kept(cfg, method, state["predictor"], state["selected"]["threshold"], state["selected"], state["mean"],
                state["std"], state["channels"])


def score_kept(kept: Kept, data, part: str, runtime, truth=None) -> dict:
    """The kept model's metrics on a split at its threshold, beside the split's trivial scores
    (predicting foreground or background everywhere) and whether it beats them. Empty for an
    empty split. ``truth``: the split's ground truth when the caller holds it already."""
    if not getattr(data.splits, part):
        return {}
    truth = truth or data.truth(part, kept.cfg.eval.resolution)
    probs = truth.resize(evaluate.collect(kept.scores, data.dataset(part), runtime, kept.cfg.seed,
                                          overlap=kept.cfg.eval.overlap))
    out = evaluate.score(probs, truth.gts, truth.fovs, kept.threshold, truth.spacings)
    trivial = truth.trivial()
    return out | trivial | {"beats_trivial": out["dice"] > max(trivial.values())}
