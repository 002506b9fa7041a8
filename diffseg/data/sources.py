"""Dataset sources: where each image and mask lives, which official split it belongs to.

A source only lists and reads files; resizing, caching and splitting live elsewhere.
Every reader returns ``image`` (H, W, C) uint8 for 2D or float32 (H, W, D) for 3D,
``mask`` uint8 in {0, 1} of the same spatial shape, and an optional field-of-view mask.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


from ..errors import ConfigError, DataError
from .images import GRAY_MODES, folder_channels, read_image, read_mask, read_pair  # noqa: F401 (re-exported)
from .items import Item, Source, hashed_test_split
from .la import LA_SPACING, la, read_volume  # noqa: F401 (re-exported)
from .nnunet import looks_like, msd, nnunet, nnunet3d, split_channel

PROJECT_ROOT = Path(__file__).resolve().parents[2]
IMAGE_EXTS = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff", ".gif")


def list_images(folder: Path) -> dict[str, Path]:
    """Image files of a folder by stem. Hidden files (``.x.png``, macOS's ``._x.png``) are not
    images; two files with one stem (``a.png`` and ``a.jpg``) are ambiguous and refused."""
    if not folder.is_dir():
        raise DataError(f"folder not found: {folder}")
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or p.suffix.lower() not in IMAGE_EXTS or not p.is_file():
            continue
        if p.stem in out:
            raise DataError(f"two files with the name '{p.stem}' in {folder}: {out[p.stem].name} and {p.name}; "
                            f"keep one (an image and its mask are paired by name)")
        out[p.stem] = p
    return out


def pair_folder(images: Path, masks: Path, split_of: Callable[[str], str],
                fov: Path | None = None) -> list[Item]:
    """Pair every image with the mask of the same stem; a missing mask is an error."""
    imgs, msks = list_images(images), list_images(masks)
    fovs = list_images(fov) if fov is not None else {}
    items = []
    for name, path in imgs.items():
        if name not in msks:
            case = (split_channel(name) or ("",))[0]
            if case in msks:  # CASE_0000.png beside CASE.png
                raise DataError(f"no mask for image {path}: its name is nnU-Net's CASE_0000 (a channel after "
                                f"the case) and {msks[case].name} is its label; put the images in imagesTr/ and the "
                                f"masks in labelsTr/ with a dataset.json and use data.dataset=nnunet, or rename "
                                f"the images without the _0000")
            raise DataError(f"no mask for image {path} (looked for {masks}/{name}.*)")
        if fov is not None and name not in fovs:
            raise DataError(f"no field-of-view mask for image {path} (looked in {fov})")
        items.append(Item(name, split_of(name), path, msks[name], fovs.get(name)))
    return items


TRAIN_SPLITS = ("train", "training")


def read_splits_csv(path: Path) -> dict[str, str]:
    """``name,split`` rows, names with or without their extension. A split is ``train`` (or
    ``training``) or starts with ``test`` (held out: ``test``, ``testA``...); anything else, a
    name listed twice with different splits, or a row without a name is refused with its line."""
    out: dict[str, str] = {}
    line_of: dict[str, int] = {}
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    reader = csv.DictReader(text.splitlines())
    if reader.fieldnames is None or not {"name", "split"} <= {(f or "").strip().lower() for f in reader.fieldnames}:
        raise DataError(f"{path} must have a header with columns 'name' and 'split'")
    for row in reader:
        line = reader.line_num
        row = {(k or "").strip().lower(): (v or "") for k, v in row.items() if k is not None}
        raw_name, split = row.get("name", "").strip(), row.get("split", "").strip().lower()
        if not raw_name and not split:
            continue  # a blank line
        if not raw_name:
            raise DataError(f"{path} line {line}: a row without a name")
        if split not in TRAIN_SPLITS and not split.startswith("test"):
            raise DataError(f"{path} line {line}: split {split!r} for '{raw_name}' is not 'train' or 'test...' "
                            f"(validation is carved from the training images by data.val_ratio)")
        name = Path(raw_name)
        key = name.stem if name.suffix.lower() in IMAGE_EXTS else str(name)
        value = "test" if split.startswith("test") else "train"
        if key in out and out[key] != value:
            raise DataError(f"{path} lines {line_of[key]} and {line}: '{key}' is listed as both {out[key]} and {value}")
        out[key], line_of[key] = value, line
    return out


def check_listed(splits: dict[str, str], items: list[Item], path: Path) -> None:
    """Every row of a splits.csv names an image that exists: a typo must not silently shrink a split."""
    missing = sorted(set(splits) - {it.name for it in items})
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DataError(f"{path} lists {len(missing)} image(s) not found in the images folder: "
                        f"{', '.join(missing[:5])}{more}")


# ----------------------------------------------------------------------------- datasets
def _pair_source(dataset: str, root: Path, items: list[Item], cfg, channels: int = 3,
                 instance: bool = False, notes=None) -> Source:
    threshold = cfg.mask_threshold
    return Source(dataset, root, 2, channels, items, lambda it: read_pair(it, channels, instance, threshold),
                  notes=notes or [],
                  extra_fingerprint=f"mask_threshold={threshold}" if threshold else "")


def glas(root: Path, cfg) -> Source:
    if (root / "splits.csv").is_file() and (root / "images").is_dir():
        splits = read_splits_csv(root / "splits.csv")
        items = pair_folder(root / "images", root / "masks", lambda n: _from_csv(splits, n, root))
        check_listed(splits, items, root / "splits.csv")
        return _pair_source("glas", root, items, cfg)
    annos = sorted(root.glob("*_anno.bmp"))
    if not annos:
        raise DataError(f"no GlaS data in {root}: expected images/, masks/ and splits.csv, "
                        "or the Warwick QU release (train_N.bmp with train_N_anno.bmp)")
    items = []
    for anno in annos:
        name = anno.name[: -len("_anno.bmp")]
        image = root / f"{name}.bmp"
        if not image.is_file():
            raise DataError(f"annotation {anno} has no image {image}")
        items.append(Item(name, "test" if name.startswith("test") else "train", image, anno))
    return _pair_source("glas", root, items, cfg, instance=True,
                        notes=["Warwick QU release: instance labels made binary"])


def _from_csv(splits: dict[str, str], name: str, root: Path) -> str:
    if name not in splits:
        raise DataError(f"image '{name}' is not listed in {root / 'splits.csv'}")
    return splits[name]


def ph2(root: Path, cfg) -> Source:
    official = next((p for p in (root / "PH2 Dataset images", root / "PH2Dataset" / "PH2 Dataset images")
                     if p.is_dir()), None)
    if official is not None:
        items = []
        for case in sorted(p for p in official.iterdir() if p.is_dir()):
            n = case.name
            items.append(Item(n, "train", case / f"{n}_Dermoscopic_Image" / f"{n}.bmp",
                              case / f"{n}_lesion" / f"{n}_lesion.bmp"))
    else:
        items = pair_folder(root / "images", root / "masks", lambda n: "train")
    # No official split: the authors held out 20 of 200; a fixed hashed choice keeps it stable.
    test = hashed_test_split([it.name for it in items], max(1, round(len(items) * 0.1)), "ph2")
    items = [Item(it.name, "test" if it.name in test else "train", it.image, it.mask) for it in items]
    return _pair_source("ph2", root, items, cfg, notes=["no official split: fixed hashed 10% test hold-out"])


def drive(root: Path, cfg) -> Source:
    items = []
    for split in ("train", "test"):
        items += pair_folder(root / split / "images", root / split / "masks", lambda n, s=split: s,
                             fov=root / split / "fov" if (root / split / "fov").is_dir() else None)
    return _pair_source("drive", root, items, cfg)


def hmeps(root: Path, cfg) -> Source:
    # The authors' layout: train/ for training, val/ as the held-out evaluation split.
    items = []
    for split, held in (("train", "train"), ("val", "test")):
        items += pair_folder(root / split / "image", root / split / "mask", lambda n, s=held: s)
    return _pair_source("hmeps", root, items, cfg, channels=1)


def folder(root: Path, cfg) -> Source:
    """Any images/ + masks/ pair; splits.csv (name,split) optional, else a hashed 20 % test."""
    if not (root / "images").is_dir():
        layout = looks_like(root)
        raise DataError(f"folder not found: {root / 'images'}; the folder layout is images/ + masks/ (+ splits.csv)"
                        + (f", and {root} has {layout}: use data.dataset=nnunet (images), nnunet3d (volumes) "
                           f"or msd (a Decathlon task)" if layout else ""))
    images = list_images(root / "images")
    channels = folder_channels(list(images.values()))
    if (root / "splits.csv").is_file():
        splits = read_splits_csv(root / "splits.csv")
        items = pair_folder(root / "images", root / "masks", lambda n: _from_csv(splits, n, root))
        check_listed(splits, items, root / "splits.csv")
    else:
        items = pair_folder(root / "images", root / "masks", lambda n: "train")
        test = hashed_test_split([it.name for it in items], max(1, round(len(items) * 0.2)), "folder")
        items = [Item(it.name, "test" if it.name in test else "train", it.image, it.mask) for it in items]
    return _pair_source("folder", root, items, cfg, channels=channels)


def synthetic(root: Path | None, cfg) -> Source:
    from .synthetic import make_sample

    n, kind, size = cfg.synthetic_count, cfg.synthetic_kind, cfg.size
    n_test = max(1, n // 4)
    items = [Item(f"syn{i:04d}", "test" if i >= n - n_test else "train", index=i) for i in range(n)]
    return Source("synthetic", None, 2, 3, items, lambda it: make_sample(it.index, size, kind) + (None,),
                  extra_fingerprint=f"{kind}|{size}|{n}|v1")


@dataclass(frozen=True)
class Entry:
    """A dataset of the table: how to list it, and whether it is images (2) or volumes (3)."""
    open: Callable
    dim: int = 2


REGISTRY: dict[str, Entry] = {
    "glas": Entry(glas), "ph2": Entry(ph2), "drive": Entry(drive), "la": Entry(la, 3), "hmeps": Entry(hmeps),
    "folder": Entry(folder), "synthetic": Entry(synthetic),
    "nnunet": Entry(nnunet), "nnunet3d": Entry(nnunet3d, 3), "msd": Entry(msd, 3),
}


def dims(dataset: str) -> int:
    """2 for a dataset of images, 3 for one of volumes (unknown names: 2; ``check`` refuses them)."""
    entry = REGISTRY.get(dataset)
    return entry.dim if entry else 2


def check(cfg) -> None:
    """The table's names and what volumes need of the config (registered with the config checks)."""
    if cfg.data.dataset not in REGISTRY:
        raise ConfigError(f"config key 'data.dataset' = {cfg.data.dataset!r}; choose one of {', '.join(REGISTRY)}")
    depth = cfg.model.depth
    if dims(cfg.data.dataset) == 3 and any(v % 2 ** depth for v in cfg.data.patch):
        raise ConfigError(f"config key 'data.patch' = {list(cfg.data.patch)}: every side must be divisible by "
                          f"2**model.depth = {2 ** depth}")


def data_root(explicit: str | Path | None = None) -> Path:
    """--data-root, then $DIFFSEG_DATA, then ../shared/data beside the project."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("DIFFSEG_DATA")
    if env:
        return Path(env).expanduser()
    return PROJECT_ROOT.parent / "shared" / "data"


def open_source(cfg, root: str | Path | None = None) -> Source:
    """Find and list dataset ``cfg.dataset``; errors name the dataset or folder at fault."""
    name = cfg.dataset
    if name not in REGISTRY:
        raise DataError(f"unknown dataset '{name}'; known datasets: {', '.join(REGISTRY)}")
    if name == "synthetic":
        return synthetic(None, cfg)
    base = data_root(root)
    path = base / name if (base / name).is_dir() else base
    if not path.is_dir():
        raise DataError(f"data root for '{name}' not found: {path} (set --data-root or DIFFSEG_DATA)")
    source = REGISTRY[name].open(path, cfg)
    assert source.dim == REGISTRY[name].dim, f"source '{name}' lists {source.dim}D items"
    if not source.items:
        raise DataError(f"dataset '{name}' at {path} is empty")
    if not source.names("train"):
        raise DataError(f"dataset '{name}' at {path} has no training images")
    return source
