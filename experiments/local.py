"""A benchmark's cells without Ray: ``python -m experiments.benchmark FILE --local LANES`` runs
each cell as a `diffseg train` process, LANES at a time, into the same folders a Ray run uses
(``<benchmark>/trials/<cell>/``), so the report, resume and skip-finished behave alike. For a
machine without Ray (a lent GPU); stage 1 is not shared between cells here, each trains its own."""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from diffseg import config as config_mod


def run_cells(cells, bench_dir: Path, lanes: int, data_root: str, device: str, title: str, total: int,
              done: int, log=print) -> list[str]:
    """Train every cell; returns the names of those that failed (their logs say why)."""
    configs, logs = bench_dir / "configs", bench_dir / "logs"
    configs.mkdir(exist_ok=True)
    logs.mkdir(exist_ok=True)
    t0, lock, failed, count, durations = time.time(), threading.Lock(), [], [done], []

    def say(msg: str) -> None:
        with lock:
            log(f"[{title} {time.time() - t0:6.0f}s] {msg}")

    def one(cell) -> None:
        path = configs / f"{cell.name}.yaml"
        config_mod.save(config_mod.from_dict(cell.config), path)
        argv = [sys.executable, "-m", "diffseg", "train", "--config", str(path), "--run-dir",
                str(bench_dir / "trials" / cell.name), "--device", device]
        if data_root:
            argv += ["--data-root", data_root]
        say(f"cell {cell.name} started")
        started = time.time()
        with open(logs / f"{cell.name}.log", "w") as out:
            code = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT).returncode
        with lock:
            count[0] += 1
            durations.append(time.time() - started)
            if code:
                failed.append(cell.name)
            # cells still to start or running, at the mean time of those that ended, LANES at a time
            eta = sum(durations) / len(durations) * (total - count[0]) / lanes
        say(f"cell {cell.name} " + (f"finished{val_dice(bench_dir / 'trials' / cell.name)}" if code == 0
                                    else f"FAILED (exit {code}; see {logs / cell.name}.log)")
            + f"; {count[0]}/{total} done, about {eta / 60:.0f} min left")

    with ThreadPoolExecutor(max_workers=lanes) as pool:
        list(pool.map(one, cells))
    return failed


def val_dice(run_dir: Path) -> str:
    """" (val Dice 0.7123)" from a finished run's summary, as the Ray grid's progress line says it."""
    import json

    try:
        return f" (val Dice {json.loads((run_dir / 'summary.json').read_text())['val']['dice']:.4f})"
    except (OSError, ValueError, KeyError, TypeError):
        return ""
