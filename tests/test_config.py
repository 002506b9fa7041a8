import pytest

from diffseg import config
from diffseg.errors import ConfigError


def test_shipped_configs_load_and_are_typed():
    for name in ("debug", "glas", "ph2", "drive", "hmeps", "la"):
        cfg = config.load(name)
        assert cfg.data.dataset in ("synthetic", name)
    glas = config.load("glas")
    assert (glas.diffusion.steps, glas.diffusion.schedule, glas.train.lr, glas.pretrain.lr) == (1000, "sigmoid", 0.01, 0.001)


def test_dotted_overrides_are_typed():
    cfg = config.load("debug", ["loss.cps=0.5", "data.labeled_ratio=0.1", "rounds=5", "data.augment=false"])
    assert cfg.loss.cps == 0.5 and cfg.data.labeled_ratio == 0.1 and cfg.rounds == 5 and cfg.data.augment is False
    assert isinstance(config.load(None, {"loss.cps": 1}).loss.cps, float)  # int accepted for a float


def test_config_is_frozen():
    cfg = config.load("debug")
    with pytest.raises(Exception):
        cfg.rounds = 4


def test_unknown_key_names_it_and_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"'loss\.cpss'.*valid keys in loss: cps, align, rec, unlabeled"):
        config.load("debug", ["loss.cpss=1"])
    with pytest.raises(ConfigError, match=r"'bogus'.*valid keys in <top level>"):
        config.load("debug", {"bogus": 1})


@pytest.mark.parametrize("override, pattern", [
    ("rounds=three", r"'rounds' expects int"),
    ("round_mode=sideways", r"'round_mode'.*independent, chained"),
    ("diffusion.schedule=cubic", r"sigmoid, linear, cosine"),
    ("data.labeled_ratio=1.5", r"data.labeled_ratio"),
    ("diffusion.start_t=5000", r"diffusion.start_t"),
    ("loss=1", r"'loss' is a section"),
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
    cfg = config.load("glas", ["rounds=5"])
    config.save(cfg, tmp_path / "c.yaml")
    assert config.load(tmp_path / "c.yaml") == cfg
