"""The methods benchmark: dataset x label ratio x seed x method, each cell one Ray trial.

    python -m experiments.benchmark FILE [--preset P] [--name N] [--storage DIR] [--address A]
    python -m experiments.benchmark report NAME [--storage DIR]

Cells run through the same trial and worker code as studies (a Tune grid, not a search), in
``<storage>/<name>/trials/<cell>/`` with stable names such as ``glas-cps-r10-s0``. Running the
same benchmark again skips finished cells and resumes unfinished ones from their run folders;
stage 1 of the paper's method is pretrained once per stage-1 key and shared.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from diffseg import config as config_mod
from diffseg.config import ConfigError
from diffseg.errors import DiffsegError

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "experiments" / "benchmarks"
DEFAULT_STORAGE = "benchmarks"
KEYS = ("name", "datasets", "ratios", "seeds", "methods", "preset", "tuned", "resources", "concurrency",
        "max_failures")

# Scale presets: what each changes in every cell's base config.
PRESETS = {
    # CI: minutes on 2 cores, checks the machinery end to end
    "smoke": {"data.size": 32, "model.width": 8, "model.depth": 2, "diffusion.steps": 50, "diffusion.start_t": 49,
              "rounds": 1, "pretrain.epochs": 1, "pretrain.iters_per_epoch": 2, "pretrain.batch_size": 4,
              "pretrain.warmup_epochs": 1, "pretrain.decay_every": 0, "train.epochs": 2,
              "train.iters_per_epoch": 2, "train.batch_size": 4, "train.warmup_epochs": 1, "train.decay_every": 0},
    # 2 CPU cores: 64 px, width 16. Stage 1: 1000 iterations, shared by the cells of one
    # (dataset, seed); on PH2 its label-free mask beats all-foreground from about 600, on GlaS it
    # stays below up to 2000 (README). Stage 2: 200 iterations for every method.
    "small": {"data.size": 64, "model.width": 16, "model.depth": 3, "diffusion.steps": 100,
              "diffusion.start_t": 99, "rounds": 1, "pretrain.epochs": 50, "pretrain.iters_per_epoch": 20,
              "pretrain.warmup_epochs": 1, "pretrain.decay_every": 0, "train.epochs": 20,
              "train.iters_per_epoch": 10, "train.warmup_epochs": 1, "train.decay_every": 0},
    # the dataset configs as shipped: the paper's settings, for GPUs
    "paper": {},
}
# what each preset changes on top for a 3D dataset (LA): patches instead of image sizes, and the
# debug run's width and batch (a 3D step costs far more than a 2D one)
VOLUME_PRESETS = {
    "smoke": {"data.patch": [16, 16, 16], "model.width": 4, "model.depth": 2},
    "small": {"data.patch": [32, 32, 32], "model.width": 8, "pretrain.batch_size": 4, "train.batch_size": 4,
              "data.foreground_prob": 0.5},
    "paper": {},
}


def preset_for(preset: str, dataset: str) -> dict:
    from diffseg.data.sources import VOLUME_DATASETS

    return PRESETS[preset] | (VOLUME_PRESETS[preset] if dataset in VOLUME_DATASETS else {})


@dataclass(frozen=True)
class Cell:
    dataset: str
    ratio: float
    seed: int
    method: str
    config: dict = field(hash=False, compare=False)

    @property
    def name(self) -> str:
        return f"{self.dataset}-{self.method}-r{round(self.ratio * 100):d}-s{self.seed}"


@dataclass(frozen=True)
class Benchmark:
    name: str
    datasets: dict
    ratios: tuple
    seeds: tuple
    methods: tuple
    preset: str
    tuned: dict
    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    concurrency: int = 1
    max_failures: int = 1
    source: str = ""

    def cells(self, available: set[str] | None = None) -> list[Cell]:
        out = []
        for dataset, base in self.datasets.items():
            if available is not None and dataset not in available:
                continue
            for ratio in self.ratios:
                for seed in self.seeds:
                    for method in self.methods:
                        base_file = self.tuned.get(dataset, base) if method == "diffusion_cps" else base
                        cfg = config_mod.load(base_file, preset_for(self.preset, dataset) | {
                            "method": method, "data.labeled_ratio": ratio, "data.labeled_count": 0,
                            "seed": seed, "data.split_seed": seed})
                        cell = Cell(dataset, ratio, seed, method, {})
                        cfg = config_mod.apply_overrides(cfg, {"name": cell.name})
                        out.append(Cell(dataset, ratio, seed, method, config_mod.to_dict(cfg)))
        return out


def load(name_or_path: str, preset: str | None = None) -> Benchmark:
    path = config_mod.resolve_shipped(name_or_path, BENCH_DIR, "benchmark")
    data = config_mod.read_yaml(path, "benchmark")
    try:
        return parse(data, preset, str(path))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def parse(data: dict, preset: str | None = None, source: str = "") -> Benchmark:
    from diffseg.methods import METHODS

    from tune.study import check_name

    if not isinstance(data, dict):
        raise ConfigError("a benchmark file must be a mapping")
    for key in data:
        if key not in KEYS:
            raise ConfigError(f"unknown key '{key}'; valid keys: {', '.join(KEYS)}")
    datasets = data.get("datasets") or {}
    if not isinstance(datasets, dict) or not datasets:
        raise ConfigError("'datasets' must map dataset names to their base config, e.g. {glas: glas}")
    for dataset, base in datasets.items():
        config_mod.resolve_config_path(base)
    ratios = tuple(float(r) for r in data.get("ratios", [0.1]))
    if not ratios or any(not 0 < r <= 1 for r in ratios):
        raise ConfigError(f"'ratios' must be label ratios in (0, 1], got {data.get('ratios')!r}")
    seeds = tuple(int(s) for s in data.get("seeds", [0]))
    methods = tuple(data.get("methods") or METHODS)
    for m in methods:
        if m not in METHODS:
            raise ConfigError(f"method '{m}' is not one of {', '.join(METHODS)}")
    preset = preset or data.get("preset", "small")
    if preset not in PRESETS:
        raise ConfigError(f"preset '{preset}' is not one of {', '.join(PRESETS)}")
    tuned = data.get("tuned") or {}
    for dataset, best in tuned.items():
        if dataset not in datasets:
            raise ConfigError(f"tuned: '{dataset}' is not a dataset of this benchmark")
        if not Path(best).is_file():
            raise ConfigError(f"tuned: {dataset}'s config {best} not found (a finished study's best.yaml)")
    res = data.get("resources") or {}
    bench = Benchmark(check_name(str(data.get("name") or Path(source).stem)), dict(datasets), ratios, seeds, methods,
                      preset, dict(tuned), int(res.get("workers", 1)), float(res.get("cpus_per_worker", 1)),
                      float(res.get("gpus_per_worker", 0)), int(data.get("concurrency", 1)),
                      int(data.get("max_failures", 1)), source)
    bench.cells()  # every cell's config is checked now, before anything runs
    return bench


def available(bench: Benchmark, data_root: str = "") -> set[str]:
    """The benchmark's datasets found under the data root (hmeps is not public, for one)."""
    from diffseg.data.sources import data_root as resolve

    root = resolve(data_root)
    return {d for d in bench.datasets if d == "synthetic" or (root / d).is_dir()}


def run(file: str, preset: str | None = None, name: str | None = None, storage: str | None = None,
        address: str | None = None, data_root: str = "", log=print) -> Path:
    import dataclasses

    import ray.tune

    from diffseg.data import prepare
    from tune import driver
    from tune.study import Study

    from . import bench_report

    bench = load(file, preset)
    if name:
        bench = dataclasses.replace(bench, name=name)
    found = available(bench, data_root)
    for missing in sorted(set(bench.datasets) - found):
        log(f"[benchmark] {missing}: not under the data root, skipped")
    cells = bench.cells(found)
    if not cells:
        raise ConfigError("no dataset of the benchmark is under the data root")
    bench_dir = (Path(storage or DEFAULT_STORAGE) / bench.name).resolve()
    done = [c for c in cells if (bench_dir / "trials" / c.name / "summary.json").exists()]
    pending = [c for c in cells if c not in done]
    log(f"[benchmark] {bench.name}: {len(cells)} cells ({len(found)} datasets x {len(bench.ratios)} ratios x "
        f"{len(bench.seeds)} seeds x {len(bench.methods)} methods), preset {bench.preset}; "
        f"{len(done)} already finished, {len(pending)} to run")
    bench_dir.mkdir(parents=True, exist_ok=True)
    (bench_dir / "benchmark.yaml").write_text(yaml.safe_dump(dataclasses.asdict(bench), sort_keys=False))
    if pending:
        for dataset in sorted({c.dataset for c in pending}):  # caches built once, before any cell
            cfg = config_mod.from_dict(next(c for c in pending if c.dataset == dataset).config)
            prepare(cfg.data, progress=True, root=data_root)
        # the resources and data placement of every cell, as a study gives them to its trials
        study = Study(name=bench.name, base="", config=pending[0].config, space=(), workers=bench.workers,
                      cpus_per_worker=bench.cpus_per_worker, gpus_per_worker=bench.gpus_per_worker,
                      concurrency=bench.concurrency, max_failures=bench.max_failures,
                      data_root=str(Path(data_root).resolve()) if data_root else "")
        driver._connect(address, study, False, bench_dir.parent)
        trainable = ray.tune.with_resources(
            ray.tune.with_parameters(run_cell, cells={c.name: c.config for c in pending}, study=study,
                                     bench_dir=str(bench_dir)), {"CPU": 0, "memory": 256 * 2**20})
        tuner = ray.tune.Tuner(
            trainable, param_space={"cell": ray.tune.grid_search([c.name for c in pending])},
            tune_config=ray.tune.TuneConfig(num_samples=1, max_concurrent_trials=bench.concurrency,
                                            trial_name_creator=lambda t: t.config["cell"],
                                            trial_dirname_creator=lambda t: t.config["cell"]),
            run_config=ray.tune.RunConfig(name=f"tune-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=str(bench_dir),
                                          callbacks=[CellProgress(bench.name, len(cells), len(done), bench.concurrency)],
                                          verbose=0, failure_config=ray.tune.FailureConfig(max_failures=bench.max_failures)))
        tuner.fit()
    out = bench_report.write(bench_dir)
    log(f"[benchmark] results: {bench_dir / 'results.csv'}; table: {out}")
    return bench_dir


def run_cell(params: dict, cells: dict, study, bench_dir: str) -> None:
    """One cell: its config through the same trial code as a study's trial."""
    from tune.trial import run_config

    name = params["cell"]
    run_config(config_mod.from_dict(cells[name]), name, params, study, Path(bench_dir))


try:
    from ray.tune import Callback as _Callback
except ImportError:  # the report is read without Ray
    _Callback = object


class CellProgress(_Callback):
    """One line per cell event, with the count done and an estimate of the time left."""

    def __init__(self, name: str, total: int, done: int, concurrency: int):
        self.name, self.total, self.done, self.concurrency = name, total, done, concurrency
        self.t0, self.durations, self.started = time.time(), [], {}

    def say(self, msg: str) -> None:
        print(f"[{self.name} {time.time() - self.t0:6.0f}s] {msg}", flush=True)

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started[trial.trial_id] = time.time()
        self.say(f"cell {trial.config['cell']} started")

    def _ended(self, trial, how: str) -> None:
        self.done += 1
        self.durations.append(time.time() - self.started.get(trial.trial_id, time.time()))
        left = self.total - self.done
        eta = sum(self.durations) / len(self.durations) * left / max(1, self.concurrency)
        value = (trial.last_result or {}).get("val_dice")
        self.say(f"cell {trial.config['cell']} {how}" + (f" (val Dice {value:.4f})" if value is not None else "")
                 + f"; {self.done}/{self.total} done, about {eta / 60:.0f} min left")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._ended(trial, "finished")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._ended(trial, f"FAILED (see {trial.path}/error.txt)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.benchmark", description=__doc__.splitlines()[0])
    p.add_argument("file", help="a benchmark YAML, a shipped name (default), or 'report'")
    p.add_argument("name_for_report", nargs="?", help="with 'report': the benchmark's name")
    p.add_argument("--preset", choices=tuple(PRESETS), help="override the file's preset")
    p.add_argument("--name", help="the benchmark's folder name (default: the file's name)")
    p.add_argument("--storage", help=f"folder holding benchmarks (default: {DEFAULT_STORAGE})")
    p.add_argument("--address", help="Ray cluster address (default: a local instance)")
    p.add_argument("--data-root", default="", help="dataset root (default: $DIFFSEG_DATA or ../shared/data)")
    args = p.parse_args(argv)
    try:
        if args.file == "report":
            from . import bench_report

            if not args.name_for_report:
                raise ConfigError("usage: python -m experiments.benchmark report NAME [--storage DIR]")
            folder = Path(args.storage or DEFAULT_STORAGE) / args.name_for_report
            if not (folder / "benchmark.yaml").exists():
                raise ConfigError(f"no benchmark '{args.name_for_report}' at {folder}")
            print(f"table: {bench_report.write(folder)}")
            return 0
        run(args.file, args.preset, args.name, args.storage, args.address, args.data_root)
        return 0
    except DiffsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
