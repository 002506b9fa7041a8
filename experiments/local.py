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
    t0, lock, failed, count = time.time(), threading.Lock(), [], [done]

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
        with open(logs / f"{cell.name}.log", "w") as out:
            code = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT).returncode
        with lock:
            count[0] += 1
            if code:
                failed.append(cell.name)
        say(f"cell {cell.name} " + ("finished" if code == 0 else f"FAILED (exit {code}; see {logs / cell.name}.log)")
            + f"; {count[0]}/{total} done")

    with ThreadPoolExecutor(max_workers=lanes) as pool:
        list(pool.map(one, cells))
    return failed
