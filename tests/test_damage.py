"""Damaged state and divergence on real (tiny) runs: a damaged checkpoint falls back to the one
before it, a torn metrics line is tolerated and repaired, a run folder without its config is
refused, interrupted writes leave nothing behind, and a diverged run is a recorded result."""
from __future__ import annotations

import json

import pytest

from diffseg import checkpoint, cli, config
from diffseg.errors import ConfigError, DataError, Diverged
from diffseg.loop import fit
from diffseg.rundir import RunDir, read_jsonl
from diffseg.runtime import local


def tiny_run(tiny_cfg, folder, **changes):
    cfg = config.apply_overrides(tiny_cfg, changes)
    return fit(cfg, folder, local("cpu"), log=lambda m: None), cfg


def test_damaged_last_checkpoint_resumes_from_the_one_before_with_the_same_result(tiny_cfg, tmp_path):
    done, cfg = tiny_run(tiny_cfg, tmp_path / "a")
    rd = RunDir(tmp_path / "a")
    prev = checkpoint.previous(rd.last)
    assert prev.exists() and rd.last.exists()
    data = rd.last.read_bytes()
    rd.last.write_bytes(data[: len(data) // 3])  # truncated, as by a disk error or a bad copy
    messages = []
    again = fit(cfg, tmp_path / "a", local("cpu"), log=messages.append)
    assert any("resuming from the checkpoint before it" in m for m in messages)
    assert again["test"]["dice"] == pytest.approx(done["test"]["dice"], abs=1e-9)
    rd.last.write_bytes(b"")  # zero bytes, and the one before damaged too: an error naming both
    prev.write_bytes(b"junk")
    with pytest.raises(DataError, match=r"last\.pt.*last\.prev\.pt"):
        fit(cfg, tmp_path / "a", local("cpu"), log=lambda m: None)


def test_torn_metrics_line_is_tolerated_and_repaired_on_resume(tiny_cfg, tmp_path):
    _, cfg = tiny_run(tiny_cfg, tmp_path / "b")
    log = tmp_path / "b" / "metrics.jsonl"
    whole = read_jsonl(log)
    with open(log, "a") as fh:
        fh.write('{"stage": "train", "epo')  # a kill in the middle of an append
    assert read_jsonl(log) == whole
    fit(cfg, tmp_path / "b", local("cpu"), log=lambda m: None)  # resume rewrites the file
    assert all(line.endswith("}") for line in log.read_text().splitlines())
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:1] + ["{damaged"] + lines[1:]) + "\n")
    with pytest.raises(ConfigError, match="line 2 is not JSON"):
        read_jsonl(log)


def test_run_folder_without_its_config_is_refused_and_stale_temporaries_removed(tiny_cfg, tmp_path):
    _, cfg = tiny_run(tiny_cfg, tmp_path / "c")
    stale = tmp_path / "c" / "checkpoints" / ".last.pt.0badf00d.tmp"
    stale.write_bytes(b"half a checkpoint")
    fit(cfg, tmp_path / "c", local("cpu"), log=lambda m: None)
    assert not stale.exists()
    (tmp_path / "c" / "config.yaml").unlink()
    with pytest.raises(ConfigError, match="no config.yaml"):
        fit(cfg, tmp_path / "c", local("cpu"), log=lambda m: None)


@pytest.mark.parametrize("key", ["train.lr", "pretrain.lr"])
def test_divergence_is_a_recorded_result_naming_the_key(key, tiny_cfg, tmp_path, capsys):
    cfg = config.apply_overrides(tiny_cfg, {key: 1e4, "train.epochs": 3, "pretrain.epochs": 2})
    with pytest.raises(Diverged) as info:
        fit(cfg, tmp_path / "d", local("cpu"), log=lambda m: None)
    assert info.value.key == key and key in str(info.value)
    summary = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert summary["status"] == "diverged" and key in summary["reason"] and summary["test"] == {}
    # the command line says it in one line and exits 3, not with a traceback or 0
    code = cli.main(["debug", "--run-dir", str(tmp_path / "e"), "--set", f"{key}=1e4", "train.epochs=3",
                     "pretrain.epochs=2", "data.size=32", "model.width=4", "model.depth=2", "data.synthetic_count=16",
                     "train.iters_per_epoch=2", "pretrain.iters_per_epoch=2"])
    err = capsys.readouterr().err
    assert code == 3 and err.startswith("diverged: ") and key in err and "Traceback" not in err


def test_config_name_cannot_leave_the_runs_folder():
    for name in ("../escape", "a/b", "/abs", "", ".hidden"):
        with pytest.raises(ConfigError, match="config key 'name'"):
            config.load("debug", {"name": name})


def test_silent_corruption_inside_the_data_cache_is_named(tiny_cfg, tmp_path):
    import h5py

    from diffseg.data import prepare
    from diffseg.data.cache import open_cache, original, read_item

    data = prepare(tiny_cfg.data, progress=False, cache_dir=tmp_path)
    with open_cache(data.cache_path) as fh:
        for i in range(len(fh["names"])):  # intact: every item and original mask verifies
            read_item(fh, i)
            original(fh, "orig_masks", i)
    with h5py.File(data.cache_path, "r+") as fh:  # one pixel of one image flipped, as a bad disk would
        fh["images"][3, 0, 0, 0] = (int(fh["images"][3, 0, 0, 0]) + 1) % 256
        fh["orig_masks"][5] = 1 - int(fh["orig_masks"][5])
    ds = data.dataset(list(data.index)[3:4])
    with pytest.raises(DataError, match=r"cache .* is damaged: item 'syn0003'.*delete the file"):
        ds[0]
    with open_cache(data.cache_path) as fh, pytest.raises(DataError, match="orig_masks"):
        original(fh, "orig_masks", 0)
