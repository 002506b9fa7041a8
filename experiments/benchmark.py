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
import dataclasses
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from diffseg import config as config_mod, schema
from diffseg.config import ConfigError
from diffseg.durable import FolderLock
from diffseg.errors import DiffsegError
from diffseg.schema import spec
from experiments import tuned as tuned_mod
from experiments.presets import PRESETS, preset_for
from experiments.tuned import TuneSection
from tune.resources import Resources, WorkerSection

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "experiments" / "benchmarks"
DEFAULT_STORAGE = "benchmarks"

@dataclass(frozen=True)
class Variant:
    """A row of the table: a method, and the overrides (``set``) it runs with. A plain method is
    the variant of its own name with nothing set; a named one is compared with its parent."""
    name: str
    method: str
    set: dict = field(default_factory=dict)


def group_name(dataset: str, variant: str, ratio: float) -> str:
    """What ``exclude`` and ``reference`` name: every seed of one row at one ratio."""
    return f"{dataset}-{variant}-r{round(ratio * 100):d}"


@dataclass(frozen=True)
class Cell:
    dataset: str
    ratio: float
    seed: int
    method: str  # the variant's name (its method's, for a plain method)
    config: dict = field(hash=False, compare=False)

    @property
    def name(self) -> str:
        return f"{group_name(self.dataset, self.method, self.ratio)}-s{self.seed}"


@dataclass(frozen=True)
class Benchmark:
    name: str
    datasets: dict
    ratios: tuple
    seeds: tuple
    methods: tuple  # the variants' names, in table order
    preset: str
    tuned: dict
    resources: Resources = Resources()
    source: str = ""
    variants: dict = field(default_factory=dict)  # name -> Variant
    exclude: tuple = ()  # group names (dataset-variant-rNN) not run
    reference: dict = field(default_factory=dict)  # group name -> {dice, source, protocol}
    set: dict = field(default_factory=dict)  # dotted overrides of every cell, after the preset
    tune: dict = field(default_factory=dict)  # the tune: section (experiments/tuned.py); empty: none
    tuned_rows: dict = field(default_factory=dict)  # row (dataset-variant-rNN) -> its study's best.yaml
    literature: dict = field(default_factory=dict)  # other methods' published values: label -> {dice, source, protocol}

    def rows(self, available: set[str] | None = None, tuning_seed: int = 0) -> dict[str, dict]:
        """Each row's config on ``tuning_seed``: the base config of the row's study under ``tune:``."""
        return {group_name(c.dataset, c.method, c.ratio): c.config
                for c in self.cells(available, seeds=(tuning_seed,), named_by_row=True)}

    def cells(self, available: set[str] | None = None, seeds: tuple | None = None,
              named_by_row: bool = False) -> list[Cell]:
        out = []
        for dataset, base in self.datasets.items():
            if available is not None and dataset not in available:
                continue
            for ratio in self.ratios:
                for seed in (self.seeds if seeds is None else seeds):
                    for name in self.methods:
                        v = self.variants.get(name) or Variant(name, name)
                        row = group_name(dataset, name, ratio)
                        if row in self.exclude:
                            continue
                        cell = Cell(dataset, ratio, seed, name, {})
                        title = row if named_by_row else cell.name
                        if row in self.tuned_rows:  # the row study's best config, on this seed
                            from .tuned import cell_config

                            out.append(Cell(dataset, ratio, seed, name, cell_config(self.tuned_rows[row], seed, title)))
                            continue
                        base_file = self.tuned.get(dataset, base) if v.method == "diffusion_cps" else base
                        try:
                            cfg = config_mod.load(base_file, preset_for(self.preset, dataset) | self.set | v.set | {
                                "method": v.method, "data.labeled_ratio": ratio, "data.labeled_count": 0,
                                "seed": seed, "data.split_seed": seed, "name": title})
                        except ConfigError as exc:
                            raise ConfigError(f"cell {cell.name}: {exc}") from None
                        out.append(Cell(dataset, ratio, seed, name, config_mod.to_dict(cfg)))
        return out

    def parent(self, name: str) -> str | None:
        """The plain method a named variant is compared with, when the benchmark runs it."""
        v = self.variants.get(name)
        return v.method if v is not None and v.method != name and v.method in self.methods else None


def load(name_or_path: str, preset: str | None = None) -> Benchmark:
    """A benchmark file (it may start from another: ``base: NAME``), checked and resolved."""
    path, data = schema.read_inherited(name_or_path, BENCH_DIR, "benchmark")
    try:
        return parse(data, preset, str(path))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


@dataclass(frozen=True)
class BenchmarkFile:
    """A benchmark file as written; ``parse`` resolves it into a ``Benchmark``."""
    name: str = ""  # default: the file's name
    datasets: dict = field(default_factory=dict)  # dataset name -> its base config
    ratios: tuple[float, ...] = (0.1,)
    seeds: tuple[int, ...] = (0,)
    # empty: every method. An entry is a method's name, or a variant: {name: N, method: M, set:
    # {dotted.key: value, ...}}, the method with those overrides (on top of the preset)
    methods: tuple = ()
    preset: str = spec("small", choices=tuple(PRESETS))
    set: dict = field(default_factory=dict)  # dotted config overrides of every cell (after the preset)
    exclude: tuple[str, ...] = ()  # rows not run, as dataset-variant-rNN (glas-ua_mt-r20)
    # published values beside the table: dataset-variant-rNN -> {dice: percent, source: ...,
    # protocol: ...}
    reference: dict = field(default_factory=dict)
    # published values of methods this benchmark does not run (the field's state of the art), printed
    # beside the table as context: LABEL -> {dice: percent, source: ..., protocol: ...}
    literature: dict = field(default_factory=dict)
    tuned: dict = field(default_factory=dict)  # dataset -> a finished study's best.yaml
    # every row tuned by a study of its own, the same budget for each (experiments/tuned.py)
    tune: TuneSection = field(default_factory=TuneSection)
    resources: WorkerSection = field(default_factory=WorkerSection)
    concurrency: int = spec(1, low=1)
    max_failures: int = spec(1, low=0)


def parse(data: dict, preset: str | None = None, source: str = "") -> Benchmark:
    from diffseg.methods import METHODS

    from tune.study import check_name

    if not isinstance(data, dict):
        raise ConfigError("a benchmark file must be a mapping")
    f = schema.build(BenchmarkFile, data | ({"preset": preset} if preset else {}), noun="benchmark key")
    if not f.datasets:
        raise ConfigError("'datasets' must map dataset names to their base config, e.g. {glas: glas}")
    for dataset, base in f.datasets.items():
        config_mod.resolve_config_path(base)
    if not f.ratios or any(not 0 < r <= 1 for r in f.ratios):
        raise ConfigError(f"'ratios' must be label ratios in (0, 1], got {list(f.ratios)!r}")
    variants = {v.name: v for v in (variant(entry) for entry in (f.methods or tuple(METHODS)))}
    if len(variants) != len(f.methods or METHODS):
        raise ConfigError(f"'methods' names a row twice: {[variant(e).name for e in f.methods]}")
    methods = tuple(variants)
    if f.tune.study and f.tuned:
        raise ConfigError("give either 'tune' (every method tuned by its own study) or 'tuned' (one study's "
                          "best config for the paper's method), not both")
    for dataset, best in f.tuned.items():
        if dataset not in f.datasets:
            raise ConfigError(f"tuned: '{dataset}' is not a dataset of this benchmark")
        if not Path(best).is_file():
            raise ConfigError(f"tuned: {dataset}'s config {best} not found (a finished study's best.yaml)")
        tuned_mod.check_tuning_seeds(dataset, best, f.seeds)
    if f.tune.study:
        tuned_mod.check(f.tune, f.seeds, {n: variants[n].method for n in methods})
    groups = {group_name(d, m, r) for d in f.datasets for m in methods for r in f.ratios}
    for key in f.exclude:
        if key not in groups:
            raise ConfigError(f"exclude: '{key}' is no row of this benchmark; rows: {', '.join(sorted(groups))}")
    reference = {key: check_reference(key, value, groups) for key, value in f.reference.items()}
    bench = Benchmark(check_name(str(f.name or Path(source).stem)), dict(f.datasets), f.ratios, f.seeds, methods,
                      f.preset, dict(f.tuned), f.resources.with_trials(f.concurrency, f.max_failures), source,
                      {n: v for n, v in variants.items() if v.set or v.method != n}, tuple(f.exclude), reference,
                      dict(f.set), dataclasses.asdict(f.tune) if f.tune.study else {},
                      literature={k: check_published(f"literature '{k}'", v) for k, v in f.literature.items()})
    names = [c.name for c in bench.cells()]  # every cell's config is checked now, before anything runs
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:  # one folder for two cells: one of them would silently never run
        raise ConfigError(f"two cells share the name {twice[0]}: ratios {list(f.ratios)} and seeds {list(f.seeds)} "
                          f"must differ in whole percent and in value")
    return bench


def variant(entry) -> Variant:
    """A ``methods`` entry: a method's name, or {name, method, set}."""
    from diffseg.methods import METHODS

    if isinstance(entry, str):
        entry = {"name": entry, "method": entry}
    if not isinstance(entry, dict) or set(entry) - {"name", "method", "set"} or "method" not in entry:
        raise ConfigError(f"a 'methods' entry is a method's name or {{name, method, set}}, got {entry!r}")
    name, method, overrides = str(entry.get("name", entry["method"])), entry["method"], entry.get("set") or {}
    if method not in METHODS:
        raise ConfigError(f"method '{method}' is not one of {', '.join(METHODS)}")
    if not re.fullmatch(r"[A-Za-z0-9_.]{1,60}", name):
        raise ConfigError(f"variant name {name!r} must be letters, digits, '_' or '.' (it names the cells' folders)")
    if not isinstance(overrides, dict):
        raise ConfigError(f"variant '{name}': 'set' must map dotted config keys to values, got {overrides!r}")
    if name in METHODS and name != method:
        raise ConfigError(f"variant '{name}' is named like another method; give it its own name")
    return Variant(name, method, {str(k): v for k, v in overrides.items()})


def check_reference(key: str, value, groups: set[str]) -> dict:
    if key not in groups:
        raise ConfigError(f"reference: '{key}' is no row of this benchmark; rows: {', '.join(sorted(groups))}")
    return check_published(f"reference '{key}'", value)


def check_published(what: str, value) -> dict:
    """A published value: {dice: percent, source: text, protocol: text}; ``what`` names it in errors."""
    if not isinstance(value, dict) or not {"dice", "source"} <= set(value) or set(value) - {"dice", "source", "protocol"}:
        raise ConfigError(f"{what} must be {{dice: PERCENT, source: TEXT, protocol: TEXT}}, got {value!r}")
    dice = value["dice"]
    if isinstance(dice, bool) or not isinstance(dice, (int, float)) or not 0 <= dice <= 100:
        raise ConfigError(f"{what}: dice is a percentage in [0, 100] (papers print 80.83), got {dice!r}")
    return {"dice": float(dice), "source": str(value["source"]), "protocol": str(value.get("protocol", ""))}


def available(bench: Benchmark, data_root: str = "") -> set[str]:
    """The benchmark's datasets found under the data root (hmeps is not public, for one)."""
    from diffseg.data.sources import data_root as resolve

    root = resolve(data_root)
    return {d for d in bench.datasets if d == "synthetic" or (root / d).is_dir()}


def run(file: str, preset: str | None = None, name: str | None = None, storage: str | None = None,
        address: str | None = None, data_root: str = "", log=print, only: tuple[str, ...] = (),
        local: int = 0, device: str = "auto") -> Path:
    """Run every cell not finished yet (a Ray Tune grid: ``tune.grid``), then write the report.
    ``only``: shell patterns of cell names (``glas-cps-r10-s[0-2]``); the others wait for a
    later run of the same benchmark."""
    import fnmatch

    from . import bench_report

    bench = load(file, preset)
    if name:
        bench = dataclasses.replace(bench, name=name)
    found = available(bench, data_root)
    for missing in sorted(set(bench.datasets) - found):
        log(f"[benchmark] {missing}: not under the data root, skipped")
    cells = every = bench.cells(found)
    if not cells:
        raise ConfigError("no dataset of the benchmark is under the data root")
    if only:
        for pattern in only:
            if not any(fnmatch.fnmatchcase(c.name, pattern) for c in cells):
                raise ConfigError(f"--only {pattern!r} matches no cell; cells are named like {cells[0].name}")
        cells = [c for c in cells if any(fnmatch.fnmatchcase(c.name, p) for p in only)]
    if bench.tune and local:
        raise ConfigError("tune: the row studies run through Ray Tune, so a tuned benchmark cannot run with --local")
    bench_dir = (Path(storage or DEFAULT_STORAGE) / bench.name).resolve()
    done = [c for c in cells if (bench_dir / "trials" / c.name / "summary.json").exists()]
    pending = [c for c in cells if c not in done]
    log(f"[benchmark] {bench.name}: {len(cells)} cells ({len(found)} datasets x {len(bench.ratios)} ratios x "
        f"{len(bench.seeds)} seeds x {len(bench.methods)} methods"
        + (f", {len(cells)} of its {len(every)} by --only" if only else "") + f"), preset {bench.preset}; "
        f"{len(done)} already finished, {len(pending)} to run")
    bench_dir.mkdir(parents=True, exist_ok=True)
    if not local:
        from tune import grid
    with FolderLock(bench_dir, "benchmark folder"):  # a second invocation on it is refused, naming this one
        if bench.tune:
            bench, pending = tuned_mod.tune_rows(bench, found, pending, bench_dir, address, data_root, log)
        (bench_dir / "benchmark.yaml").write_text(yaml.safe_dump(dataclasses.asdict(bench), sort_keys=False))
        if pending and local:
            from .local import run_cells

            run_cells(pending, bench_dir, local, data_root, device, bench.name, len(cells), len(done), log)
        elif pending:
            grid.run({c.name: c.config for c in pending}, bench.resources, bench_dir, address, data_root,
                     title=bench.name, total=len(cells), done=len(done))
        out = bench_report.write(bench_dir)
    log(f"[benchmark] results: {bench_dir / 'results.csv'}; table: {out}")
    failed = [c.name for c in cells if not (bench_dir / "trials" / c.name / "summary.json").exists()]
    if failed and len(failed) == len(cells):
        raise DiffsegError(f"every cell failed ({len(failed)}): see {bench_dir / 'trials'}/<cell>/ and Ray's error.txt")
    if failed:
        log(f"[benchmark] {len(failed)} of {len(cells)} cells did not finish: {', '.join(failed[:5])}"
            + (" ..." if len(failed) > 5 else "") + "; running the benchmark again resumes them")
    return bench_dir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.benchmark", description=__doc__.splitlines()[0])
    p.add_argument("file", help="a benchmark YAML, a shipped name (default), or 'report'")
    p.add_argument("name_for_report", nargs="?", help="with 'report': the benchmark's name")
    p.add_argument("--preset", choices=tuple(PRESETS), help="override the file's preset")
    p.add_argument("--name", help="the benchmark's folder name (default: the file's name)")
    p.add_argument("--storage", help=f"folder holding benchmarks (default: {DEFAULT_STORAGE})")
    p.add_argument("--address", help="Ray cluster address (default: a local instance)")
    p.add_argument("--data-root", default="", help="dataset root (default: $DIFFSEG_DATA or ../shared/data)")
    p.add_argument("--local", type=int, default=0, metavar="LANES",
                   help="run the cells without Ray: LANES `diffseg train` processes at a time on this machine "
                        "(a GPU machine without Ray; stage 1 is then not shared between cells)")
    p.add_argument("--device", default="auto", help="with --local: where each cell trains (auto, cpu, cuda)")
    p.add_argument("--only", action="append", default=[], metavar="PATTERN",
                   help="run only the cells whose names match (shell pattern, repeatable), such as "
                        "'glas-supervised-r10-*'; a later run without it runs the rest")
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
        if args.local < 0 or (args.local and args.address):
            raise ConfigError("--local LANES takes a positive number of lanes and no --address (it runs without Ray)")
        if args.device != "auto" and not args.local:
            raise ConfigError("--device is for --local runs; Ray cells take their device from the file's resources")
        run(args.file, args.preset, args.name, args.storage, args.address, args.data_root, only=tuple(args.only),
            local=args.local, device=args.device)
        return 0
    except DiffsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
