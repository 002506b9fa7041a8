"""3D volumes (LA) end to end: patch sampling, sliding-window reassembly, millimetre metrics, the
challenge's .nrrd layout, NIfTI predictions, and every method trained on the shared LA subset."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from diffseg import config, evaluate, metrics
from diffseg.data import prepare
from diffseg.errors import ConfigError
from diffseg.methods import METHODS

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def la_data(shared_data):
    if not (shared_data / "la").is_dir():
        pytest.fail(f"LA missing under {shared_data}")
    cfg = config.load("debug3d", {"data.patch": [32, 32, 16]})
    return cfg, prepare(cfg.data, progress=False, root=shared_data)


# ---------------------------------------------------------------------- patches
def foreground_rate(data, prob: float, n: int = 300) -> float:
    ds = data.dataset("labeled", train=True, augment=False)
    ds.foreground_prob = prob
    torch.manual_seed(0)
    hits = sum(bool(ds[i % len(ds)]["mask"].any()) for i in range(n))
    return hits / n


def test_patch_foreground_bias_holds_in_distribution(la_data):
    """With probability p a patch is placed around a foreground voxel, else anywhere: the share
    of patches holding foreground is p + (1 - p) q, with q the share of uniform patches."""
    _, data = la_data
    q = foreground_rate(data, 0.0)
    assert foreground_rate(data, 1.0) == 1.0  # every biased patch holds its foreground voxel
    p = 0.5
    rate, expected = foreground_rate(data, p), p + (1 - p) * q
    sd = math.sqrt(expected * (1 - expected) / 300)
    assert abs(rate - expected) < 4 * sd + 0.02, (rate, expected, q)
    assert q < 0.9  # uniform patches often miss the atrium: the bias is measurable


def test_patches_have_the_patch_shape_and_unlabeled_ones_carry_no_mask(la_data):
    _, data = la_data
    item = data.dataset("labeled", train=True)[0]
    assert item["image"].shape == (1, 32, 32, 16) and item["mask"].shape == (32, 32, 16)
    unlabeled = data.dataset("unlabeled", train=True, with_mask=False)
    assert unlabeled.foreground_prob == 0.0 and "mask" not in unlabeled[0]
    whole = data.dataset("val")[0]
    assert whole["image"].shape[1:] == whole["mask"].shape and whole["mask"].shape[-1] == 88


def test_patch_smaller_volume_is_padded():
    from diffseg.data.volumes import crop, start_of

    vol = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)
    out = crop(vol, [start_of(s, p, None) for s, p in zip(vol.shape, (8, 4, 7))], (8, 4, 7))
    assert out.shape == (8, 4, 7) and (out[5:] == 0).all()
    for _ in range(50):  # a centre always lies inside its patch
        c = int(torch.randint(0, 100, (1,)))
        s = start_of(100, 16, c)
        assert s <= c < s + 16 and 0 <= s <= 84


# ---------------------------------------------------------------------- sliding window
@pytest.mark.parametrize("shape,overlap", [((50, 37, 29), 0.25), ((16, 16, 16), 0.5), ((33, 70, 9), 0.0)])
def test_sliding_window_identity_reproduces_the_volume(shape, overlap):
    """Reassembly is exact: an identity model gives back its input, also where the volume's
    sides are not multiples of the window (and a side shorter than it)."""
    x = torch.randn(1, 2, *shape)
    out = evaluate.slide(lambda t: t, x, (16, 16, 16), overlap)
    assert out.shape == x.shape
    assert torch.allclose(out, x, atol=1e-5)


# ---------------------------------------------------------------------- millimetres
def test_3d_metrics_against_hand_computed_values_with_anisotropic_spacing():
    spacing = (0.5, 1.0, 2.5)
    gt, pred = np.zeros((6, 6, 8), bool), np.zeros((6, 6, 8), bool)
    gt[2, 2, 2], pred[3, 2, 4] = True, True  # one voxel each, 1 voxel apart in x, 2 in z
    d = math.hypot(1 * 0.5, 2 * 2.5)
    assert metrics.hd95(pred, gt, spacing) == pytest.approx(d)
    assert metrics.asd(pred, gt, spacing) == pytest.approx(d)
    assert metrics.dice(pred, gt) == 0.0
    # two slabs, two slices thick, one slice apart: every voxel is surface, half the distances
    # are 0 and half one slice (2.5 mm)
    gt, pred = np.zeros((6, 6, 8), bool), np.zeros((6, 6, 8), bool)
    gt[:, :, 2:4], pred[:, :, 3:5] = True, True
    assert metrics.hd95(pred, gt, spacing) == pytest.approx(2.5)
    assert metrics.asd(pred, gt, spacing) == pytest.approx(1.25)
    assert metrics.dice(pred, gt) == pytest.approx(0.5)
    assert metrics.jaccard(pred, gt) == pytest.approx(1 / 3)
    # the set scores each volume with its own spacing
    out = evaluate.score([pred.astype(float), pred.astype(float)], [gt, gt], [np.ones_like(gt)] * 2, 0.5,
                         [spacing, (1.0, 1.0, 1.0)])
    assert out["hd95_mean"] == pytest.approx((2.5 + 1.0) / 2)


def test_spacing_and_patch_settings_are_checked():
    assert config.load("la").data.patch == (96, 96, 80)
    assert config.load("la", {"data.spacing": "0.625,0.625,1.25"}).data.spacing == (0.625, 0.625, 1.25)
    for bad in ({"data.patch": [96, 96]}, {"data.patch": [96, 96, 81]}, {"data.spacing": [1, 1]},
                {"data.spacing": [1, 0, 1]}, {"data.foreground_prob": 1.5}, {"data.patch": "a,b,c"},
                {"model.arch": "timm"}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            config.load("la", bad)


def test_la_spacing_default_and_override(shared_data):
    from diffseg.data.sources import LA_SPACING, open_source

    assert open_source(config.load("la").data, shared_data).spacing == LA_SPACING
    src = open_source(config.load("la", {"data.spacing": [1, 1, 2]}).data, shared_data)
    assert src.spacing_of(src.items[0]) == (1.0, 1.0, 2.0)


# ---------------------------------------------------------------------- the challenge's .nrrd layout
def write_challenge_layout(root: Path, la: Path, spacing=(0.625, 0.625, 1.25)) -> dict:
    """Three cases cut from the shared HDF5 volumes, saved as the challenge ships them."""
    import h5py
    import SimpleITK as sitk

    cases = sorted(p.name for p in la.iterdir() if (p / "mri_norm2.h5").is_file())[:3]
    shapes = {}
    for i, case in enumerate(cases):
        folder = root / ("Training Set" if i < 2 else "Testing Set") / case
        folder.mkdir(parents=True)
        with h5py.File(la / case / "mri_norm2.h5") as fh:
            image, label = fh["image"][:64, :48, :40], fh["label"][:64, :48, :40]
        for arr, name in ((np.round(image * 100 + 500).astype(np.int16), "lgemri.nrrd"),
                          (label.astype(np.uint8) * 255, "laendo.nrrd")):
            img = sitk.GetImageFromArray(arr.transpose(2, 1, 0))  # (x, y, z) -> SimpleITK's (z, y, x)
            img.SetSpacing(spacing)
            sitk.WriteImage(img, str(folder / name))
        shapes[case] = (image.shape, label)
    return shapes


def test_challenge_nrrd_layout_carries_its_own_spacing(shared_data, tmp_path):
    from diffseg.data.sources import open_source

    shapes = write_challenge_layout(tmp_path / "la", shared_data / "la")
    cfg = config.load("debug3d", {"data.patch": [16, 16, 16], "data.val_ratio": 0.5})
    src = open_source(cfg.data, tmp_path)
    assert [it.split for it in src.items] == ["train", "train", "test"]
    assert all(src.spacing_of(it) == (0.625, 0.625, 1.25) for it in src.items)
    image, mask, _ = src.read(src.items[0])
    shape, label = shapes[src.items[0].name]
    assert image.shape == shape and (mask == label).all()
    assert abs(float(image.mean())) < 1e-3 and abs(float(image.std()) - 1) < 1e-3  # z-scored
    data = prepare(cfg.data, progress=False, root=tmp_path, cache_dir=tmp_path / "cache")
    truth = data.truth("test")
    assert truth.spacings == [(0.625, 0.625, 1.25)] and truth.gts[0].shape == shape


def test_unreadable_nrrd_is_named(tmp_path):
    from diffseg.data.sources import open_source
    from diffseg.errors import DataError

    case = tmp_path / "la" / "Training Set" / "X1"
    case.mkdir(parents=True)
    (case / "lgemri.nrrd").write_text("not a volume")
    (case / "laendo.nrrd").write_text("not a volume")
    with pytest.raises(DataError, match="lgemri.nrrd"):
        open_source(config.load("debug3d").data, tmp_path)


# ---------------------------------------------------------------------- end to end
def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "diffseg", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def debug_run(shared_data, tmp_path_factory):
    """`diffseg debug --dataset la` with `supervised` on the shared LA subset, on CPU. At this
    budget (80 stage-2 iterations on 32^3 patches) the paper's method does not yet beat
    all-foreground on test (0.12 against 0.18; README): it is run end to end below, and this
    run checks that the 3D pipeline learns."""
    out = tmp_path_factory.mktemp("la_debug")
    run(["debug", "--dataset", "la", "--run-dir", str(out / "run"), "--data-root", str(shared_data),
         "--device", "cpu", "--set", "method=supervised"], out)
    return out / "run"


@pytest.mark.slow
def test_debug_run_beats_all_foreground(debug_run):
    summary = json.loads((debug_run / "summary.json").read_text())
    assert summary["dataset"] == "la" and summary["method"] == "supervised"
    test = summary["test"]
    assert test["n"] == 20 and test["beats_trivial"], test
    assert test["dice"] > test["all_foreground_dice"]
    assert math.isfinite(test["hd95_mean"]) and math.isfinite(test["asd_mean"])


@pytest.mark.slow
def test_predict_writes_nifti_with_the_input_spacing(debug_run, shared_data, tmp_path):
    import nibabel as nib

    write_challenge_layout(tmp_path / "src", shared_data / "la", spacing=(0.7, 0.8, 2.0))
    inputs = tmp_path / "in"
    inputs.mkdir()
    case = next((tmp_path / "src" / "Training Set").iterdir())
    (case / "lgemri.nrrd").rename(inputs / "vol.nrrd")
    h5_case = next(p for p in sorted((shared_data / "la").iterdir()) if (p / "mri_norm2.h5").is_file())
    (inputs / h5_case.name).symlink_to(h5_case, target_is_directory=True)  # LA's HDF5 case folder
    run(["predict", str(debug_run), "--input", str(inputs), "--output", str(tmp_path / "out"), "--device", "cpu",
         "--probabilities"], tmp_path)
    nrrd_mask = nib.load(tmp_path / "out" / "vol.nii.gz")
    assert nrrd_mask.shape == (64, 48, 40)
    assert nrrd_mask.header.get_zooms() == pytest.approx((0.7, 0.8, 2.0))
    assert set(np.unique(np.asarray(nrrd_mask.dataobj)).tolist()) <= {0, 1}
    h5_mask = nib.load(tmp_path / "out" / f"{h5_case.name}.nii.gz")
    assert h5_mask.header.get_zooms() == pytest.approx((0.625, 0.625, 0.625))  # the documented default
    prob = np.asarray(nib.load(tmp_path / "out" / f"{h5_case.name}_prob.nii.gz").dataobj)
    assert prob.shape == h5_mask.shape and 0 <= prob.min() and prob.max() <= 1


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains_and_evaluates_on_la(method, shared_data, tmp_path):
    """Each method end to end on volumes; windows without overlap (eval.overlap=0) keep the 20 test
    volumes' scoring short. `eval` is the same code for every predictor that is one network, so it
    runs for one such method and for the paper's (its predictors sample the diffusion pathway)."""
    run(["debug", "--dataset", "la", "--run-dir", str(tmp_path / "run"), "--data-root", str(shared_data),
         "--device", "cpu", "--set", f"method={method}", "train.epochs=2", "train.iters_per_epoch=3",
         "pretrain.epochs=1", "pretrain.iters_per_epoch=3", "ua_mt.passes=2", "eval.overlap=0"], tmp_path)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["method"] == method and summary["test"]["n"] == 20
    assert 0 <= summary["test"]["dice"] <= 1 and math.isfinite(summary["val"]["dice"])
    if method not in ("supervised", "diffusion_cps"):
        return
    ev = run(["eval", str(tmp_path / "run"), "--split", "val", "--data-root", str(shared_data), "--device", "cpu"],
             tmp_path)
    assert json.loads(ev.stdout)["n"] == len(json.loads((tmp_path / "run" / "splits.json").read_text())["val"])
