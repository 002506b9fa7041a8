"""Dataset layouts, splits, cache, augmentation and bad input, on real and generated data."""
import os
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from diffseg import cli, config
from diffseg.data import augment, cache, make_splits, prepare, sources
from diffseg.data.synthetic import make_sample
from diffseg.errors import DataError
from helpers import make_folder_dataset, write_pair


def data_cfg(dataset, **kw):
    overrides = {"data.dataset": dataset, "data.size": 32} | {f"data.{k}": v for k, v in kw.items()}
    return config.load(None, overrides).data


# ---------------------------------------------------------------- real data
def test_glas_official_split_and_info(shared_data, capsys):
    src = sources.open_source(data_cfg("glas"), shared_data)
    assert len(src.names("train")) == 85 and len(src.names("test")) == 80
    assert cli.main(["data", "info", "glas", "--data-root", str(shared_data)]) == 0
    out = capsys.readouterr().out  # by default the split `diffseg debug --dataset glas` uses (25 % labels)
    assert "85 training, 80 test images" in out
    assert "validation 13" in out and "labeled 18" in out and "unlabeled 54" in out
    assert "advice      images up to 387 px are resized to 64 px" in out and "data.scale" in out
    assert cli.main(["data", "info", "glas", "--config", "glas", "--data-root", str(shared_data)]) == 0
    out = capsys.readouterr().out  # the paper's GlaS config: 10 % labels at 128 px
    assert "validation 13" in out and "labeled 8" in out and "unlabeled 64" in out and "advice" not in out


def test_ph2_drive_la_real(shared_data):
    ph2 = sources.open_source(data_cfg("ph2"), shared_data)
    assert len(ph2.items) == 200 and len(ph2.names("test")) == 20
    drive = sources.open_source(data_cfg("drive"), shared_data)
    assert len(drive.names("train")) == 20 and len(drive.names("test")) == 20
    assert all(it.fov is not None for it in drive.items)
    image, mask, fov = drive.read(drive.items[0])
    assert image.shape == (584, 565, 3) and fov.shape == mask.shape and set(np.unique(mask)) <= {0, 1}
    la = sources.open_source(data_cfg("la"), shared_data)
    assert la.dim == 3 and len(la.names("train")) == 16 and len(la.names("test")) == 20
    vol, lab, _ = la.read(la.items[0])
    assert vol.ndim == 3 and vol.shape[2] == 88 and lab.shape == vol.shape and 0 < lab.mean() < 0.5


def test_real_prepare_caches_resized_images(shared_data):
    data = prepare(data_cfg("glas"), root=shared_data)
    item = data.dataset("labeled")[0]
    assert item["image"].shape == (3, 32, 32) and item["mask"].shape == (32, 32)
    assert abs(float(item["image"].mean())) < 3 and 0 < float(item["mask"].float().mean()) < 1


# ---------------------------------------------------------------- layouts
def test_glas_warwick_release_layout(tmp_path):
    root = tmp_path / "glas"
    root.mkdir()
    for name in ("train_1", "train_2", "train_3", "testA_1", "testB_1"):
        Image.fromarray(np.zeros((16, 20, 3), np.uint8)).save(root / f"{name}.bmp")
        inst = np.zeros((16, 20), np.uint8)
        inst[:4], inst[8:12] = 1, 7  # instance ids
        Image.fromarray(inst).save(root / f"{name}_anno.bmp")
    src = sources.open_source(data_cfg("glas"), tmp_path)
    assert sorted(src.names("test")) == ["testA_1", "testB_1"] and len(src.names("train")) == 3
    _, mask, _ = src.read(src.items[0])
    assert set(np.unique(mask)) == {0, 1} and mask.sum() == 8 * 20


def test_ph2_official_layout(tmp_path):
    base = tmp_path / "ph2" / "PH2 Dataset images"
    for i in range(12):
        n = f"IMD{i:03d}"
        write_pair(base / n / f"{n}_Dermoscopic_Image", base / n / f"{n}_lesion", n, ext=".bmp")
        (base / n / f"{n}_lesion" / f"{n}.bmp").rename(base / n / f"{n}_lesion" / f"{n}_lesion.bmp")
    src = sources.open_source(data_cfg("ph2"), tmp_path)
    assert len(src.items) == 12 and len(src.names("test")) == 1
    src.read(src.items[0])


def test_hmeps_and_folder_layouts(tmp_path):
    for split, n in (("train", 6), ("val", 2)):
        for i in range(n):
            write_pair(tmp_path / "hmeps" / split / "image", tmp_path / "hmeps" / split / "mask", f"{split}{i}")
    src = sources.open_source(data_cfg("hmeps"), tmp_path)
    assert src.channels == 1 and len(src.names("train")) == 6 and len(src.names("test")) == 2
    assert src.read(src.items[0])[0].shape[-1] == 1
    with_csv = make_folder_dataset(tmp_path / "f1", 10, splits_csv=True)
    src = sources.open_source(data_cfg("folder"), with_csv)
    assert len(src.names("test")) == 3
    plain = make_folder_dataset(tmp_path / "f2", 10)
    assert len(sources.open_source(data_cfg("folder"), plain).names("test")) == 2


def test_synthetic_is_textured_and_deterministic():
    a_img, a_mask = make_sample(3, 64, "glands")
    b_img, b_mask = make_sample(3, 64, "glands")
    assert np.array_equal(a_img, b_img) and np.array_equal(a_mask, b_mask)
    assert 0.02 < a_mask.mean() < 0.9
    g = a_img[..., 1].astype(float)
    # neighbouring pixels correlate (texture), unlike plain noise
    assert np.corrcoef(g[:, :-1].ravel(), g[:, 1:].ravel())[0, 1] > 0.5
    inside, outside = a_img[a_mask == 1].astype(float), a_img[a_mask == 0].astype(float)
    assert np.abs(inside.mean(0) - outside.mean(0)).max() > 10  # the shapes differ in colour
    l_img, l_mask = make_sample(0, 64, "lesions")
    assert l_img.shape == (64, 64, 3) and 0.02 < l_mask.mean() < 0.9


# ---------------------------------------------------------------- splits
def test_splits_are_seeded_disjoint_and_keep_one_labeled():
    train = [f"n{i}" for i in range(85)]
    s = make_splits(train, ["t"], val_ratio=0.15, labeled_ratio=0.01, labeled_count=0, seed=0)
    assert s.counts() == {"labeled": 1, "unlabeled": 71, "val": 13, "test": 1}
    assert not set(s.val) & set(s.labeled) and not set(s.labeled) & set(s.unlabeled)
    assert s == make_splits(train, ["t"], val_ratio=0.15, labeled_ratio=0.01, labeled_count=0, seed=0)
    other = make_splits(train, ["t"], val_ratio=0.15, labeled_ratio=0.01, labeled_count=0, seed=1)
    assert other.val != s.val
    by_count = make_splits(train, [], val_ratio=0.15, labeled_ratio=0.5, labeled_count=5, seed=0)
    assert len(by_count.labeled) == 5
    # pinned: the split is the same on every machine and library version
    assert s.labeled == ("n65",)


def test_splits_save_and_load(tmp_path):
    s = make_splits(list("abcdefghij"), ["z"], val_ratio=0.2, labeled_ratio=0.3, labeled_count=0, seed=2)
    s.save(tmp_path / "splits.json")
    assert type(s).load(tmp_path / "splits.json") == s


def test_ratio_leaving_no_labeled_image_is_an_error():
    with pytest.raises(DataError, match="labeled_ratio=0.0 leaves no labeled image"):
        make_splits(list("abcdef"), [], val_ratio=0.2, labeled_ratio=0.0, labeled_count=0, seed=0)
    with pytest.raises(DataError, match="labeled_count=50"):
        make_splits(list("abcdef"), [], val_ratio=0.2, labeled_ratio=0.1, labeled_count=50, seed=0)


# ---------------------------------------------------------------- bad input
def test_missing_mask_names_the_image(tmp_path):
    root = make_folder_dataset(tmp_path / "d", 4)
    (root / "masks" / "img2.png").unlink()
    with pytest.raises(DataError, match=r"no mask for image .*img2\.png"):
        sources.open_source(data_cfg("folder"), root)


def test_size_mismatch_and_non_binary_mask_name_the_file(tmp_path):
    root = make_folder_dataset(tmp_path / "d", 4)
    write_pair(root / "images", root / "masks", "img1", mask_size=(10, 10))
    with pytest.raises(DataError, match=r"size mismatch for 'img1'.*24x20.*10x10"):
        prepare(data_cfg("folder"), root=root)
    root2 = make_folder_dataset(tmp_path / "e", 4)
    write_pair(root2 / "images", root2 / "masks", "img3", mask_values=(0, 128))
    with pytest.raises(DataError, match=r"img3\.png is not binary: values 0, 128"):
        prepare(data_cfg("folder"), root=root2)


def test_truncated_image_and_empty_dataset(tmp_path):
    root = make_folder_dataset(tmp_path / "d", 4)
    path = root / "images" / "img0.png"
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(DataError, match=r"cannot read image file .*img0\.png"):
        prepare(data_cfg("folder"), root=root)
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "masks").mkdir()
    with pytest.raises(DataError, match="is empty"):
        sources.open_source(data_cfg("folder"), empty)
    with pytest.raises(DataError, match="unknown dataset 'glass'"):
        sources.open_source(data_cfg("glas").__class__(dataset="glass"))


def test_bad_file_leaves_no_cache_behind(tmp_path):
    root = make_folder_dataset(tmp_path / "d", 4)
    write_pair(root / "images", root / "masks", "img3", mask_values=(0, 7))
    directory = tmp_path / "cache"
    with pytest.raises(DataError):
        prepare(data_cfg("folder"), root=root, cache_dir=str(directory))
    assert not [p for p in directory.glob("*") if p.suffix != ".lock"]  # the builders' lock may stay


# ---------------------------------------------------------------- cache
def test_cache_reused_rebuilt_on_change_and_when_corrupt(tmp_path):
    root = make_folder_dataset(tmp_path / "d", 5)
    cfg, where = data_cfg("folder"), {"root": root, "cache_dir": str(tmp_path / "c")}
    first = prepare(cfg, **where).cache_path
    stamp = first.stat().st_mtime_ns
    assert prepare(cfg, **where).cache_path == first and first.stat().st_mtime_ns == stamp  # reused
    write_pair(root / "images", root / "masks", "img9")  # sources change -> new fingerprint
    second = prepare(cfg, **where).cache_path
    assert second != first
    with h5py.File(second) as fh:
        assert fh["images"].shape == (6, 32, 32, 3)
    second.write_bytes(second.read_bytes()[: second.stat().st_size // 2])  # truncate
    assert not cache.is_valid(second, 6)
    assert prepare(cfg, **where).cache_path == second and cache.is_valid(second, 6)


def test_dataset_opens_file_once_per_process_and_pickles_without_handle(tmp_path):
    root = make_folder_dataset(tmp_path / "d", 6)
    data = prepare(data_cfg("folder"), root=root)
    ds = data.dataset("labeled" if data.splits.labeled else "unlabeled")

    def handles() -> int:  # this process's open descriptors of the cache file
        fds = Path("/proc/self/fd")
        return sum(1 for fd in fds.iterdir() if os.path.realpath(fd) == os.path.realpath(data.cache_path))

    before = handles()
    ds[0]
    ds[1 % len(ds)]
    assert handles() == before + 1  # opened once, on first use, and kept
    clone = pickle.loads(pickle.dumps(ds))  # a loader worker's copy carries no handle...
    assert handles() == before + 1
    assert torch.equal(clone[0]["image"], ds[0]["image"])  # ...and opens its own
    clone.close()
    ds.close()
    assert handles() == before
    loader = torch.utils.data.DataLoader(data.dataset(list(data.index)), batch_size=2, num_workers=2)
    assert sum(b["image"].shape[0] for b in loader) == len(data.index)


# ---------------------------------------------------------------- augmentation
def test_same_geometric_transform_on_image_and_mask():
    torch.manual_seed(0)
    mask = (torch.rand(16, 16) > 0.5).long()
    image = torch.stack([mask.float(), torch.arange(256.0).view(16, 16), -mask.float()])
    seen = set()
    for _ in range(40):
        img, m = augment.geometric(image, mask)
        assert torch.equal(img[0], m.float()) and torch.equal(img[2], -m.float())
        seen.add(tuple(img[1].flatten()[:3].tolist()))
    assert len(seen) == 8  # the 8 symmetries of the square all occur
    jit = augment.intensity(image, 0.2)
    assert jit.shape == image.shape and not torch.equal(jit, image)
    assert torch.equal(augment.intensity(image, 0.0), image)
