"""Received and finished run folders are refused as one line (exit 2), never re-scored in place
nor read half-right: a finished run, a --run-dir below a file, a torn or stale splits.json,
--pretrained of another network; Ctrl-C exits 130 saying how to go on."""
import json
import re
import signal
import subprocess
import sys
import time

import pytest

import tally
from diffseg import cli

TINY = ["data.size=32", "model.width=4", "model.depth=2", "pretrain.epochs=1", "pretrain.iters_per_epoch=1",
        "train.epochs=1", "train.iters_per_epoch=1", "data.synthetic_count=12"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("refusals") / "run"
    assert cli.main(["debug", "--run-dir", str(folder), "--set", *TINY]) == 0
    return folder


def refused(argv, capsys, message, keep=()):
    tally.attempt(argv, capsys, re.escape(message), keep)


def test_a_finished_run_is_final_and_a_run_dir_below_a_file_is_refused(run, tmp_path, capsys):
    refused(["debug", "--run-dir", str(run), "--set", *TINY], capsys, "holds a finished run", keep=(run,))
    refused(["debug", "--run-dir", str(run), "--data-root", str(tmp_path), "--set", *TINY], capsys, "are final",
            keep=(run,))
    (tmp_path / "f").write_text("x")
    refused(["debug", "--run-dir", str(tmp_path / "f"), "--set", *TINY], capsys, "is a file, not a folder")
    refused(["debug", "--run-dir", str(tmp_path / "f" / "run"), "--set", *TINY], capsys, "is a file, not a folder")


def test_torn_or_stale_splits_and_pretrained_of_another_width_are_one_line(run, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    (copy / ".lock").unlink(missing_ok=True)
    (copy / "splits.json").write_text('{"labeled": ["a"')
    refused(["eval", str(copy)], capsys, "splits.json is damaged")
    splits = json.loads((run / "splits.json").read_text())
    (copy / "splits.json").write_text(json.dumps(splits | {"test": splits["test"] + ["gone_image"]}))
    refused(["eval", str(copy)], capsys, "names 1 item(s) the data under")
    wider = [s for s in TINY if not s.startswith("model.width")] + ["model.width=8"]
    refused(["train", "--config", "debug", "--run-dir", str(tmp_path / "w8"), "--pretrained",
             str(run / "pretrained.pt"), "--set", *wider], capsys, "model.width 4 there, 8 here")


def test_ctrl_c_exits_130_saying_how_to_resume(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "diffseg", "debug", "--run-dir", str(tmp_path / "run"),
                             "--set", "data.size=32", "model.width=4", "model.depth=2", "pretrain.epochs=500"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (tmp_path / "run" / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err and "run the same command to resume" in err
    assert "Traceback" not in err


def test_a_stored_config_is_loaded_as_it_ran_or_refused_naming_the_key():
    from diffseg import config
    from diffseg.errors import ConfigError

    cfg = config.load("debug")  # the paper's method
    stored = config.to_dict(cfg)
    del stored["diffusion_cps"]["diffusion"]["start_t"]
    tally.refused(lambda: config.from_stored(stored, "best.pt"), ConfigError,
                  r"best.pt: the stored config lacks diffusion_cps.diffusion.start_t")
    older = config.to_dict(cfg)
    del older["data"]["labeled_draw"], older["train"]["schedule"], older["cps"]  # cps: another method's section
    notes = []
    assert config.from_stored(older, "config.yaml", notes.append) == cfg
    assert notes and "data.labeled_draw='hashed'" in notes[0] and "train.schedule='halving'" in notes[0]
    assert "cps." not in notes[0]


def test_eval_finds_the_data_the_run_was_trained_on_and_names_the_option_when_it_moved(shared_data, tmp_path, capsys):
    root = tmp_path / "data"
    root.mkdir()
    (root / "glas").symlink_to(shared_data / "glas")  # a data root of the user's own (linked, not copied)
    run = tmp_path / "run"
    sets = ["method=supervised", "data.size=32", "model.width=4", "model.depth=2", "train.epochs=1",
            "train.iters_per_epoch=1"]
    assert cli.main(["debug", "--dataset", "glas", "--data-root", str(root), "--cache-dir", str(tmp_path / "c"),
                     "--run-dir", str(run), "--set", *sets]) == 0
    capsys.readouterr()
    assert cli.main(["eval", str(run), "--cache-dir", str(tmp_path / "c")]) == 0
    out = capsys.readouterr()
    assert f"data root: {root.resolve()} (the one {run} was trained on" in out.err
    assert json.loads(out.out)["n"] == 80
    root.rename(tmp_path / "moved")
    refused(["eval", str(run)], capsys, "which is not there now: give --data-root")


def test_la_split_lists_get_the_checks_splits_csv_has(shared_data, tmp_path):
    from diffseg import config
    from diffseg.data import sources
    from diffseg.errors import DataError

    cases = (shared_data / "la" / "train.list").read_text().split()[:2]
    test = (shared_data / "la" / "test.list").read_text().split()[:1]
    root = tmp_path / "la"
    root.mkdir()
    for case in cases + test:
        (root / case).symlink_to(shared_data / "la" / case)  # linked, never copied
    cfg = config.load("debug3d").data
    for train_list, test_list, message in [
            (cases + test, test, f"LA case '{test[0]}' is listed in both"),
            (cases + cases[:1], test, "is listed twice in"),
            (cases + ["../la/" + cases[0]], test, "a case is a folder name inside")]:
        (root / "train.list").write_text("\n".join(train_list))
        (root / "test.list").write_text("\n".join(test_list))
        tally.refused(lambda: sources.open_source(cfg, tmp_path), DataError, re.escape(message))
    (root / "train.list").write_text("\n".join(cases))
    assert len(sources.open_source(cfg, tmp_path).items) == 3
