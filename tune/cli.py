"""`python -m tune`: search, resume, report. Thin wrappers over driver and report."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from diffseg.errors import DiffsegError, Interrupted


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tune", description="Hyperparameter studies with Ray Tune and Optuna")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("search", help="start a new study from a study file")
    s.add_argument("study", help="study YAML file, or the name of a shipped study (smoke, paper, la)")
    s.add_argument("--dataset", help="which of the study file's datasets (a file with 'datasets:' covers several)")
    s.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="dotted overrides of the base config, e.g. --set train.epochs=20")
    s.add_argument("--name", help="study name (default: the study file's name); never reused")
    s.add_argument("--data-root", default="", help="dataset root (default: $DIFFSEG_DATA or ../shared/data)")
    s.add_argument("--cache-dir", default="", help="preprocessing cache (default: $DIFFSEG_CACHE or ~/.cache/diffseg)")
    _where(s)
    j = sub.add_parser("submit", help="run a study on a Ray cluster as a Ray job (see cluster/README.md)")
    j.add_argument("study", help="a shipped study name, or a study file inside the project")
    j.add_argument("--address", required=True, help="the cluster's dashboard, e.g. http://HEAD:8265")
    j.add_argument("--storage", default="", help="absolute folder every node mounts (default: DIFFSEG_STUDIES "
                                                 "in cluster/runtime_env.yaml)")
    j.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    j.add_argument("--name", help="study name (default: the study file's name and the time)")
    j.add_argument("--dataset", help="which of the study file's datasets")
    j.add_argument("--data-root", default="", help="dataset root on the cluster (default: its DIFFSEG_DATA)")
    j.add_argument("--runtime-env", default=None, help="runtime environment YAML (default: cluster/runtime_env.yaml)")
    j.add_argument("--no-wait", action="store_true", help="print the job id and return; do not follow the logs")
    r = sub.add_parser("resume", help="continue an interrupted study; finished trials are kept")
    r.add_argument("name")
    r.add_argument("--trust", action="store_true",
                   help="resume a study whose Tune state this installation did not seal (it is unpickled: "
                        "only for folders whose origin you know)")
    _where(r)
    rep = sub.add_parser("report", help="write trials.csv, best.yaml, report.md and plots (no Ray needed)")
    rep.add_argument("name")
    rep.add_argument("--storage", help="folder holding the studies (default: studies)")
    o = sub.add_parser("overhead", help="benchmark: an epoch in a 1-worker TorchTrainer vs in-process")
    o.add_argument("--config", default="debug")
    o.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    o.add_argument("--output", help="also write the figures to this JSON file")
    o.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    o.add_argument("--repeat", type=int, default=1, help="repeat the three runs; medians are reported")
    return p


def _where(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", help="folder holding the studies (default: studies)")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local cluster)")
    p.add_argument("--verbose", action="store_true", help="also print the Ray workers' own log lines")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "report":
            from .paths import existing_study_dir
            from .report import write

            study_dir = existing_study_dir(args.name, args.storage)
            print(f"report: {write(study_dir)}")
            print((study_dir / "trials.csv").read_text(), end="")
            return 0
        if args.command == "overhead":
            from .overhead import main as overhead

            if args.output:
                from diffseg.cli import refuse_existing

                refuse_existing(Path(args.output), args.overwrite)
            overhead(args.config, args.overrides, args.output, args.repeat)
            return 0
        if args.command == "submit":
            from .jobs import RUNTIME_ENV, submit

            return submit(args.study, args.address, args.storage, args.overrides, args.name, args.data_root,
                          wait=not args.no_wait, runtime_env=args.runtime_env or RUNTIME_ENV, dataset=args.dataset)
        from . import driver

        if args.command == "search":
            driver.search(args.study, args.overrides, args.name, args.storage, args.address, args.verbose,
                          args.data_root, args.cache_dir, args.dataset)
        else:
            driver.resume(args.name, args.storage, args.address, args.verbose, trust=args.trust)
        return 0
    except Interrupted as exc:  # Ctrl-C (or SIGTERM) that Tune turned into an early return
        print(f"interrupted: {exc}", file=sys.stderr)
        return exc.exit_code
    except DiffsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # what to run next was said already (driver._fit)
        return 130
