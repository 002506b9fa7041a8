"""The field's dataset formats read as they are: nnU-Net raw (2D RGB, 2D multi-file channels, 3D
NIfTI) and a Decathlon task, each through `data info`, `debug`, `eval` and `predict`; folders that
are almost right are named with what to change."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tally
from diffseg import cli, config
from diffseg.data import sources
from diffseg.errors import ConfigError, DataError

TINY_2D = ["data.size=32", "model.width=4", "model.depth=2", "pretrain.epochs=1", "pretrain.iters_per_epoch=2",
           "train.epochs=1", "train.iters_per_epoch=2", "data.labeled_ratio=0.5"]
TINY_3D = ["data.patch=[16,16,16]", "model.width=4", "model.depth=2", "pretrain.epochs=1", "pretrain.iters_per_epoch=1",
           "train.epochs=1", "train.iters_per_epoch=1", "data.labeled_ratio=0.5", "pretrain.batch_size=2",
           "train.batch_size=2"]
LABELS = {"background": 0, "gland": 1, "tumour": 2}


def disk_labels(rng, shape) -> np.ndarray:
    """Two labelled blobs: label 1 (a disk) and label 2 (a square), at random places."""
    lab = np.zeros(shape, np.uint8)
    grid = np.indices(shape)
    centre = [rng.integers(s // 4, 3 * s // 4) for s in shape]
    lab[sum((g - c) ** 2 for g, c in zip(grid, centre)) < (min(shape) // 4) ** 2] = 1
    corner = tuple(slice(0, s // 4) for s in shape)
    lab[corner] = 2
    return lab


def write_json(root: Path, **meta) -> None:
    (root / "dataset.json").write_text(json.dumps(meta))


def nnunet_2d(root: Path, n=12, channel_files=1, test=True) -> Path:
    """imagesTr/cNN_0000.png (RGB when one file, else that many grayscale files), labelsTr/cNN.png
    with labels 0/1/2, imagesTs/ without labels (as nnU-Net's usually are)."""
    rng = np.random.default_rng(0)
    for folder in ("imagesTr", "labelsTr", "imagesTs"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for i in range(n + (2 if test else 0)):
        lab = disk_labels(rng, (40, 48))
        base = (lab > 0) * 150 + rng.integers(0, 100, lab.shape)
        where = "imagesTr" if i < n else "imagesTs"
        if channel_files == 1:
            rgb = np.stack([base, base // 2, 255 - base], -1).astype(np.uint8)
            Image.fromarray(rgb).save(root / where / f"c{i:02d}_0000.png")
        else:
            for c in range(channel_files):
                Image.fromarray(((base + 40 * c) % 256).astype(np.uint8)).save(root / where / f"c{i:02d}_{c:04d}.png")
        if i < n:
            Image.fromarray(lab).save(root / "labelsTr" / f"c{i:02d}.png")
    channels = {"0": "R", "1": "G", "2": "B"} if channel_files == 1 else {str(c): f"ch{c}" for c in range(channel_files)}
    write_json(root, channel_names=channels, labels=LABELS, numTraining=n, file_ending=".png")
    return root


def write_volume(array: np.ndarray, spacing, path: Path) -> None:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(array.transpose(2, 1, 0))  # (x, y, z) as the readers return it
    img.SetSpacing(tuple(float(s) for s in spacing))
    sitk.WriteImage(img, str(path))


def volumes(root: Path, names, images: str, labels: str | None, suffix: str, rng, spacing) -> None:
    (root / images).mkdir(parents=True, exist_ok=True)
    if labels:
        (root / labels).mkdir(parents=True, exist_ok=True)
    for name in names:
        lab = disk_labels(rng, (32, 32, 16))
        write_volume((lab > 0) * 100.0 + rng.normal(0, 10, lab.shape), spacing, root / images / f"{name}{suffix}.nii.gz")
        if labels:
            write_volume(lab.astype(np.uint8), spacing, root / labels / f"{name}.nii.gz")


def nnunet_3d(root: Path) -> Path:
    rng = np.random.default_rng(1)
    volumes(root, [f"v{i}" for i in range(6)], "imagesTr", "labelsTr", "_0000", rng, (0.8, 0.7, 1.5))
    volumes(root, ["t0", "t1"], "imagesTs", "labelsTs", "_0000", rng, (0.8, 0.7, 1.5))
    write_json(root, channel_names={"0": "MRI"}, labels=LABELS, numTraining=6, file_ending=".nii.gz")
    return root


def msd_task(root: Path) -> Path:
    rng = np.random.default_rng(2)
    train = [f"la_{i:03d}" for i in range(6)]
    volumes(root, train, "imagesTr", "labelsTr", "", rng, (1.0, 1.0, 2.0))
    volumes(root, ["la_100"], "imagesTs", None, "", rng, (1.0, 1.0, 2.0))
    write_json(root, name="LeftAtrium", modality={"0": "MRI"},
               labels={"0": "background", "1": "left atrium", "2": "appendage"}, numTraining=6,
               training=[{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in train],
               test=["./imagesTs/la_100.nii.gz"])
    return root


def open_as(dataset: str, root: Path, **overrides):
    cfg = config.load("debug", {"data.dataset": dataset, **overrides})
    return sources.open_source(cfg.data, root)


def debug_eval_predict(dataset: str, root: Path, tmp_path: Path, sets: list[str], inputs: Path, capsys) -> Path:
    """`data info`, `debug`, `eval` (the data root as the run recorded it) and `predict` on one dataset."""
    assert cli.main(["data", "info", dataset, "--data-root", str(root)]) == 0
    info = capsys.readouterr().out
    assert f"dataset     {dataset}" in info and "foreground labels" in info
    run = tmp_path / "run"
    assert cli.main(["debug", "--dataset", dataset, "--data-root", str(root), "--run-dir", str(run), "--device", "cpu",
                     "--cache-dir", str(tmp_path / "cache"), "--set", *sets]) == 0
    assert "final test dice" in capsys.readouterr().out
    assert cli.main(["eval", str(run), "--device", "cpu", "--cache-dir", str(tmp_path / "cache")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["split"] == "test" and 0 <= result["dice"] <= 1
    out = tmp_path / "pred"
    assert cli.main(["predict", str(run), "--input", str(inputs), "--output", str(out), "--device", "cpu"]) == 0
    return out


def test_nnunet_2d_rgb_png_cases_train_evaluate_and_predict(tmp_path, capsys):
    root = nnunet_2d(tmp_path / "Dataset001_Polyps")
    source = open_as("nnunet", root)
    assert source.dim == 2 and source.channels == 3 and len(source.items) == 12
    assert len(source.names("test")) == round(12 * 0.2)  # no labelsTs/: a hashed share held out
    image, mask, _ = source.read(source.items[0])
    lab = np.asarray(Image.open(root / "labelsTr" / "c00.png"))
    assert image.shape == (40, 48, 3) and (mask == (lab > 0)).all()  # default: every label but 0
    out = debug_eval_predict("nnunet", root, tmp_path, TINY_2D, root / "imagesTs", capsys)
    assert sorted(p.name for p in out.iterdir()) == ["c12.png", "c13.png"]  # CASE_0000.png -> CASE.png
    assert Image.open(out / "c12.png").size == (48, 40)


def test_nnunet_2d_with_one_file_per_channel_and_foreground_labels_by_name(tmp_path, capsys):
    root = nnunet_2d(tmp_path / "Dataset002_Three", channel_files=3)
    source = open_as("nnunet", root, **{"data.foreground_labels": ["tumour"]})
    assert source.channels == 3
    image, mask, _ = source.read(source.items[0])
    lab = np.asarray(Image.open(root / "labelsTr" / "c00.png"))
    assert (mask == (lab == 2)).all() and mask.any()
    ch1 = np.asarray(Image.open(root / "imagesTr" / "c00_0001.png"))
    assert (image[..., 1] == ch1).all()  # the channel files stacked in order
    both = open_as("nnunet", root, **{"data.foreground_labels": ["1", "tumour"]})
    assert (both.read(both.items[0])[1] == (lab > 0)).all()
    # another foreground is another dataset: caches cannot be shared between them
    assert both.fingerprint() != source.fingerprint()
    out = debug_eval_predict("nnunet", root, tmp_path, TINY_2D + ["data.foreground_labels=[tumour]"],
                             root / "imagesTs", capsys)
    assert sorted(p.name for p in out.iterdir()) == ["c12.png", "c13.png"]
    tally.refused(lambda: open_as("nnunet", root, **{"data.foreground_labels": ["lesion"]}),
                  ConfigError, r"'data.foreground_labels' names 'lesion'.*gland \(1\), tumour \(2\)")


def test_nnunet_3d_nifti_keeps_spacing_and_uses_labelled_test_cases(tmp_path, capsys):
    import SimpleITK as sitk

    root = nnunet_3d(tmp_path / "Dataset003_Vol")
    source = open_as("nnunet3d", root)
    assert source.dim == 3 and source.names("test") == ["t0", "t1"]  # labelsTs/ exists: the test split
    assert source.spacing_of(source.items[0]) == pytest.approx((0.8, 0.7, 1.5))
    image, mask, _ = source.read(source.items[0])
    assert image.shape == mask.shape == (32, 32, 16) and abs(float(image.mean())) < 1e-4  # z-scored
    out = debug_eval_predict("nnunet3d", root, tmp_path, TINY_3D, root / "imagesTs", capsys)
    assert sorted(p.name for p in out.iterdir()) == ["t0.nii.gz", "t1.nii.gz"]
    written = sitk.ReadImage(str(out / "t0.nii.gz"))
    assert written.GetSpacing() == pytest.approx((0.8, 0.7, 1.5))
    tally.refused(lambda: open_as("nnunet", root), ConfigError, "volumes: use data.dataset=nnunet3d")


def test_a_decathlon_task_is_read_from_its_dataset_json(tmp_path, capsys):
    root = msd_task(tmp_path / "Task02_Heart")
    source = open_as("msd", root, **{"data.foreground_labels": ["left atrium"]})
    assert source.dim == 3 and len(source.items) == 6 and len(source.names("test")) == 1
    assert source.spacing_of(source.items[0]) == pytest.approx((1.0, 1.0, 2.0))
    out = debug_eval_predict("msd", root, tmp_path, TINY_3D, root / "imagesTs", capsys)
    assert sorted(p.name for p in out.iterdir()) == ["la_100.nii.gz"]


def test_folders_that_are_almost_right_are_named_with_what_to_change(tmp_path):
    nn = nnunet_2d(tmp_path / "Dataset004_X", n=4, test=False)
    tally.refused(lambda: open_as("folder", nn),
                  DataError, r"has imagesTr/: nnU-Net's or the Decathlon's layout: use data.dataset=nnunet")
    plain = tmp_path / "plain"
    (plain / "images").mkdir(parents=True)
    (plain / "masks").mkdir()
    tally.refused(lambda: open_as("nnunet", plain),
                  DataError, r"imagesTr.*has images/ and masks/: the folder layout \(data.dataset=folder\)")
    # nnU-Net's file names in the folder layout
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(plain / "images" / "a_0000.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(plain / "masks" / "a.png")
    tally.refused(lambda: open_as("folder", plain), DataError, r"nnU-Net's CASE_0000.*labelsTr/ with a dataset.json")
    (nn / "dataset.json").unlink()
    tally.refused(lambda: open_as("nnunet", nn),
                  DataError, r"no dataset.json in .*channel_names, labels and file_ending")
    # labels as a list (a common slip): named as such, before anything reads the cases
    write_json(nn, labels=["background", "gland"], file_ending=".nii.gz")
    tally.refused(lambda: open_as("nnunet", nn), DataError, r"'labels' must be a non-empty mapping, got \['background'")
    write_json(nn, labels=LABELS, file_ending=".png")
    (nn / "imagesTr" / "c00_0000.png").rename(nn / "imagesTr" / "c00.png")
    tally.refused(lambda: open_as("nnunet", nn), DataError, r"c00.png: nnU-Net names image files CASE_0000.png")
    (nn / "imagesTr" / "c00.png").rename(nn / "imagesTr" / "c00_0000.png")
    Image.fromarray(np.full((40, 48), 7, np.uint8)).save(nn / "labelsTr" / "c01.png")
    source = open_as("nnunet", nn)
    bad = next(it for it in source.items if it.name == "c01")
    tally.refused(lambda: source.read(bad),
                  DataError, r"c01.png holds values 7, which dataset.json's labels do not declare")
