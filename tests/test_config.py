import pickle

import pytest

from diffseg import config
from diffseg.errors import ConfigError


def test_shipped_configs_load_and_are_typed():
    for name in ("debug", "glas", "ph2", "drive", "hmeps", "la"):
        cfg = config.load(name)
        assert cfg.data.dataset in ("synthetic", name)
    glas = config.load("glas")
    d = glas.diffusion_cps.diffusion
    assert (d.steps, d.schedule, glas.train.lr, glas.pretrain.lr) == (1000, "sigmoid", 0.01, 0.001)


def test_a_config_file_inherits_its_base_and_overlays_its_own_keys(tmp_path):
    # the 2D dataset configs are the paper's settings (paper.yaml) with their own dataset
    assert config.to_dict(config.load("drive")) == config.to_dict(
        config.load("paper", {"name": "drive", "data.dataset": "drive"}))
    (tmp_path / "mine.yaml").write_text("base: glas\nname: mine\ntrain:\n  lr: 0.002\n")
    mine = config.load(tmp_path / "mine.yaml")
    assert (mine.name, mine.data.dataset, mine.train.lr, mine.train.epochs) == ("mine", "glas", 0.002, 200)
    (tmp_path / "loop.yaml").write_text(f"base: {tmp_path / 'loop.yaml'}\n")
    with pytest.raises(ConfigError, match="loop"):
        config.load(tmp_path / "loop.yaml")


def test_dotted_overrides_are_typed():
    cfg = config.load("debug", ["diffusion_cps.loss.cps=0.5", "data.labeled_ratio=0.1", "diffusion_cps.rounds=5",
                                "data.augment=false"])
    assert cfg.diffusion_cps.loss.cps == 0.5 and cfg.data.labeled_ratio == 0.1 and cfg.diffusion_cps.rounds == 5
    assert cfg.data.augment is False
    assert isinstance(config.load(None, {"diffusion_cps.loss.cps": 1}).diffusion_cps.loss.cps, float)


def test_config_is_frozen_and_pickles_as_data():
    cfg = config.load("debug")
    with pytest.raises(AttributeError):
        cfg.seed = 4
    assert pickle.loads(pickle.dumps(cfg)) == cfg


def test_unknown_key_names_it_the_closest_and_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"'diffusion_cps\.loss\.cpss' \(did you mean 'diffusion_cps\.loss\.cps'\?\)"
                                          r".*valid keys in diffusion_cps\.loss: cps, align, rec, unlabeled"):
        config.load("debug", ["diffusion_cps.loss.cpss=1"])
    with pytest.raises(ConfigError, match=r"'bogus'.*valid keys in <top level>"):
        config.load("debug", {"bogus": 1})


@pytest.mark.parametrize("old, new", [("rounds", "diffusion_cps.rounds"), ("round_mode", "diffusion_cps.round_mode"),
                                      ("loss.cps", "diffusion_cps.loss.cps"), ("loss.unlabeled", "diffusion_cps.loss.unlabeled"),
                                      ("diffusion.steps", "diffusion_cps.diffusion.steps"),
                                      ("model.student", "model.arch")])
def test_keys_a_method_now_owns_are_refused_with_their_new_name(old, new):
    with pytest.raises(ConfigError, match=rf"'{old}' is no longer a config key.*{new}"):
        config.load("debug", {old: 1})


@pytest.mark.parametrize("override, pattern", [
    ("diffusion_cps.rounds=three", r"'diffusion_cps.rounds' expects int"),
    ("diffusion_cps.round_mode=sideways", r"'diffusion_cps.round_mode'.*independent, chained"),
    ("diffusion_cps.diffusion.schedule=cubic", r"sigmoid, linear, cosine"),
    ("data.labeled_ratio=1.5", r"data.labeled_ratio"),
    ("diffusion_cps.diffusion.start_t=5000", r"diffusion_cps.diffusion.start_t"),
    ("loss=1", r"'loss' is a section"),
    ("model.arch=twin", r"'model.arch'.*unet, timm"),
    ("method=nope", r"'method' = 'nope'; choose one of diffusion_cps"),
    ("data.dataset=nope", r"'data.dataset' = 'nope'; choose one of glas"),
])
def test_bad_values_are_rejected(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        config.load("debug", [override])


def test_bad_yaml_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  sizee: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*'data\.sizee'"):
        config.load(bad)
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "missing.yaml")


def test_round_trip_through_yaml(tmp_path):
    cfg = config.load("glas", ["diffusion_cps.rounds=5"])
    config.save(cfg, tmp_path / "c.yaml")
    assert config.load(tmp_path / "c.yaml") == cfg
