"""Dataset sources: where each image and mask lives, which official split it belongs to.

A source only lists and reads files; resizing, caching and splitting live elsewhere.
Every reader returns ``image`` (H, W, C) uint8 for 2D or float32 (H, W, D) for 3D,
``mask`` uint8 in {0, 1} of the same spatial shape, and an optional field-of-view mask.
"""
from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import DataError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
VOLUME_DATASETS = ("la",)  # 3D: volumes, trained on patches (data/volumes.py)
# LA's preprocessed HDF5 carries no spacing; the 2018 challenge's MRIs are 0.625 mm isotropic
LA_SPACING = (0.625, 0.625, 0.625)
IMAGE_EXTS = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff", ".gif")


@dataclass(frozen=True)
class Item:
    name: str
    split: str  # "train" or "test" (the held-out official split)
    image: Path | None = None
    mask: Path | None = None
    fov: Path | None = None
    index: int = 0  # used by generated sources
    spacing: tuple[float, ...] = ()  # the file's own voxel spacing (mm), where it carries one


@dataclass
class Source:
    dataset: str
    root: Path | None
    dim: int  # 2 or 3
    channels: int
    items: list[Item]
    reader: Callable[[Item], tuple[np.ndarray, np.ndarray, np.ndarray | None]]
    instance_labels: bool = False  # masks hold instance ids: any id > 0 is foreground
    spacing: tuple[float, ...] = (1.0, 1.0)
    extra_fingerprint: str = ""
    notes: list[str] = field(default_factory=list)

    def read(self, item: Item):
        return self.reader(item)

    def spacing_of(self, item: Item) -> tuple[float, ...]:
        """An item's pixel or voxel spacing: its file's own, else the dataset's."""
        return tuple(item.spacing) or tuple(self.spacing)

    def names(self, split: str) -> list[str]:
        return [it.name for it in self.items if it.split == split]

    def fingerprint(self) -> str:
        """Changes whenever a source file is added, removed, replaced or touched."""
        h = hashlib.sha256(f"{self.dataset}|{self.extra_fingerprint}".encode())
        for it in self.items:
            h.update(f"{it.name}|{it.split}|{it.index}".encode())
            for path in (it.image, it.mask, it.fov):
                if path is not None:
                    st = path.stat()
                    h.update(f"{path.name}|{st.st_size}|{st.st_mtime_ns}".encode())
        return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- file reading
def read_image(path: Path, channels: int) -> np.ndarray:
    """(H, W, C) uint8. 16-bit and 32-bit grayscale images are scaled to 8 bits by their type's
    range (PIL's own conversion clips them at 255, which turns most of a 16-bit image white)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            if img.mode.startswith("I") or img.mode == "F":
                wide = np.asarray(img).astype(np.float64)
                top = 65535.0 if img.mode.startswith("I;16") or wide.max(initial=0) > 255 else 255.0
                if img.mode == "F":
                    top = max(float(wide.max(initial=0)), 1.0)
                arr = np.clip(np.round(wide / top * 255.0), 0, 255).astype(np.uint8)
                arr = np.repeat(arr[..., None], 3, axis=-1) if channels == 3 else arr
            else:
                arr = np.asarray(img.convert("RGB" if channels == 3 else "L"), dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"image file not found: {path}") from None
    except Image.DecompressionBombError as exc:
        raise DataError(f"image file {path} is too large to read safely ({exc}); shrink it first") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot read image file {path}: {exc}") from None
    return arr if channels == 3 else arr[..., None]


def read_mask(path: Path, instance_labels: bool = False, threshold: int = 0) -> np.ndarray:
    """Binary mask as {0, 1}; non-binary values are an error unless they are instance ids or a
    ``threshold`` (data.mask_threshold, for lossy JPEG masks) says where foreground starts."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            arr = np.asarray(img)
    except FileNotFoundError:
        raise DataError(f"mask file not found: {path}") from None
    except Image.DecompressionBombError as exc:
        raise DataError(f"mask file {path} is too large to read safely ({exc}); shrink it first") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot read mask file {path}: {exc}") from None
    if arr.ndim == 3:  # RGB(A) masks: all channels must agree
        if not (arr[..., :3] == arr[..., :1]).all():
            raise DataError(f"mask file {path} is a colour image; expected one binary channel")
        arr = arr[..., 0]
    if instance_labels:
        return (arr > 0).astype(np.uint8)
    if threshold > 0:
        return (arr > threshold).astype(np.uint8)
    values = np.unique(arr)
    if set(values.tolist()) <= {0, 1}:
        return arr.astype(np.uint8)
    if set(values.tolist()) <= {0, 255} or set(values.tolist()) <= {0, 65535}:  # 8- or 16-bit
        return (arr > 0).astype(np.uint8)
    shown = ", ".join(str(v) for v in values[:8]) + (" ..." if len(values) > 8 else "")
    raise DataError(f"mask file {path} is not binary: values {shown} (expected 0/255 or 0/1; for masks "
                    f"saved lossily, e.g. as JPEG, set data.mask_threshold=127 to binarise at a value)")


def read_pair(item: Item, channels: int, instance_labels: bool = False, threshold: int = 0):
    image = read_image(item.image, channels)
    mask = read_mask(item.mask, instance_labels, threshold)
    if image.shape[:2] != mask.shape:
        raise DataError(f"image/mask size mismatch for '{item.name}': {item.image} is "
                        f"{image.shape[1]}x{image.shape[0]} but {item.mask} is {mask.shape[1]}x{mask.shape[0]}")
    fov = None
    if item.fov is not None:
        fov = read_mask(item.fov, threshold=threshold)
        if fov.shape != mask.shape:
            raise DataError(f"field-of-view mask {item.fov} size {fov.shape} does not match {item.mask}")
    return image, mask, fov


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
            raise DataError(f"no mask for image {path} (looked for {masks}/{name}.*)")
        if fov is not None and name not in fovs:
            raise DataError(f"no field-of-view mask for image {path} (looked in {fov})")
        items.append(Item(name, split_of(name), path, msks[name], fovs.get(name)))
    return items


def hashed_test_split(names: list[str], n_test: int, salt: str) -> set[str]:
    """A fixed held-out set, identical on every machine (no RNG library involved)."""
    order = sorted(names, key=lambda n: hashlib.sha256(f"{salt}:{n}".encode()).hexdigest())
    return set(order[:n_test])


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
                  instance_labels=instance, notes=notes or [],
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


GRAY_MODES = ("L", "LA", "I", "I;16", "I;16B", "I;16L", "1", "F")


def folder_channels(paths: list[Path]) -> int:
    """1 when every image is grayscale, else 3 (grayscale images are then read as RGB). Decided
    from every image's header (cheap: no pixels are decoded), never from the first alone."""
    from PIL import Image, UnidentifiedImageError

    gray = True
    for path in paths:
        try:
            with Image.open(path) as img:
                gray = gray and img.mode in GRAY_MODES
        except Image.DecompressionBombError as exc:
            raise DataError(f"image file {path} is too large to read safely ({exc}); shrink it first") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise DataError(f"cannot read image file {path}: {exc}") from None
    return 1 if gray else 3


def folder(root: Path, cfg) -> Source:
    """Any images/ + masks/ pair; splits.csv (name,split) optional, else a hashed 20 % test."""
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


def la(root: Path, cfg) -> Source:
    """LA in either layout: the field's preprocessed HDF5 (``<CASE>/mri_norm2.h5`` listed in
    ``train.list`` and ``test.list``; no spacing in the files, so ``data.spacing`` or 0.625 mm), or
    the 2018 challenge's own (``Training Set/<CASE>/lgemri.nrrd`` with ``laendo.nrrd``, and
    ``Testing Set/...``), whose files carry their spacing."""
    spacing = tuple(getattr(cfg, "spacing", ()) or LA_SPACING)
    if not (root / "train.list").is_file() and (root / "Training Set").is_dir():
        return Source("la", root, 3, 1, la_challenge_items(root), read_la_nrrd, spacing=spacing)
    items = []
    for split, listing in (("train", "train.list"), ("test", "test.list")):
        path = root / listing
        if not path.is_file():
            raise DataError(f"LA list file not found: {path} (or the challenge layout: {root / 'Training Set'})")
        for case in path.read_text().split():
            h5 = root / case / "mri_norm2.h5"
            if not h5.is_file():
                raise DataError(f"LA case '{case}' listed in {path} has no volume {h5}")
            items.append(Item(case, split, h5, h5))
    return Source("la", root, 3, 1, items, read_la, spacing=spacing)


def read_la(item: Item):
    import h5py

    try:
        with h5py.File(item.image, "r") as fh:
            image = np.asarray(fh["image"], dtype=np.float32)
            label = np.asarray(fh["label"], dtype=np.uint8)
    except (OSError, KeyError) as exc:
        raise DataError(f"cannot read LA volume {item.image}: {exc}") from None
    if image.shape != label.shape:
        raise DataError(f"{item.image}: image shape {image.shape} != label shape {label.shape}")
    if not set(np.unique(label).tolist()) <= {0, 1}:
        raise DataError(f"{item.image}: label is not binary")
    return image, label, None


def la_challenge_items(root: Path) -> list[Item]:
    """Cases of the challenge's folders; each file's spacing is read from its header now."""
    items = []
    for split, folder in (("train", "Training Set"), ("test", "Testing Set")):
        if not (root / folder).is_dir():
            continue
        for case in sorted(p for p in (root / folder).iterdir() if p.is_dir() and not p.name.startswith(".")):
            image, label = case / "lgemri.nrrd", case / "laendo.nrrd"
            for path in (image, label):
                if not path.is_file():
                    raise DataError(f"LA case folder {case} has no {path.name}")
            items.append(Item(case.name, split, image, label, spacing=volume_spacing(image)))
    return items


def read_volume(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """A medical volume (.nrrd, .nii, .nii.gz, .mha...) as an (x, y, z) array, as LA's HDF5 holds
    it, with its spacing in mm, read by SimpleITK."""
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise DataError(f"cannot read volume {path}: {str(exc).strip().splitlines()[-1]}") from None
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise DataError(f"{path}: expected a 3D single-channel volume, got {img.GetDimension()}D with "
                        f"{img.GetNumberOfComponentsPerPixel()} components")
    return sitk.GetArrayFromImage(img).transpose(2, 1, 0), tuple(float(v) for v in img.GetSpacing())


def volume_spacing(path: Path) -> tuple[float, ...]:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise DataError(f"cannot read volume {path}: {str(exc).strip().splitlines()[-1]}") from None
    return tuple(float(v) for v in reader.GetSpacing())


def read_la_nrrd(item: Item):
    """A challenge case: the MRI z-scored over the volume (as the HDF5 preprocessing does, without
    its crop around the label, which would read the test labels), the cavity label > 0."""
    image, spacing = read_volume(item.image)
    label, label_spacing = read_volume(item.mask)
    if image.shape != label.shape:
        raise DataError(f"{item.mask}: label shape {label.shape} != image shape {image.shape} ({item.image})")
    if not np.allclose(spacing, label_spacing, rtol=1e-4):
        raise DataError(f"{item.mask}: spacing {label_spacing} != the image's {spacing}")
    image = image.astype(np.float32)
    image = (image - image.mean()) / max(float(image.std()), 1e-8)
    return image, (label > 0).astype(np.uint8), None


def synthetic(root: Path | None, cfg) -> Source:
    from .synthetic import make_sample

    n, kind, size = cfg.synthetic_count, cfg.synthetic_kind, cfg.size
    n_test = max(1, n // 4)
    items = [Item(f"syn{i:04d}", "test" if i >= n - n_test else "train", index=i) for i in range(n)]
    return Source("synthetic", None, 2, 3, items, lambda it: make_sample(it.index, size, kind) + (None,),
                  extra_fingerprint=f"{kind}|{size}|{n}|v1")


REGISTRY: dict[str, Callable] = {
    "glas": glas, "ph2": ph2, "drive": drive, "la": la, "hmeps": hmeps, "folder": folder,
    "synthetic": synthetic,
}


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
    source = REGISTRY[name](path, cfg)
    if not source.items:
        raise DataError(f"dataset '{name}' at {path} is empty")
    if not source.names("train"):
        raise DataError(f"dataset '{name}' at {path} has no training images")
    return source
