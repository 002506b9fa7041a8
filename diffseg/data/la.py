"""The left atrium MRI volumes (LA, 3D): the field's preprocessed HDF5, or the 2018 challenge's own files."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from .items import Item, Source

# LA's preprocessed HDF5 carries no spacing; the 2018 challenge's MRIs are 0.625 mm isotropic
LA_SPACING = (0.625, 0.625, 0.625)


def la(root: Path, cfg) -> Source:
    """LA in either layout: the field's preprocessed HDF5 (``<CASE>/mri_norm2.h5`` listed in
    ``train.list`` and ``test.list``; no spacing in the files, so ``data.spacing`` or 0.625 mm), or
    the 2018 challenge's own (``Training Set/<CASE>/lgemri.nrrd`` with ``laendo.nrrd``, and
    ``Testing Set/...``), whose files carry their spacing."""
    spacing = tuple(getattr(cfg, "spacing", ()) or LA_SPACING)
    if not (root / "train.list").is_file() and (root / "Training Set").is_dir():
        return Source("la", root, 3, 1, la_challenge_items(root), read_la_nrrd, spacing=spacing)
    items, listed_in = [], {}
    for split, listing in (("train", "train.list"), ("test", "test.list")):
        path = root / listing
        if not path.is_file():
            raise DataError(f"LA list file not found: {path} (or the challenge layout: {root / 'Training Set'})")
        for case in path.read_text().split():
            # the checks splits.csv has: a case is one plain folder name inside the root, listed once
            if case in (".", "..") or "/" in case or "\\" in case:
                raise DataError(f"{path} lists '{case}': a case is a folder name inside {root}, not a path")
            if case in listed_in:
                where = "twice in " + str(path) if listed_in[case] == path else f"in both {listed_in[case]} and {path}"
                raise DataError(f"LA case '{case}' is listed {where}" + (" (a test case trained on would leak "
                                "into the test score)" if listed_in[case] != path else ""))
            listed_in[case] = path
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


def read_volume_pair(item: Item) -> tuple[np.ndarray, np.ndarray]:
    """An image volume z-scored over the volume and its label volume as stored, checked to agree
    in shape and spacing (LA's challenge files, nnU-Net's and the Decathlon's cases)."""
    image, spacing = read_volume(item.image)
    label, label_spacing = read_volume(item.mask)
    if image.shape != label.shape:
        raise DataError(f"{item.mask}: label shape {label.shape} != image shape {image.shape} ({item.image})")
    if not np.allclose(spacing, label_spacing, rtol=1e-4):
        raise DataError(f"{item.mask}: spacing {label_spacing} != the image's {spacing}")
    image = image.astype(np.float32)
    return (image - image.mean()) / max(float(image.std()), 1e-8), label


def read_la_nrrd(item: Item):
    """A challenge case: the MRI z-scored over the volume (as the HDF5 preprocessing does, without
    its crop around the label, which would read the test labels), the cavity label > 0."""
    image, label = read_volume_pair(item)
    return image, (label > 0).astype(np.uint8), None
