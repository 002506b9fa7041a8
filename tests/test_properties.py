"""Property-based tests (hypothesis): generated config overrides, study files and dataset folders
are accepted correctly or end in one clean error (ConfigError / DataError), never another
exception, and nothing accepted breaks an invariant the rest of the code relies on."""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, event, example, given, settings, strategies as st
from PIL import Image

from diffseg import config
from diffseg.data import sources
from diffseg.errors import ConfigError, DataError

KEYS = sorted(config.to_flat(config.defaults()))
scalars = st.one_of(st.integers(-5, 10**6), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                    st.text(max_size=8), st.none())
values = st.one_of(scalars, st.lists(st.one_of(st.integers(-5, 200), st.floats()), max_size=4))


def check_invariants(cfg) -> None:
    flat = config.to_flat(cfg)
    for key, value in flat.items():
        for v in value if isinstance(value, tuple) else (value,):
            if isinstance(v, float):
                assert math.isfinite(v), key
    assert flat["train.epochs"] >= 1 and flat["train.lr"] > 0 and flat["pretrain.lr"] > 0
    assert 0 < flat["data.val_ratio"] < 1 or flat["protocol"] == "paper"
    assert flat["data.size"] % 2 ** flat["model.depth"] == 0
    assert 0 <= flat["data.intensity_jitter"] < 1 and 0 <= flat["data.foreground_prob"] <= 1
    assert -1 <= flat["diffusion_cps.diffusion.start_t"] < flat["diffusion_cps.diffusion.steps"] or flat["diffusion_cps.diffusion.start_t"] < -1


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(KEYS + ["nope", "train.nope", "device"]), values, max_size=4))
def test_config_overrides_are_accepted_correctly_or_refused_cleanly(overrides):
    try:
        cfg = config.load("debug", overrides)
    except ConfigError as exc:
        event("refused")
        assert str(exc)
        return
    event("accepted")
    check_invariants(cfg)
    assert config.from_dict(config.to_dict(cfg)) == cfg  # what is accepted round-trips


SPECS = st.one_of(
    st.fixed_dictionaries({"choice": st.lists(st.integers(1, 4), min_size=1, max_size=3)}),
    st.fixed_dictionaries({"float": st.tuples(st.floats(0.01, 1), st.floats(1.5, 3))}),
    st.fixed_dictionaries({"choice": st.lists(scalars, max_size=3)}),
    st.fixed_dictionaries({"int": st.lists(st.integers(-3, 9), max_size=3)}),
    st.fixed_dictionaries({"float": st.lists(st.floats(-1, 5), max_size=3)}, optional={"log": st.booleans()}),
    scalars,
)


@settings(max_examples=150, deadline=None)
@given(space=st.dictionaries(st.sampled_from(["diffusion_cps.rounds", "diffusion_cps.loss.cps", "train.lr", "model.depth", "data.size",
                                               "data.dataset", "method", "nope"]), SPECS, max_size=3),
       trials=st.one_of(st.integers(1, 5), st.integers(-2, 0), st.text(max_size=3)),
       metric=st.sampled_from(["val_dice", "val_dice", "test_dice", "bogus", ""]))
def test_study_files_are_accepted_correctly_or_refused_cleanly(space, trials, metric):
    from tune.study import parse_study

    data = {"config": "debug", "set": {"train.epochs": 2}, "space": space, "trials": trials,
            "objective": {"metric": metric, "mode": "max"}}
    try:
        study = parse_study(data, source="generated.yaml")
    except ConfigError as exc:
        event("refused")
        assert str(exc)
        return
    event("accepted")
    assert study.trials >= 1 and study.space


@st.composite
def folders(draw):
    n = draw(st.integers(1, 7))
    files = []
    for i in range(n):
        files.append({
            "mode": draw(st.sampled_from(["RGB"] * 6 + ["L"] * 3 + ["RGBA", "I;16", "P", "junk"])),
            "size": (draw(st.integers(4, 24)), draw(st.integers(4, 24))),
            "mask": draw(st.sampled_from(["0/255"] * 12 + ["0/1", "grey", "none", "other size"])),
            "ext": draw(st.sampled_from([".png", ".bmp"])),
        })
    csv = draw(st.one_of(st.none(), st.none(), st.none(), st.lists(st.tuples(st.integers(0, n + 1),
                                                       st.sampled_from(["train", "test", "testA", "val", ""])),
                                             max_size=n + 2)))
    return files, csv


def write_folder(root: Path, files, csv) -> None:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, f in enumerate(files):
        w, h = f["size"]
        path = root / "images" / f"im{i}{f['ext']}"
        if f["mode"] == "junk":
            path.write_bytes(b"not an image")
        elif f["mode"] == "I;16":
            Image.fromarray(np.full((h, w), 40000, np.uint16)).save(path.with_suffix(".png"))
        else:
            Image.new(f["mode"], (w, h)).save(path)
        if f["mask"] == "none":
            continue
        mh, mw = (h + 1, w) if f["mask"] == "other size" else (h, w)
        m = np.zeros((mh, mw), np.uint8)
        m[: mh // 2] = {"0/255": 255, "0/1": 1, "grey": 77, "other size": 255}[f["mask"]]
        Image.fromarray(m).save(root / "masks" / f"im{i}.png")
    if csv is not None:
        (root / "splits.csv").write_text("name,split\n" + "\n".join(f"im{i},{s}" for i, s in csv))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(folders())
@example(([{"mode": "P", "size": (4, 4), "mask": "0/255", "ext": ".bmp"},  # found by hypothesis: a grey
           {"mode": "L", "size": (4, 4), "mask": "0/255", "ext": ".png"},  # palette BMP opens as L
           {"mode": "L", "size": (4, 4), "mask": "0/255", "ext": ".png"}], None))
def test_dataset_folders_are_accepted_correctly_or_refused_cleanly(spec):
    from diffseg.data import prepare

    files, csv = spec
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "folder"
        write_folder(root, files, csv)
        cfg = config.load("debug", {"data.dataset": "folder", "data.size": 16, "model.depth": 2,
                                    "data.val_ratio": 0.3})
        try:
            data = prepare(cfg.data, progress=False, root=root, cache_dir=Path(tmp) / "cache")
        except (DataError, ConfigError) as exc:
            event("refused: " + str(exc).split(":")[0][-30:])
            assert str(exc)
            return
        event("accepted")
        # accepted: every listed image is in the cache with a binary mask of its own size
        src = data.source
        for item in src.items:
            image, mask, _ = src.read(item)
            assert image.shape[:2] == mask.shape and set(np.unique(mask).tolist()) <= {0, 1}
            assert image.shape[2] == src.channels
        # grayscale exactly when every image file opens grayscale (a palette BMP of greys opens as L)
        gray = all(Image.open(it.image).mode in sources.GRAY_MODES for it in src.items)
        assert src.channels == (1 if gray else 3)
        assert data.splits.test and data.splits.labeled
        assert isinstance(sources.open_source(cfg.data, root), sources.Source)
