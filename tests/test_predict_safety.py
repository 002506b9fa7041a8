"""`diffseg predict` never destroys data: not its input folder, not a dataset's ground truth, not
existing files without --overwrite, not one input's mask by another's of the same stem. Each
refusal is one line (exit 2) before any mask is computed, and the inputs are unchanged."""
import hashlib

import numpy as np
import pytest
from PIL import Image

import tally
from diffseg import cli


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("predict") / "run"
    sets = ["method=supervised", "data.size=32", "model.width=4", "model.depth=2", "train.epochs=1",
            "train.iters_per_epoch=1", "data.synthetic_count=12"]
    assert cli.main(["debug", "--run-dir", str(folder), "--set", *sets]) == 0
    return folder


def images(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(folder / name)
    return folder


def test_predict_refuses_what_would_destroy_data_and_changes_nothing(run, tmp_path, capsys):
    inputs = images(tmp_path / "in", "a.png", "b.png")
    before = digest(inputs)
    dataset = tmp_path / "ds"
    images(dataset / "images", "a.png")
    images(dataset / "masks", "a.png")
    truth = digest(dataset)
    (tmp_path / "file").write_text("x")
    cases = [(inputs, "is the input folder or holds an input"),
             (tmp_path, "is the input folder or holds an input"),
             (dataset / "masks", "ground-truth folder"),
             (tmp_path / "file", "is a file")]
    for output, message in cases:
        tally.attempt(["predict", str(run), "--input", str(inputs), "--output", str(output)], capsys, message,
                      keep=(inputs, dataset, tmp_path / "file"))
    assert digest(inputs) == before and digest(dataset) == truth and (tmp_path / "file").read_text() == "x"
    dup = images(tmp_path / "dup", "dup.png", "dup.jpg")
    tally.attempt(["predict", str(run), "--input", str(dup), "--output", str(tmp_path / "o_dup")], capsys,
                  "dup.jpg and dup.png would both write dup.png", keep=(dup,))
    assert not (tmp_path / "o_dup").exists()


def test_predict_replaces_existing_masks_only_with_overwrite(run, tmp_path, capsys):
    inputs = images(tmp_path / "in", "a.png", "b.png")
    out = tmp_path / "out"
    assert cli.main(["predict", str(run), "--input", str(inputs), "--output", str(out)]) == 0
    first = digest(out)
    (out / "a.png").write_bytes(b"another run's mask")
    tally.attempt(["predict", str(run), "--input", str(inputs), "--output", str(out)], capsys,
                  "already holds 2 of the files.*--overwrite", keep=(inputs, out))
    assert (out / "a.png").read_bytes() == b"another run's mask"
    assert cli.main(["predict", str(run), "--input", str(inputs), "--output", str(out), "--overwrite"]) == 0
    assert digest(out) == first


def test_an_image_declaring_too_many_pixels_is_refused_from_its_header(run, tmp_path, capsys):
    from diffseg.data import images as images_mod

    inputs = images(tmp_path / "in", "a.png")
    Image.new("1", (9000, 9000)).save(inputs / "huge.png")  # 81 Mi pixels in a few kB
    assert (inputs / "huge.png").stat().st_size < 2_000_000
    tally.attempt(["predict", str(run), "--input", str(inputs), "--output", str(tmp_path / "out")], capsys,
                  f"declares 9000x9000 pixels.*{images_mod.MAX_PIXELS // 2**20} Mi", keep=(inputs,))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # not one mask written


def test_threshold_overrides_the_kept_one(run, tmp_path, capsys):
    inputs = images(tmp_path / "in", "a.png")
    for t, name in ((0.0, "all"), (0.9999, "none")):
        assert cli.main(["predict", str(run), "--input", str(inputs), "--output", str(tmp_path / name),
                         "--threshold", str(t)]) == 0
    assert (np.array(Image.open(tmp_path / "all" / "a.png")) == 255).all()  # softmax > 0 everywhere
    tally.attempt(["predict", str(run), "--input", str(inputs), "--output", str(tmp_path / "x"),
                   "--threshold", "1.5"], capsys, "--threshold 1.5", keep=(inputs,))
