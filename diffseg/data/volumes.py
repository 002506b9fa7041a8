"""3D volumes: a store of whole volumes (HDF5, never resized) that serves training patches to data
loader workers, and whole volumes to the sliding-window evaluation.

The store holds each volume chunked, so a worker reads only the chunks under its patch, and a
sample of each volume's foreground voxel coordinates, so a foreground-biased patch needs no read
of the whole mask. Built like the 2D cache: into a temporary file under a lock, renamed when
complete; a file that fails to open or misses an item is rebuilt.
"""
from __future__ import annotations

import contextlib

import sys
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from ..errors import DataError
from . import splits as splits_mod
from .cache import Progress, cache_dir as default_cache_dir, open_cache
from .sources import Source
from .store import StoreItems, build_once
from .truth import Truth

FORMAT = 1
CHUNK = (64, 64, 32)
FOREGROUND_SAMPLE = 20_000  # foreground coordinates kept per volume for biased patches


def store_path(source: Source, directory: Path) -> Path:
    return directory / f"{source.dataset}-volumes-{source.fingerprint()}-v{FORMAT}.h5"


def _valid(path: Path, n_items: int) -> bool:
    try:
        with open_cache(path) as fh:
            return fh.attrs.get("complete") == 1 and len(fh["names"]) == n_items and \
                f"images/{n_items - 1}" in fh and f"masks/{n_items - 1}" in fh
    except Exception:  # any failure to read means the file cannot be trusted
        return False


def ensure(source: Source, directory: str | Path = "", progress: bool = True) -> Path:
    """The store of ``source``'s volumes, built once (every training and test volume)."""
    path = store_path(source, default_cache_dir(str(directory)))
    return build_once(path, lambda p: _valid(p, len(source.items)), lambda tmp: _build(source, tmp, progress),
                      "volume store")


def _build(source: Source, tmp: Path, progress: bool) -> None:
    rng = np.random.default_rng(0)
    n = len(source.items)
    if progress:
        print(f"building volume store {tmp.name.rsplit('.', 2)[0].lstrip('.')} ({n} volumes, not resized)", file=sys.stderr)
    with h5py.File(tmp, "w") as fh, Progress(n, source.dataset, progress, "volumes") as shown:
        for i, item in enumerate(source.items):
            image, mask, _ = source.read(item)
            if image.ndim != 3 or image.shape != mask.shape:
                raise DataError(f"{item.image}: a volume must be (H, W, D) with a mask of the same shape, "
                                f"got image {image.shape} and mask {mask.shape}")
            chunks = tuple(min(c, s) for c, s in zip(CHUNK, image.shape))
            fh.create_dataset(f"images/{i}", data=image.astype(np.float32), chunks=chunks)
            fh.create_dataset(f"masks/{i}", data=mask.astype(np.uint8), chunks=chunks, compression="gzip",
                              compression_opts=1)
            fg = np.argwhere(mask > 0).astype(np.int32)
            if len(fg) > FOREGROUND_SAMPLE:
                fg = fg[np.sort(rng.choice(len(fg), FOREGROUND_SAMPLE, replace=False))]
            fh.create_dataset(f"foreground/{i}", data=fg.reshape(-1, 3))
            shown.update(i + 1)
        fh.create_dataset("names", data=np.array([it.name.encode() for it in source.items]))
        fh.attrs.update(channels=1, mean=[0.0], std=[1.0], dims=3, complete=1)


def start_of(extent: int, patch: int, centre: int | None) -> int:
    """Where a patch starts along one axis: anywhere, or so that it holds ``centre`` at a random
    place inside it; always within the volume (0 when the volume is smaller than the patch)."""
    room = max(0, extent - patch)
    if centre is None:
        return int(torch.randint(0, room + 1, (1,)))
    return int(min(max(centre - int(torch.randint(0, patch, (1,))), 0), room))


def crop(array, starts, patch) -> np.ndarray:
    """``patch`` voxels from ``starts`` (an h5py dataset reads only those chunks); zero-padded at
    the far side where the volume is smaller than the patch."""
    region = np.asarray(array[tuple(slice(s, s + p) for s, p in zip(starts, patch))])
    pad = [(0, p - r) for p, r in zip(patch, region.shape)]
    return np.pad(region, pad) if any(b for _, b in pad) else region


def augment(image: torch.Tensor, mask: torch.Tensor):
    """The 3D training augmentation of the field's LA code: a random 90-degree rotation in the
    axial plane (when it is square) and a flip along each axis at random."""
    if image.shape[-3] == image.shape[-2]:
        k = int(torch.randint(0, 4, (1,)))
        image, mask = torch.rot90(image, k, (-3, -2)), torch.rot90(mask, k, (-3, -2))
    for axis in (-3, -2, -1):
        if int(torch.randint(0, 2, (1,))):
            image, mask = image.flip(axis), mask.flip(axis)
    return image.contiguous(), mask.contiguous()


class VolumeItems(StoreItems):
    """Volumes of the store: random patches for training, whole volumes for evaluation."""

    def __init__(self, path: Path, indices: list[int], patch: tuple[int, int, int], *, train: bool = False,
                 foreground_prob: float = 0.0, jitter: float = 0.0, augment: bool = True, with_mask: bool = True):
        super().__init__(path, indices)
        self.patch = tuple(patch)
        self.train, self.jitter, self.augment, self.with_mask = train, jitter, augment, with_mask
        # a patch is drawn near the foreground only where the labels may be read
        self.foreground_prob = foreground_prob if with_mask else 0.0
        self.window = self.patch  # evaluation slides a window of the training patch

    def patch_start(self, idx: int) -> tuple[int, ...]:
        fh = self._file()
        shape = fh[f"images/{idx}"].shape
        centre = None
        if self.foreground_prob > 0 and float(torch.rand(())) < self.foreground_prob:
            fg = fh[f"foreground/{idx}"]
            if len(fg):
                centre = fg[int(torch.randint(0, len(fg), (1,)))]
        return tuple(start_of(shape[a], self.patch[a], None if centre is None else int(centre[a])) for a in range(3))

    def __getitem__(self, i: int) -> dict:
        idx, fh = self.indices[i], self._file()
        with self.drawing(i) if self.train else contextlib.nullcontext():
            if self.train:
                starts = self.patch_start(idx)
                image = crop(fh[f"images/{idx}"], starts, self.patch)
                mask = crop(fh[f"masks/{idx}"], starts, self.patch)
            else:
                image, mask = fh[f"images/{idx}"][()], fh[f"masks/{idx}"][()]
            image = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
            mask = torch.from_numpy(mask.astype(np.int64))
            if self.train and self.augment:
                image, mask = augment(image, mask[None])
                mask = mask[0]
            if self.train and self.jitter > 0:
                a, b = (torch.rand(2) * 2 - 1) * self.jitter
                image = image * (1 + a) + b
        out = {"image": image, "index": idx}
        if self.with_mask:
            out.update(mask=mask, fov=torch.ones_like(mask))
        return out


@dataclass
class PreparedVolumes:
    """The prepared data of a 3D run: the same face as the 2D ``PreparedData``."""
    source: Source
    cache_path: Path
    splits: splits_mod.Splits
    index: dict[str, int]
    mean: np.ndarray
    std: np.ndarray
    patch: tuple[int, int, int]
    foreground_prob: float

    @property
    def window(self) -> tuple[int, int, int]:
        return self.patch

    def dataset(self, part: str | list[str], *, train: bool = False, jitter: float = 0.0,
                with_mask: bool = True, augment: bool = True) -> VolumeItems:
        names = getattr(self.splits, part) if isinstance(part, str) else part
        return VolumeItems(self.cache_path, [self.index[n] for n in names], self.patch, train=train,
                           foreground_prob=self.foreground_prob, jitter=jitter, augment=augment, with_mask=with_mask)

    def truth(self, part: str | list[str], resolution: str = "original"):
        """Whole masks of a split or a list of names (volumes are scored at their own size
        whatever the resolution asked) with each volume's spacing."""
        names = getattr(self.splits, part) if isinstance(part, str) else part
        items = {it.name: it for it in self.source.items}
        with open_cache(self.cache_path) as fh:
            gts = [fh[f"masks/{self.index[n]}"][()].astype(bool) for n in names]
        return Truth(gts, [np.ones_like(g) for g in gts], [self.source.spacing_of(items[n]) for n in names], "original")
