"""Bad input, tried as a hostile user would: every case must end in one clean error naming the
key, file or value (exit code 2, one ``error:`` line, no traceback) or be accepted correctly.
Each case counts in the shared tally (tests/tally.py) that tests/test_zz_tally.py prints."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffseg import cli, config
from diffseg.data import sources
from diffseg.errors import ConfigError, DiffsegError

from tally import TALLY, accepted, attempt, refused


# ---------------------------------------------------------------------- config values and files
CONFIG_CASES = [
    ("train.lr=.nan", "train.lr.*finite"),
    ("train.lr=.inf", "train.lr.*finite"),
    ("diffusion_cps.loss.cps=-.inf", "diffusion_cps.loss.cps.*finite"),
    ("data.spacing=[1,.nan,1]", "data.spacing.*finite"),
    ("train.lr=0", "train.lr.*> 0"),
    ("data.val_ratio=0", "data.val_ratio.*empty validation"),
    ("data.val_ratio=1", "data.val_ratio"),
    ("train.epochs=0", "train.epochs.*>= 1"),
    ("data.intensity_jitter=5", "data.intensity_jitter"),
    ("data.patch=[96,96]", "data.patch"),
    ("data.foreground_prob=2", "data.foreground_prob"),
    ("model.depth=0", "model.depth"),
    ("data.size=50", "data.size.*divisible"),
    ("method=unet", "method"),
    ("data.labeled_ratio=-0.1", "data.labeled_ratio"),
    ("diffusion_cps.diffusion.start_t=5000", "diffusion_cps.diffusion.start_t"),
    ("diffusion_cps.rounds=two", "diffusion_cps.rounds.*int"),
    ("rounds=2", "rounds.*no longer a config key.*diffusion_cps.rounds"),
    ("no.such.key=1", "unknown config key"),
    ("device=cpu", "--device"),  # moved to the command line
]


@pytest.mark.parametrize("override,expect", CONFIG_CASES)
def test_bad_config_value_is_one_clean_error(override, expect, capsys):
    attempt(["data", "info", "synthetic", "--set", override], capsys, expect)


@pytest.mark.parametrize("text,expect", [
    ("", "is empty"),
    ("# only a comment\n", "is empty"),
    ("train:\n  lr: 0.1\ntrain:\n  epochs: 3\n", "appears twice"),
    ("train:\n  lr: 0.1\n  lr: 0.2\n", "'lr' appears twice"),
    ("- a\n- b\n", "must be a mapping"),
    ("train: [1, 2\n", "not valid YAML"),
    (b"name: caf\xe9\n", "not UTF-8"),
])
def test_bad_config_file_is_one_clean_error(text, expect, tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    line = attempt(["data", "info", "synthetic", "--config", str(path)], capsys, expect)
    assert str(path) in line


def test_bad_devices_are_refused_before_any_work(capsys):
    cases = [("tpu", "not a device|only auto"), ("cuda:99" if torch.cuda.is_available() else "cuda", "CUDA GPU")]
    for device, expect in cases:
        attempt(["debug", "--device", device, "--set", "train.epochs=1"], capsys, expect)


# ---------------------------------------------------------------------- dataset folders
def image(path: Path, mode: str = "RGB", size=(24, 20), value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "I;16":
        Image.fromarray(np.full(size[::-1], value, np.uint16)).save(path)
    else:
        Image.new(mode, size, value if mode == "L" else (value, value // 2, 20)).save(path)


def mask(path: Path, size=(24, 20)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros(size[::-1], np.uint8)
    arr[5:12, 6:15] = 255
    Image.fromarray(arr).save(path)


def folder(root: Path, n: int = 6, first_mode: str = "RGB") -> Path:
    for i in range(n):
        image(root / "images" / f"im{i}.png", first_mode if i == 0 else "RGB")
        mask(root / "masks" / f"im{i}.png")
    return root


def info(root: Path, capsys, expect: str) -> str:
    return attempt(["data", "info", "folder", "--data-root", str(root), "--cache-dir", str(root / "cache")],
                   capsys, expect)


def test_splits_csv_unknown_split_missing_file_conflicts_and_encoding(tmp_path, capsys):
    root = folder(tmp_path / "a")
    rows = "\n".join(f"im{i}.png,{'test' if i < 2 else 'train'}" for i in range(6))
    (root / "splits.csv").write_text("name,split\n" + rows.replace("im5.png,train", "im5.png,validation"))
    assert "line 7" in info(root, capsys, "'validation'")
    (root / "splits.csv").write_text("name,split\n" + rows + "\nim9.png,train\n")
    info(root, capsys, "not found in the images folder: im9")
    (root / "splits.csv").write_text("name,split\n" + rows + "\nim3,test\n")
    info(root, capsys, "lines 5 and 8.*im3.*both")
    (root / "splits.csv").write_bytes(b"name,split\nim\xff0.png,train\n")
    info(root, capsys, "not UTF-8")


def test_two_files_with_one_stem_and_a_corrupt_first_image(tmp_path, capsys):
    root = folder(tmp_path / "b")
    image(root / "images" / "im1.jpg")
    info(root, capsys, "two files with the name 'im1'.*im1.jpg.*im1.png|im1.png.*im1.jpg")
    root = folder(tmp_path / "c")
    (root / "images" / "im0.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    info(root, capsys, "cannot read image file .*im0.png")


def test_decompression_bomb_is_named(tmp_path, capsys, monkeypatch):
    root = folder(tmp_path / "d")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 480 pixels > 2 x the limit: PIL refuses
    info(root, capsys, "too large to read safely")


def test_hidden_files_mixed_channels_and_16_bit_are_accepted_correctly(tmp_path):
    root = folder(tmp_path / "e", first_mode="L")  # a grayscale first image, RGB after it
    (root / "images" / "._im0.png").write_bytes(b"macOS resource fork, not an image")
    image(root / "images" / "deep.png", "I;16", value=32896)  # 16 bit: 32896 / 65535 * 255 = 128
    mask(root / "masks" / "deep.png")
    cfg = config.load("debug", {"data.dataset": "folder"})
    src = sources.open_source(cfg.data, root)
    assert src.channels == 3, "every image decides the channel count"
    assert "._im0" not in src.names("train") + src.names("test")
    deep = next(it for it in src.items if it.name == "deep")
    img, _, _ = src.read(deep)
    assert img.shape == (20, 24, 3) and int(img[0, 0, 0]) == 128
    accepted(3)


STUDY_CASES = [
    ({"data.size": {"choice": [32, 96]}, "model.depth": {"int": [2, 6]}}, "combination.*data.size"),
    ({"diffusion_cps.rounds": {"int": [1, 2]}, "diffusion_cps.round_mode": {"choice": ["chained"], "when": {"diffusion_cps.rounds": {"min": 3}}}},
     "can never hold"),
    ({"diffusion_cps.rounds": {"choice": [1, 2]}, "diffusion_cps.loss.rec": {"float": [0.1, 1.0], "when": {"diffusion_cps.rounds": [5]}}}, "can never hold"),
    ({"data.dataset": {"choice": ["synthetic", "nosuch"]}}, "data.dataset.*nosuch"),
    ({"train.lr": {"float": [0.001, 0.01]}, "method": {"choice": ["supervised", "unet"]}}, "method.*unet"),
]


@pytest.mark.parametrize("space,expect", STUDY_CASES)
def test_invalid_study_space_is_refused_before_the_folder_exists(space, expect, tmp_path):
    import yaml

    from tune.study import load_study

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"config": "debug", "space": space, "trials": 2}, sort_keys=False))
    refused(lambda: load_study(str(path)), ConfigError, expect)


def test_objective_no_trial_reports_is_refused(tmp_path):
    import yaml

    from tune.study import load_study

    for metric in ("val_dicee", "val_dice_ema", "dice"):  # ema is Mean Teacher's, not the paper method's
        path = tmp_path / "s.yaml"
        path.write_text(yaml.safe_dump({"config": "debug", "space": {"diffusion_cps.rounds": {"int": [1, 2]}},
                                        "objective": {"metric": metric}}))
        refused(lambda: load_study(str(path)), ConfigError, f"'{metric}' is not one a trial reports")
    path.write_text(yaml.safe_dump({"config": "debug", "space": {"diffusion_cps.rounds": {"int": [1, 2]}},
                                    "objective": {"metric": "val_dice_student"}}))
    assert load_study(str(path)).metric == "val_dice_student"


def test_config_override_errors_name_the_key():
    for override, _ in CONFIG_CASES[:12]:
        key = override.split("=")[0]
        with pytest.raises(ConfigError, match=re.escape(key)):
            config.load("debug", [override])
