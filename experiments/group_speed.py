"""How a seed group's k runs should share a machine (issue 19, item 1): side by side, one process
per seed with an equal share of the cores (what ``seeds: k`` does: one Ray actor per member), or
one after another in one process that has every core.

    python -m experiments.group_speed --output experiments/results/group_speed_cpu.json [--seeds 2]

Both arms train the same k configurations (``seed`` and ``data.split_seed`` + i, as a group's
members) with ``diffseg train``, without Ray, so what is compared is the sharing alone; the arms
alternate, ``--repeats`` times each, and the ratio of their median wall times is the answer
(above 1: side by side is faster).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from diffseg.cli import refuse_existing
from diffseg.errors import DiffsegError

# GlaS at the small preset's scale, short: a group member's run of a study on 2 cores
DEFAULT_SET = ["data.dataset=glas", "data.size=64", "model.width=16", "model.depth=3", "pretrain.epochs=2",
               "pretrain.iters_per_epoch=20", "train.epochs=4", "train.iters_per_epoch=10"]


def command(seed: int, run_dir: Path, settings: list[str], config: str) -> list[str]:
    sets = [f"--set={s}" for s in settings + [f"seed={seed}", f"data.split_seed={seed}"]]
    return [sys.executable, "-m", "diffseg", "train", "--config", config, "--run-dir", str(run_dir), *sets]


def run_arm(side_by_side: bool, seeds: int, cores: int, settings: list[str], config: str, scratch: Path) -> float:
    """Wall seconds to train every seed: all at once with cores/seeds threads each, or one after
    another with every core."""
    threads = max(1, cores // seeds) if side_by_side else cores
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    folders = [Path(tempfile.mkdtemp(prefix=f"seed{i}-", dir=scratch)) / "run" for i in range(seeds)]
    start = time.perf_counter()
    if side_by_side:
        procs = [subprocess.Popen(command(i, f, settings, config), env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE) for i, f in enumerate(folders)]
        for p in procs:
            _, err = p.communicate()
            if p.returncode:
                raise DiffsegError(f"a run failed: {err.decode()[-500:]}")
    else:
        for i, f in enumerate(folders):
            done = subprocess.run(command(i, f, settings, config), env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE)
            if done.returncode:
                raise DiffsegError(f"a run failed: {done.stderr.decode()[-500:]}")
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.group_speed", description=__doc__.splitlines()[0])
    p.add_argument("--output", required=True, help="the JSON file to write")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--config", default="debug")
    p.add_argument("--set", action="append", default=None, metavar="KEY=VALUE",
                   help=f"changes to the config (default: {' '.join(DEFAULT_SET)})")
    args = p.parse_args(argv)
    try:
        out = Path(args.output)
        refuse_existing(out, args.overwrite)
        if args.seeds < 2 or args.cores < 1 or args.repeats < 1:
            raise DiffsegError("--seeds must be at least 2, --cores and --repeats at least 1")
        settings = args.set if args.set is not None else DEFAULT_SET
        scratch = Path(tempfile.mkdtemp(prefix="group-speed-"))
        times: dict[str, list[float]] = {"side_by_side": [], "one_after_another": []}
        try:
            for r in range(args.repeats):
                for arm in ("side_by_side", "one_after_another"):
                    wall = run_arm(arm == "side_by_side", args.seeds, args.cores, settings, args.config, scratch)
                    times[arm].append(round(wall, 2))
                    print(f"[group_speed] repeat {r + 1}/{args.repeats} {arm}: {wall:.1f} s", flush=True)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)  # only what this invocation made
        med = {k: statistics.median(v) for k, v in times.items()}
        result = {"seeds": args.seeds, "cores": args.cores, "config": args.config, "set": settings,
                  "wall_s": times, "median_s": med, "speedup_side_by_side": round(med["one_after_another"] / med["side_by_side"], 3),
                  "machine": platform.processor() or platform.machine(), "python": platform.python_version()}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        print(f"[group_speed] side by side {med['side_by_side']:.1f} s, one after another "
              f"{med['one_after_another']:.1f} s: side by side is {result['speedup_side_by_side']:.2f}x; {out}")
        return 0
    except DiffsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
