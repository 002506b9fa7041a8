"""Torch datasets over the preprocessing cache, and the prepared data of one run."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import augment, cache, splits as splits_mod, sources
from ..errors import DataError
from .store import StoreItems
from .truth import Truth


def per_channel(values) -> torch.Tensor:
    """Per-channel statistics shaped (C, 1, 1) to broadcast over (..., C, H, W) images."""
    return torch.as_tensor(np.asarray(values, dtype=np.float32))[:, None, None]


def normalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    """Images in [0, 1] to the network's input scale: (x - mean) / std per channel."""
    return (x - per_channel(mean).to(x.device)) / per_channel(std).to(x.device)


def denormalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    return x * per_channel(std).to(x.device) + per_channel(mean).to(x.device)


class CachedImages(StoreItems):
    """Images of the 2D cache, normalised; training items augmented."""

    def __init__(self, path: Path, indices: list[int], mean, std, *, train: bool = False,
                 jitter: float = 0.0, with_mask: bool = True, window: tuple[int, ...] = (), augment: bool = True):
        super().__init__(path, indices)
        self.mean, self.std = per_channel(mean), per_channel(std)
        self.train, self.jitter, self.with_mask, self.augment = train, jitter, with_mask, augment
        # tiles: training items are random crops of the window; evaluation items are whole
        # images, which the evaluation slides the window over
        self.window = window

    def __getitem__(self, i: int) -> dict:
        idx = self.indices[i]
        image, mask, fov = cache.read_item(self._file(), idx)
        image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
        image = (image - self.mean) / self.std
        mask = torch.from_numpy(mask.astype(np.int64))
        fov = torch.from_numpy(fov.astype(np.int64)) if fov is not None else torch.ones_like(mask)
        if self.train:
            with self.drawing(i):
                if self.window:
                    image, mask, fov = random_crop(self.window[0], image, mask, fov)
                if self.augment:
                    image, mask, fov = augment.geometric(image, mask, fov)
                image = augment.intensity(image, self.jitter)
        out = {"image": image, "index": idx}
        if self.with_mask:
            out.update(mask=mask, fov=fov)
        return out


def random_crop(size: int, image: torch.Tensor, *masks: torch.Tensor):
    """A size x size window at a random place; images smaller than it are padded (image with
    the mean, masks with 0)."""
    h, w = image.shape[-2:]
    ph, pw = max(0, size - h), max(0, size - w)
    if ph or pw:
        image = torch.nn.functional.pad(image, (0, pw, 0, ph))
        masks = tuple(torch.nn.functional.pad(m, (0, pw, 0, ph)) for m in masks)
        h, w = image.shape[-2:]
    top = int(torch.randint(0, h - size + 1, (1,)))
    left = int(torch.randint(0, w - size + 1, (1,)))
    return (image[:, top:top + size, left:left + size],
            *(m[top:top + size, left:left + size] for m in masks))


@dataclass
class PreparedData:
    source: sources.Source
    cache_path: Path
    splits: splits_mod.Splits
    index: dict[str, int]  # name -> row in the cache
    mean: np.ndarray
    std: np.ndarray
    window: tuple[int, ...] = ()  # the tiles layout: trained on crops of this shape, scored by a sliding window

    def dataset(self, part: str | list[str], *, train: bool = False, jitter: float = 0.0,
                with_mask: bool = True, augment: bool = True) -> CachedImages:
        """A split by name ('labeled', 'val'...) or an explicit list of image names. ``train``:
        training items (random tiles, augmentation when ``augment``, intensity jitter)."""
        names = getattr(self.splits, part) if isinstance(part, str) else part
        return CachedImages(self.cache_path, [self.index[n] for n in names], self.mean, self.std,
                            train=train, jitter=jitter, with_mask=with_mask, window=self.window, augment=augment)

    def truth(self, part: str | list[str], resolution: str = "original") -> Truth:
        return Truth.of_images(self, part, resolution)


def prepare(data_cfg, seed_splits: splits_mod.Splits | None = None, progress: bool = True, root: str | Path = "",
            cache_dir: str | Path = "") -> PreparedData:
    """List, check and cache the dataset and make the splits; all errors surface here. ``root``
    and ``cache_dir`` say where they are on this machine (empty: the environment's defaults)."""
    source = sources.open_source(data_cfg, root)
    if source.dim == 3:
        from .volumes import PreparedVolumes, ensure

        if data_cfg.mean:
            raise DataError("config keys 'data.mean' and 'data.std' normalise 2D images; volumes are "
                            "normalised by their own source (LA: z-scored per volume)")
        path = ensure(source, str(cache_dir or ""), progress)
        with cache.open_cache(path) as fh:
            names = [n.decode() for n in fh["names"][()]]
        check_known(seed_splits, names, root)
        return PreparedVolumes(source, path, seed_splits or make_run_splits(source, data_cfg),
                               {n: i for i, n in enumerate(names)}, np.zeros(1), np.ones(1),
                               tuple(data_cfg.patch), data_cfg.foreground_prob)
    path = cache.ensure(source, data_cfg.size, str(cache_dir or ""), progress, data_cfg.scale)
    splits = seed_splits or make_run_splits(source, data_cfg)
    with cache.open_cache(path) as fh:
        names = [n.decode() for n in fh["names"][()]]
        mean, std = np.asarray(fh.attrs["mean"]), np.asarray(fh.attrs["std"])
    if data_cfg.mean:  # fixed statistics (a published recipe's), one per channel
        if len(data_cfg.mean) != len(mean):
            raise DataError(f"config key 'data.mean' has {len(data_cfg.mean)} values; dataset "
                            f"'{source.dataset}' has {len(mean)} channels")
        mean, std = np.asarray(data_cfg.mean, np.float32), np.asarray(data_cfg.std, np.float32)
    check_known(seed_splits, names, root)
    return PreparedData(source, path, splits, {n: i for i, n in enumerate(names)}, mean, std,
                        window=(data_cfg.size, data_cfg.size) if data_cfg.scale > 0 else ())


def check_known(splits: splits_mod.Splits | None, names: list[str], root) -> None:
    """A run's recorded splits must name items the data still has (a data root that changed)."""
    if splits is None:
        return
    known = set(names)
    missing = sorted({n for part in (splits.labeled, splits.unlabeled, splits.val, splits.test) for n in part} - known)
    if missing:
        raise DataError(f"the run's splits.json names {len(missing)} item(s) the data under "
                        f"{sources.data_root(root)} does not have ({', '.join(missing[:3])}"
                        f"{' ...' if len(missing) > 3 else ''}): is --data-root the data the run was trained on?")


def make_run_splits(source: sources.Source, data_cfg) -> splits_mod.Splits:
    return splits_mod.make_splits(source.names("train"), source.names("test"),
                                  val_ratio=data_cfg.val_ratio, labeled_ratio=data_cfg.labeled_ratio,
                                  labeled_count=data_cfg.labeled_count, seed=data_cfg.split_seed,
                                  draw=data_cfg.labeled_draw, val_from=data_cfg.val_from)
