"""The field's dataset formats, read as they are: nnU-Net's raw format and the Medical
Segmentation Decathlon's.

nnU-Net raw (``DatasetNNN_Name/``): ``imagesTr/CASE_0000.png`` (one file per channel,
``_0000``, ``_0001``...), ``labelsTr/CASE.png``, optionally ``imagesTs/`` with ``labelsTs/``, and
``dataset.json`` naming ``channel_names``, ``labels`` and ``file_ending``. The Decathlon
(``TaskNN_Name/``): ``imagesTr/CASE.nii.gz`` (one file, every modality in it), ``labelsTr/``,
and ``dataset.json`` listing its ``training`` pairs and unlabeled ``test`` images.

Labels become the binary task through ``data.foreground_labels`` (default: every label but 0).
Whether cases are images or volumes is the files' ``file_ending``; the dataset name says which
the run expects (``nnunet`` for images, ``nnunet3d`` and ``msd`` for volumes), and a mismatch is
refused with the name to use. Volumes are z-scored per volume, as LA's challenge files are.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from .images import check_header, read_image
from .items import Item, Source, hashed_test_split
from .la import read_volume_pair, volume_spacing

IMAGE_ENDINGS = (".png", ".tif", ".tiff", ".bmp")
VOLUME_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
HELD_OUT = 0.2  # no labelled test cases: a hashed 20 % of the training cases, as the folder layout


def read_json(root: Path, layout: str) -> dict:
    """dataset.json of an nnU-Net raw or Decathlon folder (``layout`` says what the folder should
    hold, for the message when it does not), its ``labels`` checked and made name -> value here, once,
    from either of the two forms (``label_values``)."""
    hint = looks_like(root)
    if not (root / "imagesTr").is_dir():
        raise DataError(f"folder not found: {root / 'imagesTr'}; {layout}" + (f", and {root} has {hint}" if hint else ""))
    path = root / "dataset.json"
    if not path.is_file():
        raise DataError(f"no dataset.json in {root}: nnU-Net raw and Decathlon datasets carry one "
                        f"(with {hint}); nnU-Net's names channel_names, labels and file_ending")
    try:
        meta = json.loads(path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict) or "labels" not in meta:
        raise DataError(f"{path} has no 'labels' (a mapping of label names and values)")
    meta["labels"] = label_values(meta, path)
    return meta


def looks_like(root: Path) -> str:
    """What a folder's layout resembles, for messages about folders that are almost right."""
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return "images/ and masks/: the folder layout (data.dataset=folder)"
    if (root / "imagesTr").is_dir():
        return "imagesTr/: nnU-Net's or the Decathlon's layout"
    return ""


def ending_of(name: str) -> str:
    low = name.lower()
    return next((e for e in VOLUME_ENDINGS + IMAGE_ENDINGS if low.endswith(e)), "")


def label_values(meta: dict, path: Path) -> dict[str, int]:
    """``labels`` as name -> value, from nnU-Net v2's ``{"background": 0, ...}`` or the
    Decathlon's (and nnU-Net v1's) ``{"0": "background", ...}``."""
    labels = meta["labels"]
    if not isinstance(labels, dict) or not labels:
        raise DataError(f"{path}: 'labels' must be a non-empty mapping, got {labels!r}")
    if all(str(k).strip().isdigit() for k in labels):
        return {str(v): int(k) for k, v in labels.items()}
    out = {}
    for name, value in labels.items():
        if not isinstance(value, int):
            raise DataError(f"{path}: label '{name}' = {value!r}; region-based labels (lists) are not "
                            f"supported: name single label values")
        out[str(name)] = value
    return out


def foreground(meta: dict, wanted: tuple[str, ...], path: Path) -> tuple[int, ...]:
    """The label values that are foreground: ``data.foreground_labels`` given as values or as
    dataset.json's names; empty: every label but 0."""
    values = meta["labels"]
    if not wanted:
        return tuple(sorted(v for v in values.values() if v != 0))
    out = set()
    for w in wanted:
        w = str(w).strip()
        if w.isdigit() and int(w) in values.values():
            out.add(int(w))
        elif w in values:
            out.add(values[w])
        else:
            known = ", ".join(f"{n} ({v})" for n, v in values.items())
            raise ConfigError(f"config key 'data.foreground_labels' names {w!r}, not a label of {path}: "
                              f"labels are {known}")
    if 0 in out:
        raise ConfigError(f"config key 'data.foreground_labels' includes 0, the background of {path}")
    return tuple(sorted(out))


def split_channel(stem: str) -> tuple[str, int] | None:
    """``CASE_0001`` -> ("CASE", 1): nnU-Net's image name, a 4-digit channel after the case; None
    for any other name."""
    case, _, channel = stem.rpartition("_")
    return (case, int(channel)) if case and len(channel) == 4 and channel.isdigit() else None


def channel_files(folder: Path, ending: str) -> dict[str, list[Path]]:
    """nnU-Net's image files by case: ``CASE_0000<ending>``, ``CASE_0001...``, in channel order;
    every case must have the same channels."""
    if not folder.is_dir():
        raise DataError(f"folder not found: {folder}")
    cases: dict[str, dict[int, Path]] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file() or not p.name.lower().endswith(ending):
            continue
        parsed = split_channel(p.name[: -len(ending)])
        if parsed is None:
            raise DataError(f"{p}: nnU-Net names image files CASE_0000{ending} (a 4-digit channel after the "
                            f"case name); rename it, or use data.dataset=folder for images/ and masks/ named alike")
        cases.setdefault(parsed[0], {})[parsed[1]] = p
    want = None
    for case, files in cases.items():
        if sorted(files) != list(range(len(files))):
            raise DataError(f"case '{case}' in {folder} has channels {sorted(files)}; expected 0 to {len(files) - 1}")
        if want is None:
            want = (case, len(files))
        elif len(files) != want[1]:
            raise DataError(f"case '{case}' in {folder} has {len(files)} channel file(s), case '{want[0]}' {want[1]}")
    return {case: [files[i] for i in sorted(files)] for case, files in cases.items()}


def label_files(folder: Path, ending: str) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {p.name[: -len(ending)]: p for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(ending)}


def held_out(items: list[Item], salt: str) -> list[Item]:
    test = hashed_test_split([it.name for it in items], max(1, round(len(items) * HELD_OUT)), salt)
    return [Item(it.name, "test" if it.name in test else "train", it.image, it.mask, spacing=it.spacing,
                 extra=it.extra) for it in items]


def check_dims(ending: str, dim: int, root: Path, dataset: str) -> None:
    volumes = ending in VOLUME_ENDINGS
    if ending not in VOLUME_ENDINGS + IMAGE_ENDINGS:
        raise DataError(f"{root}: file_ending {ending!r} is not read; images: {', '.join(IMAGE_ENDINGS)}; "
                        f"volumes: {', '.join(VOLUME_ENDINGS)}")
    if volumes and dim == 2:
        raise ConfigError(f"config key 'data.dataset' = '{dataset}' is for 2D images, but the cases of {root} are "
                          f"{ending} volumes: use data.dataset=nnunet3d")
    if not volumes and dim == 3:
        raise ConfigError(f"config key 'data.dataset' = '{dataset}' is for volumes, but the cases of {root} are "
                          f"{ending} images: use data.dataset=nnunet")


def nnunet_source(root: Path, cfg, dim: int) -> Source:
    dataset = "nnunet" if dim == 2 else "nnunet3d"
    meta = read_json(root, "nnU-Net's raw layout is imagesTr/ + labelsTr/ + dataset.json")
    ending = meta.get("file_ending") or next(
        (ending_of(p.name) for p in sorted((root / "imagesTr").iterdir()) if ending_of(p.name)), "")
    check_dims(ending, dim, root, dataset)
    fg = foreground(meta, cfg.foreground_labels, root / "dataset.json")
    items = []
    for split, images, labels in (("train", "imagesTr", "labelsTr"), ("test", "imagesTs", "labelsTs")):
        if split == "test" and not label_files(root / labels, ending):
            continue  # nnU-Net's test images usually come without labels: a held-out share instead
        cases, masks = channel_files(root / images, ending), label_files(root / labels, ending)
        if split == "train" and not cases:
            raise DataError(f"no {ending} image files named CASE_0000{ending} in {root / images}")
        for case, files in cases.items():
            if case not in masks:
                raise DataError(f"no label for case '{case}' (looked for {root / labels / (case + ending)})")
            if dim == 3 and len(files) > 1:
                raise DataError(f"case '{case}' in {root / images} has {len(files)} channel files; volumes are read "
                                f"with one channel only (multi-channel 3D input is not supported yet)")
            spacing = volume_spacing(files[0]) if dim == 3 else ()
            items.append(Item(case, split, files[0], masks[case], spacing=spacing, extra=tuple(files[1:])))
    if not any(it.split == "test" for it in items):
        items = held_out(items, dataset)
    notes = [] if (root / "labelsTs").is_dir() else [
        f"no labelsTs/: a fixed hashed {HELD_OUT:.0%} of the training cases is the test split"]
    return make_source(dataset, root, dim, items, fg, meta, notes)


def nnunet(root: Path, cfg) -> Source:
    return nnunet_source(root, cfg, 2)


def nnunet3d(root: Path, cfg) -> Source:
    return nnunet_source(root, cfg, 3)


def msd(root: Path, cfg) -> Source:
    """A Decathlon task: the pairs dataset.json's ``training`` lists (its ``test`` images have no
    labels, so a hashed share of the training cases is held out); single-modality volumes."""
    meta = read_json(root, "the Decathlon's layout is TaskNN_Name/ with imagesTr/, labelsTr/ and dataset.json")
    pairs = meta.get("training")
    if not isinstance(pairs, list) or not pairs:
        raise DataError(f"{root / 'dataset.json'} lists no 'training' pairs; an nnU-Net raw dataset (file_ending, "
                        f"CASE_0000 files) is read with data.dataset=nnunet or nnunet3d")
    modalities = meta.get("modality") or {}
    if len(modalities) > 1:
        raise DataError(f"{root / 'dataset.json'}: {len(modalities)} modalities in one file per case; only "
                        f"single-modality Decathlon tasks are read (4D volumes are not supported)")
    fg = foreground(meta, cfg.foreground_labels, root / "dataset.json")
    items = []
    for i, pair in enumerate(pairs):
        try:
            image, label = root / pair["image"], root / pair["label"]
        except (TypeError, KeyError):
            raise DataError(f"{root / 'dataset.json'}: training entry {i} is not {{image: ..., label: ...}}: {pair!r}") from None
        for p in (image, label):
            if not p.is_file():
                raise DataError(f"{root / 'dataset.json'}: training entry {i} names {p}, which does not exist")
        ending = ending_of(image.name)
        check_dims(ending, 3, root, "msd")
        items.append(Item(image.name[: -len(ending)], "train", image, label, spacing=volume_spacing(image)))
    notes = [f"the Decathlon's test images have no labels: a fixed hashed {HELD_OUT:.0%} of the training cases "
             f"is the test split"]
    return make_source("msd", root, 3, held_out(items, "msd"), fg, meta, notes)


def make_source(dataset: str, root: Path, dim: int, items: list[Item], fg: tuple[int, ...], meta: dict,
                notes: list[str]) -> Source:
    values = meta["labels"]  # name -> value (read_json)
    known = tuple(values.values())
    notes = [f"foreground labels {list(fg)} of {values}"] + notes
    if dim == 3:
        return Source(dataset, root, 3, 1, items, lambda it: read_case_volume(it, fg, known), notes=notes,
                      extra_fingerprint=f"foreground={list(fg)}")
    channels = sum(file_channels(p) for p in (items[0].image, *items[0].extra))
    return Source(dataset, root, 2, channels, items, lambda it: read_case_image(it, fg, known, channels),
                  notes=notes, extra_fingerprint=f"foreground={list(fg)}")


def file_channels(path: Path) -> int:
    """3 for an RGB(A) or palette file, else 1 (nnU-Net stores RGB PNGs as one _0000 file)."""
    from PIL import Image

    check_header(path)
    with Image.open(path) as img:
        return 3 if img.mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr") else 1


def read_labels_2d(path: Path) -> np.ndarray:
    from PIL import Image

    check_header(path, "label")
    with Image.open(path) as img:
        arr = np.asarray(img)
    if arr.ndim == 3:
        raise DataError(f"label file {path} has {arr.shape[2]} channels; expected one channel of label values")
    return arr


def to_binary(labels: np.ndarray, fg: tuple[int, ...], known: tuple[int, ...], path: Path) -> np.ndarray:
    """Foreground where a label is one of ``fg``; a value dataset.json does not declare is refused
    (a wrong file_ending or a mask saved lossily would otherwise train silently)."""
    values = np.unique(labels)
    stray = sorted(set(values.tolist()) - set(known))
    if stray:
        shown = ", ".join(str(v) for v in stray[:8]) + (" ..." if len(stray) > 8 else "")
        raise DataError(f"label file {path} holds values {shown}, which dataset.json's labels do not declare "
                        f"(declared: {', '.join(str(v) for v in sorted(known))})")
    return np.isin(labels, fg).astype(np.uint8)


def read_channels(paths: list[Path], channels: int, name: str = "") -> np.ndarray:
    """One image from its channel files, stacked in order (an RGB file gives three)."""
    parts = [read_image(p, file_channels(p)) for p in paths]
    shapes = {p.shape[:2] for p in parts}
    if len(shapes) > 1:
        raise DataError(f"the channel files of case '{name or paths[0].name}' differ in size: {sorted(shapes)} "
                        f"({paths[0].parent})")
    image = np.concatenate(parts, axis=-1)
    if image.shape[-1] != channels:
        raise DataError(f"case '{name or paths[0].name}' has {image.shape[-1]} channels; the run's images have {channels}")
    return image


def input_cases(folder: Path, files: list[Path]) -> list[tuple[str, list[Path]]]:
    """Images to predict for a run on an nnU-Net dataset: files named CASE_0000... grouped by case
    (each case's channels in order), as in imagesTs/; a folder of plain names is one case per file."""
    if not any(is_channel_file(p) for p in files):
        return [(p.stem, [p]) for p in files]
    endings = sorted({ending_of(p.name) for p in files})
    if len(endings) > 1:
        raise DataError(f"{folder} mixes {', '.join(endings)} files; an nnU-Net case folder has one file_ending")
    return sorted(channel_files(folder, endings[0]).items())


def is_channel_file(path: Path) -> bool:
    return split_channel(path.name[: -len(ending_of(path.name)) or None]) is not None


def read_case_image(item: Item, fg: tuple[int, ...], known: tuple[int, ...], channels: int):
    image = read_channels([item.image, *item.extra], channels, item.name)
    labels = read_labels_2d(item.mask)
    if labels.shape != image.shape[:2]:
        raise DataError(f"image/label size mismatch for case '{item.name}': {item.image} is "
                        f"{image.shape[1]}x{image.shape[0]} but {item.mask} is {labels.shape[1]}x{labels.shape[0]}")
    return image, to_binary(labels, fg, known, item.mask), None


def read_case_volume(item: Item, fg: tuple[int, ...], known: tuple[int, ...]):
    image, labels = read_volume_pair(item)
    return image, to_binary(np.rint(labels).astype(np.int64), fg, known, item.mask), None
