"""The driver under a study of hundreds of tiny trials: what a trial costs outside its training,
and what grows as the study does (issue 23).

    python -m experiments.study_load --trials 300 --output experiments/results/study_load_cpu.json

Runs one real study (`tune search`, in this process, on a local Ray instance) of TRIALS trials of
the supervised method on 16 generated 32 px images, one epoch of one iteration each, so a trial is
almost nothing but its overhead. Measured in the same run:

- the time per trial outside training: the study's wall time x concurrency / trials, minus a
  trial's own epoch time (its ``metrics.jsonl``), and how that changes from the first tenth of
  the trials to the last (a cost that grows with the study shows here);
- each seal of Tune's state (``tune/seal.py``, once per save): its seconds against the size of
  the state it sealed;
- each ask of the searcher (Optuna's TPE), first tenth against last;
- the Optuna journal's size, and the report's build time (``tune report``) at the end.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

from diffseg.cli import check_folders, refuse_existing
from diffseg.errors import DiffsegError

TINY = {"method": "supervised", "data.size": 32, "data.synthetic_count": 16, "model.width": 4, "model.depth": 2,
        "train.epochs": 1, "train.iters_per_epoch": 1, "train.batch_size": 4, "eval.max_items": 4}


def tenths(values: list[float]) -> tuple[float, float]:
    """Mean of the first and of the last tenth (at least one value each)."""
    k = max(1, len(values) // 10)
    return statistics.mean(values[:k]), statistics.mean(values[-k:])


def measure(trials: int, concurrency: int, folder: Path) -> dict:
    from tune import driver, report, seal, searcher

    seals, asks = [], []
    real_seal, real_suggest = seal.seal, searcher.StudySearch.suggest

    def timed_seal(study_dir, staging=None, secret=None):
        t0 = time.perf_counter()
        out = real_seal(study_dir, staging, secret)
        size = sum(p.stat().st_size for p in seal.state_files_in(staging or Path(study_dir) / "tune").values()
                   if p.name.startswith("experiment_state"))
        seals.append((size, time.perf_counter() - t0))
        return out

    def timed_suggest(self, trial_id):
        t0 = time.perf_counter()
        out = real_suggest(self, trial_id)
        asks.append(time.perf_counter() - t0)
        return out

    study_file = folder / "load.yaml"
    study_file.write_text(yaml.safe_dump({
        "config": "debug", "set": TINY, "space": {"train.lr": {"float": [0.001, 0.1], "log": True}},
        "trials": trials, "concurrency": concurrency, "searcher": {"type": "tpe", "seed": 0},
        "scheduler": {"type": "none"}}, sort_keys=False))
    seal.seal, searcher.StudySearch.suggest = timed_seal, timed_suggest
    try:
        t0 = time.time()
        study_dir = driver.search(str(study_file), storage=str(folder / "studies"), name="load")
        wall = time.time() - t0
    finally:
        seal.seal, searcher.StudySearch.suggest = real_seal, real_suggest
    t0 = time.perf_counter()
    report.write(study_dir)
    report_s = time.perf_counter() - t0

    # trials in the order they ended, with their own training time
    ended = []
    for run in (study_dir / "trials").glob("*"):
        summary = run / "summary.json"
        if summary.exists():
            epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
            ended.append((summary.stat().st_mtime, sum(r.get("seconds", 0) for r in epochs if r.get("stage") == "train")))
    ended.sort()
    gaps = [b[0] - a[0] for a, b in zip(ended, ended[1:])]  # seconds between two trials ending
    train_s = statistics.mean(s for _, s in ended)
    first_gap, last_gap = tenths(gaps)
    first_seal, last_seal = tenths([s for _, s in seals])
    first_ask, last_ask = tenths(asks)
    journal = study_dir / "optuna.journal"
    return {
        "trials": trials, "concurrency": concurrency, "finished": len(ended), "wall_s": round(wall, 1),
        "per_trial_s": round(wall / trials, 3),
        "outside_training_per_trial_s": round(wall * concurrency / trials - train_s, 3),
        "training_per_trial_s": round(train_s, 3),
        "seconds_between_trial_ends": {"first_tenth": round(first_gap, 3), "last_tenth": round(last_gap, 3)},
        "seal": {"saves": len(seals), "first_tenth_s": round(first_seal, 4), "last_tenth_s": round(last_seal, 4),
                 "state_bytes_first": seals[0][0] if seals else 0, "state_bytes_last": seals[-1][0] if seals else 0,
                 "total_s": round(sum(s for _, s in seals), 2)},
        "ask": {"asks": len(asks), "first_tenth_s": round(first_ask, 4), "last_tenth_s": round(last_ask, 4)},
        "journal_bytes": journal.stat().st_size, "journal_bytes_per_trial": round(journal.stat().st_size / trials),
        "report_s": round(report_s, 2), "study_dir": str(study_dir),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=300)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--output", default="", help="also write the figures to this JSON file (a new file)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    p.add_argument("--keep", default="", help="study storage to keep (default: a temporary folder, removed)")
    args = p.parse_args(argv)
    out = Path(args.output) if args.output else None
    try:  # before minutes of measuring, not after
        if out is not None:
            refuse_existing(out, args.overwrite)
        if args.keep:
            check_folders(Path(args.keep), "--keep", Path(args.keep))
            if Path(args.keep).exists():
                raise DiffsegError(f"--keep {args.keep} exists; name a new folder (the study is made there)")
    except DiffsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.keep:
        Path(args.keep).mkdir(parents=True, exist_ok=False)
        figures = measure(args.trials, args.concurrency, Path(args.keep))
    else:
        with tempfile.TemporaryDirectory(prefix="study-load-") as tmp:
            figures = measure(args.trials, args.concurrency, Path(tmp))
    text = json.dumps(figures, indent=1)
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
