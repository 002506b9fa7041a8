"""Fair tuned comparisons: a benchmark file's ``tune: {study: FILE, trials: N}``.

Before the grid, every row of the table (dataset x method x ratio) gets a study of its own with the
same trial budget N: the row's own cell config as the base (preset, dataset, ratio, the variant's
overrides), the study file's space for that method (its ``space`` plus ``methods.<method>.space``),
and the study file's objective, searcher, scheduler, ``seeds`` and resources, on tuning seeds the
final seeds never use. Then each row's cells run the row study's best config on the final seeds.
So every method is tuned, or none is; the table says so and with how many trials.

Each row's study lives in ``<benchmark>/studies/<row>/`` beside the study file written for it
(``<row>.yaml``) and its base config (``<row>.config.yaml``); a benchmark run again reuses a
finished study, resumes an unfinished one and starts a missing one.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from diffseg import config as config_mod, schema
from diffseg.config import ConfigError
from diffseg.schema import spec

# what a row's study takes from the study file; its base config and name are the benchmark's
TAKEN_KEYS = ("space", "methods", "objective", "second_objective", "searcher", "scheduler", "resources",
              "concurrency", "max_failures", "seeds", "enqueue")


@dataclass(frozen=True)
class TuneSection:
    """``tune:`` of a benchmark file."""
    study: str = ""  # a study file or a shipped study's name; empty: no tuning
    trials: int = spec(8, low=1)  # every row's budget, the same for every method
    # the tuning seed (member i of a seed group adds i); default: one past the final seeds
    seed: int = spec(-1, low=-1)


def study_data(section: TuneSection) -> dict:
    """The study file's resolved mapping (a file may start from another)."""
    from tune.study import STUDY_DIR, merge_studies

    _, data = schema.read_inherited(section.study, STUDY_DIR, "study", merge_studies)
    return data


def tuning_seed(section: TuneSection, final_seeds: tuple) -> int:
    return section.seed if section.seed >= 0 else max(final_seeds) + 1


def check(section: TuneSection, final_seeds: tuple, methods: dict) -> None:
    """Before anything runs: the study file reads, every method has keys to search, and the
    tuning seeds (with a seed group's) miss the final seeds. ``methods``: row name -> method."""
    data = study_data(section)
    seeds = int(data.get("seeds", 1) or 1)
    start = tuning_seed(section, final_seeds)
    tuning = set(range(start, start + seeds))
    shared = sorted(tuning & set(final_seeds))
    if shared:
        raise ConfigError(f"tune.seed = {start}: its study trains seeds {sorted(tuning)} and the benchmark scores "
                          f"seed(s) {shared}; final seeds must be ones the studies never saw")
    spaces = data.get("methods") or {}
    for row, method in methods.items():
        if not (data.get("space") or (spaces.get(method) or {}).get("space")):
            raise ConfigError(f"tune.study {section.study}: method {method} (row {row}) has nothing to search: give "
                              f"it methods.{method}.space, or a common space")


def row_study(section: TuneSection, name: str, base_config: dict, folder: Path) -> Path:
    """Write the row's study file and its base config into ``folder``; returns the study file."""
    data = {k: v for k, v in study_data(section).items() if k in TAKEN_KEYS}
    folder.mkdir(parents=True, exist_ok=True)
    cfg_path = folder / f"{name}.config.yaml"
    cfg_path.write_text(yaml.safe_dump(base_config, sort_keys=False))
    study = {"name": name, "config": str(cfg_path), **data, "trials": section.trials}
    path = folder / f"{name}.yaml"
    path.write_text(f"# written by the benchmark from {section.study}: row {name}'s study (experiments/tuned.py)\n"
                    + yaml.safe_dump(study, sort_keys=False))
    return path


def finished(study_dir: Path, trials: int) -> bool:
    """The study has its best.yaml and every one of its trials ended (read without Ray)."""
    import optuna

    from tune.driver import ended_trials
    from tune.paths import journal

    if not (study_dir / "best.yaml").is_file() or not (study_dir / "study.yaml").is_file():
        return False
    ot = optuna.load_study(study_name=study_dir.name, storage=journal(study_dir))
    return ended_trials(ot) >= trials


def run_studies(rows: dict[str, dict], section: TuneSection, bench_dir: Path, address: str | None,
                data_root: str, log=print) -> dict[str, Path]:
    """Each row's study (row name -> its base config), run or resumed until finished; returns
    row name -> the best.yaml its cells run with."""
    from tune import driver

    storage = bench_dir / "studies"
    out = {}
    for i, (row, base) in enumerate(rows.items(), 1):
        study_dir = storage / row
        if finished(study_dir, section.trials):
            log(f"[benchmark] tuning {i}/{len(rows)}: {row}'s study is finished ({section.trials} trials)")
        elif (study_dir / "study.yaml").is_file():
            log(f"[benchmark] tuning {i}/{len(rows)}: resuming {row}'s study")
            driver.resume(row, storage=str(storage), address=address)
        else:
            log(f"[benchmark] tuning {i}/{len(rows)}: {row}, {section.trials} trials")
            driver.search(str(row_study(section, row, base, storage)), storage=str(storage), address=address,
                          data_root=data_root)
        best = study_dir / "best.yaml"
        if not best.is_file():
            raise ConfigError(f"{row}'s study ended without a complete trial, so it has no best config: see "
                              f"{study_dir / 'report.md'}")
        out[row] = best
    return out


def cell_config(best: Path, seed: int, name: str) -> dict:
    """A row's best config on a final seed."""
    cfg = config_mod.load(str(best), {"seed": seed, "data.split_seed": seed, "name": name})
    return config_mod.to_dict(cfg)


def tune_rows(bench, found: set[str], pending: list, bench_dir: Path, address: str | None, data_root: str, log):
    """Run (or resume) the study of every row with a cell to run; the benchmark then gives those
    rows their study's best config, and the pending cells are rebuilt from it."""
    import dataclasses

    from .benchmark import group_name

    section = TuneSection(**bench.tune)
    rows = bench.rows(found, tuning_seed(section, bench.seeds))
    # the rows with a cell to run, and those whose study already finished (the table names them)
    wanted = {group_name(c.dataset, c.method, c.ratio) for c in pending} | {
        r for r in rows if finished(bench_dir / "studies" / r, section.trials)}
    best = run_studies({r: cfg for r, cfg in rows.items() if r in wanted}, section, bench_dir, address, data_root, log)
    bench = dataclasses.replace(bench, tuned_rows={r: str(p) for r, p in best.items()})
    names = {c.name for c in pending}
    return bench, [c for c in bench.cells(found) if c.name in names]


def check_tuning_seeds(dataset: str, best: str, seeds: tuple) -> None:
    """A tuned config is scored on seeds its study never saw: the study chose it on its trials'
    seed (model initialisation and splits), so scoring that seed again rewards the search's luck."""
    tuned = config_mod.load(best)
    seen = {tuned.seed, tuned.data.split_seed} | study_seeds(Path(best).parent / "study.yaml")
    shared = sorted(seen & set(seeds))
    if shared:
        start = max(seen) + 1
        raise ConfigError(f"tuned: {dataset}'s {best} was tuned with seed and data.split_seed values "
                          f"{sorted(seen)}, and this benchmark scores seed(s) {shared} again; final seeds "
                          f"must be ones the study never saw, e.g. seeds: {list(range(start, start + len(seeds)))}")


def study_seeds(study_yaml: Path) -> set[int]:
    """The seeds a study beside a best.yaml tuned on (all of a seed group's, tune/group.py); none
    when the best.yaml stands alone."""
    if not study_yaml.is_file():
        return set()
    from tune.report import tuned_seeds
    from tune.study import study_from_yaml

    return tuned_seeds(study_from_yaml(study_yaml.read_text(), study_yaml))
