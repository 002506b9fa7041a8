"""Preprocessing cache: 2D images resized once into one HDF5 file per (dataset, size, sources).

It also keeps every mask (and field of view) at its original size, so validation and test are
scored at the images' own resolution. Built into a temporary file and renamed when complete, so
a crash never leaves a file that looks finished; a truncated or corrupt file is detected on open
and rebuilt.
"""
from __future__ import annotations

import os
import shutil
import sys
import zlib
from pathlib import Path

import h5py
import numpy as np
from ..errors import DataError, StorageError
from .sources import Source
from .store import build_once, open_cache  # noqa: F401 (open_cache re-exported)

FORMAT = 4  # 3: antialiased resizing, original-size masks; 4: a checksum per item


def cache_dir(explicit: str = "") -> Path:
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("DIFFSEG_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "diffseg"


def cache_path(source: Source, size: int, directory: Path, scale: float = 0.0) -> Path:
    at = f"x{scale:g}" if scale > 0 else str(size)
    return directory / f"{source.dataset}-{at}-{source.fingerprint()}-v{FORMAT}.h5"


def network_shape(shape: tuple[int, int], size: int, scale: float) -> tuple[int, int]:
    """The size an image is cached at: size x size, or its own shape times ``scale`` (tiles)."""
    if scale <= 0:
        return size, size
    return max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale))


def checksum(*arrays) -> int:
    """CRC-32 of the arrays' bytes: a cheap check that what is read is what was written."""
    crc = 0
    for a in arrays:
        if a is not None:
            crc = zlib.crc32(np.ascontiguousarray(a).tobytes(), crc)
    return crc


def verify(fh: h5py.File, name: str, index: int, *arrays) -> None:
    if int(fh[name][index]) != checksum(*arrays):
        item = fh["names"][index].decode() if "names" in fh else index
        raise DataError(f"the preprocessing cache {fh.filename} is damaged: item '{item}' does not match its "
                        f"checksum ({name}); delete the file and it is rebuilt from the dataset")


def read_item(fh: h5py.File, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Image (H, W, C) uint8, mask and field of view (or None) of one item at the network's
    scale, checked against the item's checksum (silent corruption is named, never trained on)."""
    if fh.attrs.get("layout") != "tiles":
        out = fh["images"][index], fh["masks"][index], fh["fov"][index] if "fov" in fh else None
    else:
        lo, hi = int(fh["net_offset"][index]), int(fh["net_offset"][index + 1])
        h, w = (int(v) for v in fh["net_shape"][index])
        c = int(fh.attrs["channels"])
        fov = fh["fov"][lo:hi].reshape(h, w) if "fov" in fh else None
        out = fh["images"][lo * c:hi * c].reshape(h, w, c), fh["masks"][lo:hi].reshape(h, w), fov
    verify(fh, "item_crc", index, *out)
    return out


def original(fh: h5py.File, name: str, index: int) -> np.ndarray:
    """The original-size mask ("orig_masks") or field of view ("orig_fov") of one item, checked."""
    lo, hi = fh["orig_offset"][index], fh["orig_offset"][index + 1]
    out = fh[name][lo:hi].reshape(fh["orig_shape"][index])
    verify(fh, f"{name}_crc", index, out)
    return out


def is_valid(path: Path, n_items: int) -> bool:
    try:
        with open_cache(path) as fh:
            if fh.attrs.get("complete") != 1 or fh["orig_offset"].shape[0] != n_items + 1:
                return False
            read_item(fh, n_items - 1)  # reads the last chunk
            return fh["orig_masks"].shape[0] == fh["orig_offset"][-1]
    except Exception:  # any failure to read means the file cannot be trusted
        return False


def resize(arr: np.ndarray, size: int | tuple[int, int], is_mask: bool) -> np.ndarray:
    """Antialiased bilinear resize (no aliasing when shrinking a large image); masks are resized
    as floats and thresholded at one half, which keeps thin shapes."""
    import torch
    import torch.nn.functional as F

    shape = (size, size) if isinstance(size, int) else tuple(int(v) for v in size)
    t = torch.from_numpy(np.array(arr, dtype=np.float32))
    t = t[None, None] if is_mask else t.permute(2, 0, 1)[None]
    if tuple(t.shape[-2:]) != shape:
        t = F.interpolate(t, size=shape, mode="bilinear", align_corners=False, antialias=True)
    out = t[0]
    if is_mask:
        return (out[0] > 0.5 * (255 if arr.max() > 1 else 1)).numpy().astype(np.uint8)
    return out.round().clamp(0, 255).byte().permute(1, 2, 0).numpy()


def build(source: Source, size: int, tmp: Path, progress: bool = True, scale: float = 0.0) -> None:
    """Read, check and resize every item into the new file ``tmp``; raise on the first bad file.
    ``scale`` > 0 keeps each image's aspect at that scale (the "tiles" layout: flat arrays)."""
    n, c = len(source.items), source.channels
    has_fov = any(it.fov is not None for it in source.items)
    flat = dict(chunks=(2**16,), maxshape=(None,), compression="gzip", compression_opts=1)
    with h5py.File(tmp, "w") as fh, Progress(n, source.dataset, progress) as shown:
        tiles = scale > 0
        if tiles:
            images = fh.create_dataset("images", (0,), np.uint8, **flat)
            masks = fh.create_dataset("masks", (0,), np.uint8, **flat)
            fovs = fh.create_dataset("fov", (0,), np.uint8, **flat) if has_fov else None
            net_offset, net_shape = np.zeros(n + 1, np.int64), np.zeros((n, 2), np.int32)
        else:
            images = fh.create_dataset("images", (n, size, size, c), np.uint8, chunks=(1, size, size, c))
            masks = fh.create_dataset("masks", (n, size, size), np.uint8, chunks=(1, size, size))
            fovs = fh.create_dataset("fov", (n, size, size), np.uint8) if has_fov else None
        orig_masks = fh.create_dataset("orig_masks", (0,), np.uint8, **flat)
        orig_fov = fh.create_dataset("orig_fov", (0,), np.uint8, **flat) if has_fov else None
        offsets = np.zeros(n + 1, np.int64)
        shapes = np.zeros((n, 2), np.int32)
        fg = np.zeros(n, np.float64)
        crcs = {k: np.zeros(n, np.int64) for k in ("item_crc", "orig_masks_crc", "orig_fov_crc")}
        total = np.zeros(c)
        total_sq = np.zeros(c)
        n_train = 0
        for i, item in enumerate(source.items):
            image, mask, fov = source.read(item)
            shapes[i] = mask.shape
            fg[i] = mask.mean()
            shape = network_shape(mask.shape, size, scale)
            small = resize(image, shape, False)
            small_mask = resize(mask, shape, True)
            small_fov = resize(fov, shape, True) if fov is not None else np.ones(shape, np.uint8)
            if tiles:
                net_shape[i], net_offset[i + 1] = shape, net_offset[i] + shape[0] * shape[1]
                _append(images, small.ravel())
                _append(masks, small_mask.ravel())
                if fovs is not None:
                    _append(fovs, small_fov.ravel())
            else:
                images[i], masks[i] = small, small_mask
                if fovs is not None:
                    fovs[i] = small_fov
            u8 = lambda a: None if a is None else np.asarray(a).astype(np.uint8)  # noqa: E731 (as stored)
            crcs["item_crc"][i] = checksum(u8(small), u8(small_mask), u8(small_fov) if fovs is not None else None)
            crcs["orig_masks_crc"][i] = checksum(u8(mask))
            crcs["orig_fov_crc"][i] = checksum(u8(fov if fov is not None else np.ones_like(mask)))
            offsets[i + 1] = offsets[i] + mask.size
            _append(orig_masks, mask.ravel())
            if orig_fov is not None:
                _append(orig_fov, (fov if fov is not None else np.ones_like(mask)).ravel())
            if item.split == "train":  # normalisation statistics never see the test split
                x = small.reshape(-1, c) / 255.0
                total += x.mean(0)
                total_sq += (x ** 2).mean(0)
                n_train += 1
            shown.update(i + 1)
        mean = total / max(n_train, 1)
        std = np.sqrt(np.maximum(total_sq / max(n_train, 1) - mean ** 2, 1e-8))
        fh.create_dataset("names", data=np.array([it.name for it in source.items], dtype="S"))
        fh.create_dataset("splits", data=np.array([it.split for it in source.items], dtype="S"))
        fh.create_dataset("orig_shape", data=shapes)
        fh.create_dataset("orig_offset", data=offsets)
        fh.create_dataset("foreground", data=fg)
        for name, values in crcs.items():
            fh.create_dataset(name, data=values)
        if tiles:
            fh.create_dataset("net_offset", data=net_offset)
            fh.create_dataset("net_shape", data=net_shape)
        fh.attrs.update(mean=mean, std=std, dataset=source.dataset, size=size, channels=c, scale=scale,
                        layout="tiles" if tiles else "resized", complete=1)


def check_space(folder: Path, source: Source, size: int, scale: float) -> None:
    """Refuses to start a cache that cannot fit: HDF5 has been seen to crash, not fail, on a full
    disk. The estimate is a floor: the network-size arrays (at ``size``, also for tiles) without
    compression, not the original masks, whose size is known only once read."""
    need = int(len(source.items) * size * size * (source.channels + 2) * 1.1) + 2**20
    free = shutil.disk_usage(folder).free
    if free < need:
        raise StorageError(f"cannot write the cache in {folder}: it needs at least {need / 2**20:.1f} MB for "
                           f"{len(source.items)} {source.dataset} images and {free / 2**20:.1f} MB are free "
                           f"(set DIFFSEG_CACHE or --cache-dir to a folder with room)")


def _append(dataset, values: np.ndarray) -> None:
    start = dataset.shape[0]
    dataset.resize((start + values.size,))
    dataset[start:] = values


class Progress:
    """One progress line on stderr while a cache is built (rewritten in place on a terminal;
    elsewhere a line at each quarter), so a large folder does not print hundreds of lines."""

    def __init__(self, total: int, name: str, enabled: bool, what: str = "images"):
        self.total, self.name, self.enabled, self.what = total, name, enabled, what
        self.tty = enabled and sys.stderr.isatty()
        self.shown = 0

    def __enter__(self):
        return self

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        if self.tty:
            print(f"\r  cached {done}/{self.total} {self.name} {self.what}", end="", file=sys.stderr, flush=True)
        elif done * 4 // self.total > self.shown:
            self.shown = done * 4 // self.total
            print(f"  cached {done}/{self.total} {self.name} {self.what}", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        if self.tty:
            print(file=sys.stderr, flush=True)


def ensure(source: Source, size: int, directory: str = "", progress: bool = True, scale: float = 0.0) -> Path:
    """Path of a complete cache for ``source`` at ``size`` (or at ``scale``, for tiles), building
    or rebuilding it as needed."""
    if source.dim != 2:
        raise DataError(f"dataset '{source.dataset}' is {source.dim}D: its volumes go to the volume store "
                        f"(diffseg.data.volumes), not the 2D image cache")
    path = cache_path(source, size, cache_dir(directory), scale)

    def before() -> None:
        check_space(path.parent, source, size, scale)
        if path.exists():
            print(f"cache {path} is incomplete or corrupt: rebuilding it", file=sys.stderr)
        if progress:
            at = f"x{scale:g} of their size" if scale > 0 else f"{size}x{size}"
            print(f"building cache {path} ({len(source.items)} images at {at})", file=sys.stderr)

    return build_once(path, lambda p: p.exists() and is_valid(p, len(source.items)),
                      lambda tmp: build(source, size, tmp, progress, scale), "cache", before)
