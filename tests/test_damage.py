"""Damaged state and divergence on real (tiny) runs: a damaged checkpoint falls back to the one
before it, a torn metrics line is tolerated and repaired, a run folder without its config is
refused, interrupted writes leave nothing behind, and a diverged run is a recorded result."""
from __future__ import annotations

import json
from pathlib import Path

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


# ---------------------------------------------------------------- Tune state: the seal of resume
def _tune_state(study_dir: Path) -> dict[str, bytes]:
    import pickle

    tune_dir = study_dir / "tune"
    tune_dir.mkdir(parents=True)
    files = {"tuner.pkl": pickle.dumps({"trainable": "run_trial", "n": list(range(50))}),
             "searcher-state-1.pkl": pickle.dumps({"trials": {"a": 1}}),
             "experiment_state-1.json": json.dumps({"trial_data": [1, 2, 3]}).encode(),
             "search_gen_state-1.json": pickle.dumps({"counter": 3})}  # Tune's: a pickle named .json
    for name, data in files.items():
        (tune_dir / name).write_bytes(data)
    return files


def test_sealed_tune_state_resumes_and_a_changed_one_is_put_back(tmp_path, monkeypatch):
    from tune import seal

    monkeypatch.setenv("DIFFSEG_STUDY_KEY", str(tmp_path / "key"))
    study = tmp_path / "study"
    files = _tune_state(study)
    assert seal.seal(study)
    assert (tmp_path / "key").stat().st_mode & 0o777 == 0o600
    said = []
    seal.verify(study, say=said.append)
    assert said == []  # as sealed: nothing to say
    # damaged (truncated by a crash) and one file planted: the sealed state comes back
    (study / "tune" / "tuner.pkl").write_bytes(files["tuner.pkl"][:20])
    (study / "tune" / "evil.pkl").write_bytes(b"cos\nsystem\n(S'true'\ntR.")
    seal.verify(study, say=said.append)
    assert "tune/evil.pkl" in said[0] and "tune/tuner.pkl" in said[0] and "sealed copy" in said[0]
    assert (study / "tune" / "tuner.pkl").read_bytes() == files["tuner.pkl"]
    assert not (study / "tune" / "evil.pkl").exists()


def test_unsealed_or_foreign_tune_state_is_refused_unless_trusted(tmp_path, monkeypatch):
    from tune import seal

    monkeypatch.setenv("DIFFSEG_STUDY_KEY", str(tmp_path / "key"))
    study = tmp_path / "study"
    _tune_state(study)
    with pytest.raises(ConfigError, match=r"no seal.*--trust"):
        seal.verify(study)
    said = []
    seal.verify(study, trust=True, say=said.append)
    assert "--trust" in said[0]
    seal.verify(study)  # sealed by the trusted resume
    monkeypatch.setenv("DIFFSEG_STUDY_KEY", str(tmp_path / "other-key"))  # another installation
    with pytest.raises(ConfigError, match=r"does not verify with this installation's key.*other-key"):
        seal.verify(study)


def test_a_half_copied_state_file_is_not_sealed_and_the_staging_save_wins(tmp_path, monkeypatch):
    from tune import seal

    monkeypatch.setenv("DIFFSEG_STUDY_KEY", str(tmp_path / "key"))
    study = tmp_path / "study"
    files = _tune_state(study)
    for name in ("searcher-state-1.pkl", "experiment_state-1.json", "search_gen_state-1.json"):
        (study / "tune" / name).write_bytes(files[name][:-1])  # being copied in: not whole
    assert seal.seal(study)
    assert sorted(seal.read_seal(study)) == ["tuner.pkl"]
    # Tune's staging folder holds the whole save: sealed over the half-copied files
    staging = tmp_path / "staging"
    staging.mkdir()
    for name in ("searcher-state-1.pkl", "experiment_state-1.json", "search_gen_state-1.json"):
        (staging / name).write_bytes(files[name])
    assert seal.seal(study, staging) and len(seal.read_seal(study)) == 4
    said = []
    assert seal.verify(study, say=said.append)  # the half copies are put back whole
    assert all((study / "tune" / n).read_bytes() == data for n, data in files.items()), said


def test_a_study_killed_before_tune_saved_its_trials_starts_anew_without_unpickling(tmp_path, monkeypatch):
    from tune import seal

    monkeypatch.setenv("DIFFSEG_STUDY_KEY", str(tmp_path / "key"))
    study = tmp_path / "study"
    (study / "tune").mkdir(parents=True)
    (study / "tune" / "tuner.pkl").write_bytes(b"not even a pickle")  # never read
    assert seal.verify(study) is False
