"""Does TPE with ASHA find what random search finds, and for how much of its compute? (issue 19,
item 4)

    python -m experiments.study_efficiency --output experiments/results/study-efficiency \\
        [--repeats 3] [--budget 12000] [--preset small] [--dataset glas] [--ratio 0.1]

For each repeat r (searcher seed r), two real studies of the paper's method over the same space
(`SPACE`: its diffusion steps, sampling steps, rounds, loss weights and learning rate) at the
same compute budget: TPE with ASHA (grace 1 epoch, reduction factor 2), and random search without
stopping (the control). Compute is counted in training iterations, stage 1 included where a trial
ran it (a trial that reused a shared stage 1 pays nothing for it, as in the study itself):
``pretrain.epochs x pretrain.iters_per_epoch`` once, plus ``train.iters_per_epoch`` per
stage-2 epoch the trial trained. Trials are ordered by when they ended; each study's curve is the
best validation Dice found so far against the compute spent so far, cut at the budget. The plot
shows both arms' mean over repeats with the band between the lowest and highest repeat, and the
summary gives the ratio "compute TPE+ASHA needs to reach random search's final best" (mean
curves; per repeat beside it). Validation only: no test score enters any of it.

Both arms are sized to the budget before they start: random search gets as many trials as fit
(trials share one stage 1 per value of the diffusion steps, so three stage 1s are paid and every
other trial pays its stage 2), TPE+ASHA twice as many (ASHA stops most early); what a study
spends past the budget is cut off the curve, and the ratio is taken against what random search
actually spent. Studies already finished in
``--output`` are read, not run again; one that was interrupted is resumed.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import yaml

from diffseg.cli import check_folders
from diffseg.config import ConfigError
from diffseg.errors import DiffsegError
from experiments.presets import PRESETS

SPACE = {
    "diffusion_cps.diffusion.steps": {"choice": [100, 250, 500]},
    "diffusion_cps.diffusion.sample_steps": {"choice": [1, 2, 5]},
    "diffusion_cps.rounds": {"int": [1, 3]},
    "diffusion_cps.loss.cps": {"float": [0.1, 3.0], "log": True},
    "diffusion_cps.loss.align": {"float": [0.1, 3.0], "log": True},
    "train.lr": {"float": [0.001, 0.03], "log": True},
}
ARMS = {"tpe_asha": ({"type": "tpe"}, {"type": "asha", "grace_period": 1, "reduction_factor": 2}),
        "random": ({"type": "random"}, {"type": "none"})}


def trial_cost(cfg: dict) -> tuple[int, int]:
    """(stage-1 iterations, stage-2 iterations per epoch) of a resolved config."""
    return cfg["pretrain"]["epochs"] * cfg["pretrain"]["iters_per_epoch"], cfg["train"]["iters_per_epoch"]


def study_file(folder: Path, arm: str, repeat: int, trials: int, dataset: str, preset: str, ratio: float) -> Path:
    searcher, scheduler = ARMS[arm]
    data = {"name": f"{arm}-r{repeat}", "config": dataset,
            "set": dict(PRESETS[preset]) | {"method": "diffusion_cps", "data.labeled_ratio": ratio},
            "space": SPACE, "objective": {"metric": "val_dice", "mode": "max"}, "trials": trials,
            "searcher": searcher | {"seed": repeat}, "scheduler": scheduler,
            "resources": {"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0}, "concurrency": 2}
    path = folder / "studies" / f"{arm}-r{repeat}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def finished(study_dir: Path, trials: int) -> bool:
    """Whether every trial of the study ended (an interrupted study has its report too)."""
    import optuna

    from tune.driver import ended_trials
    from tune.paths import journal

    if not (study_dir / "report.md").exists():
        return False
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return ended_trials(optuna.load_study(study_name=study_dir.name, storage=journal(study_dir))) >= trials


def run_study(path: Path, storage: Path, data_root: str, trials: int) -> Path:
    """One study in its own ``python -m tune`` process, as a user runs it (each with its own Ray
    instance); a finished one is read, an interrupted one resumed."""
    import subprocess

    name = path.stem
    study_dir = storage / name
    if finished(study_dir, trials):
        return study_dir
    command = (["resume", name] if study_dir.exists() else
               ["search", str(path)] + (["--data-root", data_root] if data_root else []))
    done = subprocess.run([sys.executable, "-m", "tune", *command, "--storage", str(storage)])
    if done.returncode != 0:
        raise ConfigError(f"study {name} ended with exit code {done.returncode} (its folder: {study_dir}); "
                          f"run this command again to resume it")
    return study_dir


def curve(study_dir: Path) -> list[tuple[int, float]]:
    """(compute spent so far, best validation Dice so far), one point per trial in the order the
    trials ended."""
    from diffseg.rundir import read_jsonl

    ended = []
    for run in (study_dir / "trials").glob("*"):
        reports = [r for r in read_jsonl(run / "reports.jsonl") if not r.get("diverged")]
        if not reports or not (run / "config.yaml").exists():
            continue
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        stage1, per_epoch = trial_cost(cfg)
        try:
            ran_stage1 = not json.loads((run / "stage1.json").read_text())["reused"]
        except (OSError, ValueError, KeyError):
            ran_stage1 = True
        spent = (stage1 if ran_stage1 else 0) + per_epoch * max(int(r["epoch"]) for r in reports)
        ended.append(((run / "reports.jsonl").stat().st_mtime, spent, max(float(r["val_dice"]) for r in reports)))
    points, total, best = [], 0, -math.inf
    for _, spent, dice in sorted(ended):
        total, best = total + spent, max(best, dice)
        points.append((total, best))
    return points


def best_at(points: list[tuple[int, float]], compute: float) -> float:
    """The best Dice found with at most ``compute`` iterations spent (nan before the first trial)."""
    found = [d for c, d in points if c <= compute]
    return max(found) if found else math.nan


def reach(points: list[tuple[int, float]], target: float) -> float:
    """The compute at which the best so far first reaches ``target`` (inf: never)."""
    return next((c for c, d in points if d >= target - 1e-12), math.inf)


def summarise(curves: dict[str, list[list[tuple[int, float]]]], budget: int) -> dict:
    grid = [budget * i / 50 for i in range(1, 51)]
    mean = {arm: [sum(best_at(p, c) for p in cs) / len(cs) for c in grid] for arm, cs in curves.items()}
    target = mean["random"][-1]
    tpe_mean = list(zip(grid, mean["tpe_asha"]))
    # against what random search spent for its final best (its trials may not fill the budget)
    spent = sum(min(budget, p[-1][0]) for p in curves["random"]) / len(curves["random"])
    ratio = reach([(c, d) for c, d in tpe_mean if not math.isnan(d)], target) / spent
    per_repeat = []
    for tpe, rnd in zip(curves["tpe_asha"], curves["random"]):
        goal = best_at(rnd, budget)
        per_repeat.append(reach([p for p in tpe if p[0] <= budget], goal) / min(budget, rnd[-1][0]))
    return {"budget_iterations": budget, "grid": grid, "mean": mean, "random_final_best": target,
            "random_spent_iterations": spent,
            "ratio_tpe_asha_to_reach_random_final": ratio, "ratio_per_repeat": per_repeat}


def plot(curves: dict, summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = summary["grid"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for arm, colour in (("tpe_asha", "tab:blue"), ("random", "tab:orange")):
        rows = [[best_at(p, c) for c in grid] for p in curves[arm]]
        low = [min(v for v in col if not math.isnan(v)) if any(not math.isnan(v) for v in col) else math.nan
               for col in zip(*rows)]
        high = [max(v for v in col if not math.isnan(v)) if any(not math.isnan(v) for v in col) else math.nan
                for col in zip(*rows)]
        ax.plot(grid, summary["mean"][arm], color=colour, label=f"{arm} (mean of {len(rows)})")
        ax.fill_between(grid, low, high, color=colour, alpha=0.2)
    ax.set_xlabel("training iterations spent (stage 1 included)")
    ax.set_ylabel("best validation Dice so far")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", required=True, help="folder for the studies, curves.json and efficiency.png")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--budget", type=int, default=12000, help="training iterations per study (stage 1 included)")
    p.add_argument("--preset", default="small", choices=tuple(k for k in PRESETS if k not in ("paper", "none")))
    p.add_argument("--dataset", default="glas")
    p.add_argument("--ratio", type=float, default=0.1)
    p.add_argument("--data-root", default="")
    args = p.parse_args(argv)
    try:
        if args.repeats < 1 or args.budget < 1:
            raise ConfigError("--repeats and --budget take positive numbers")
        from diffseg import config as config_mod

        cfg = config_mod.to_dict(config_mod.load(args.dataset, dict(PRESETS[args.preset]) | {"method": "diffusion_cps"}))
        stage1, per_epoch = trial_cost(cfg)
        stage2 = per_epoch * cfg["train"]["epochs"]
        full = stage1 + stage2
        # trials share a stage 1 per value of the one searched stage-1 key (the diffusion steps):
        # that many stage 1s are paid once, every other trial pays its stage 2 only
        shared = len(SPACE["diffusion_cps.diffusion.steps"]["choice"]) * stage1
        random_trials = max(2, (args.budget - shared) // stage2)
        out = Path(args.output)
        check_folders(out, "--output", out)
        if out.is_dir() and any(out.iterdir()) and not (out / "studies").is_dir():
            raise ConfigError(f"--output {out} holds files this script did not make; name a new or empty "
                              f"folder (or one an earlier run of it made, to continue)")
        storage = out / "storage"
        print(f"[efficiency] a full trial costs {full} iterations ({stage1} of stage 1); budget {args.budget}: "
              f"{random_trials} random trials, {2 * random_trials} TPE+ASHA trials (cut at the budget), "
              f"{args.repeats} repeats", flush=True)
        curves: dict[str, list] = {"tpe_asha": [], "random": []}
        for r in range(args.repeats):
            for arm, trials in (("tpe_asha", 2 * random_trials), ("random", random_trials)):
                path = study_file(out, arm, r, trials, args.dataset, args.preset, args.ratio)
                study_dir = run_study(path, storage, args.data_root, trials)
                curves[arm].append(curve(study_dir))
                print(f"[efficiency] {arm} repeat {r}: best {curves[arm][-1][-1][1]:.4f} after "
                      f"{curves[arm][-1][-1][0]} iterations", flush=True)
        summary = summarise(curves, args.budget)
        (out / "curves.json").write_text(json.dumps({"curves": curves, "summary": summary}, indent=1))
        plot(curves, summary, out / "efficiency.png")
        ratio = summary["ratio_tpe_asha_to_reach_random_final"]
        print(f"[efficiency] random search's final best (mean of {args.repeats}): {summary['random_final_best']:.4f}; "
              f"TPE+ASHA reaches it with {ratio:.2f} of the compute random search spent" if math.isfinite(ratio) else
              f"[efficiency] TPE+ASHA's mean never reaches random search's final best within the budget")
        print(f"[efficiency] {out / 'efficiency.png'}, {out / 'curves.json'}")
        return 0
    except DiffsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
