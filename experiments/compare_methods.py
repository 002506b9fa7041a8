"""Every method at one small, equal CPU budget on one dataset, over seeds: a quick comparison
until the benchmark script (its own issue) covers datasets x label ratios with intervals.

    python experiments/compare_methods.py --dataset glas --seeds 0 1 2 --output experiments/results/methods_glas_cpu.json

Each (method, seed) is one `diffseg` run of the debug config (64x64, width 16) with the same
stage-2 iterations for every method; the paper's method also runs its stage 1. Seeds change the
network initialisation and the labeled subset (``seed`` and ``data.split_seed``).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from diffseg import config  # noqa: E402
from diffseg.loop import fit  # noqa: E402
from diffseg.methods import METHODS  # noqa: E402
from diffseg.runtime import local  # noqa: E402

BUDGET = {"data.labeled_ratio": 0.1, "train.epochs": 30, "train.iters_per_epoch": 10, "pretrain.epochs": 10,
          "pretrain.iters_per_epoch": 20}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="glas")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--runs", default="runs/compare", help="parent folder of the run folders")
    p.add_argument("--output", help="JSON file for the results")
    args = p.parse_args(argv)
    rows = []
    for seed in args.seeds:
        for name in args.methods:
            cfg = config.load("debug", BUDGET | {"data.dataset": args.dataset, "method": name, "seed": seed,
                                                 "data.split_seed": seed, "name": f"compare-s{seed}"})
            run = Path(args.runs) / f"{args.dataset}-{name}-s{seed}"
            summary = fit(cfg, run, local("cpu"), log=lambda m: None)
            rows.append({"method": name, "seed": seed, "test_dice": summary["test"]["dice"],
                         "val_dice": summary["val"]["dice"], "kept": summary["selected"]["predictor"],
                         "wall_s": summary["wall_s"], "run": str(run)})
            print(f"{name:<14} seed {seed}: test Dice {rows[-1]['test_dice']:.4f} (kept {rows[-1]['kept']}, "
                  f"{rows[-1]['wall_s']:.0f} s)", flush=True)
    print("\n| method | test Dice mean | sd | min | max | wall s (mean) |\n|---|---|---|---|---|---|")
    for name in args.methods:
        d = [r["test_dice"] for r in rows if r["method"] == name]
        w = [r["wall_s"] for r in rows if r["method"] == name]
        sd = statistics.stdev(d) if len(d) > 1 else 0.0
        print(f"| {name} | {statistics.mean(d):.4f} | {sd:.4f} | {min(d):.4f} | {max(d):.4f} | "
              f"{statistics.mean(w):.0f} |")
    if args.output:
        Path(args.output).write_text(json.dumps({"budget": BUDGET, "dataset": args.dataset, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
