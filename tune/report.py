"""The study report, from files alone (no Ray): trials.csv, best.yaml, report.md and plots.

Sources: the Optuna journal (trial states and parameters), Tune's per-trial ``result.json``
(the metrics it saw), and each trial's diffseg run folder (epochs, test scores, stage 1).
"""
from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import yaml

from diffseg import durable
from diffseg.rundir import read_jsonl

from .paths import WORKER_STARTS, trial_starts
from .plots import FEW_TRIALS, is_number as _num, make_plots, split_of as _split
from .report_html import write_html
from .study import Study, study_from_yaml


def write(study_dir: str | Path) -> Path:
    study_dir = Path(study_dir)
    study = study_from_yaml((study_dir / "study.yaml").read_text(), study_dir / "study.yaml")
    problems: list[str] = []  # damaged files, each named with what could not be read
    try:
        ot = optuna_study(study, study_dir)
    except Exception as exc:  # a damaged journal fails anywhere inside Optuna's reader
        ot = None
        problems.append(f"`{study_dir / 'optuna.journal'}`: the Optuna journal could not be read "
                        f"({type(exc).__name__}: {str(exc)[:200]}); trial states come from the run folders' summaries")
    rows = collect(study, study_dir, ot, problems)
    write_csv(study, rows, study_dir / "trials.csv")
    best = best_row(study, rows)
    if best is not None:
        write_best(study, best, study_dir)
    plots = make_plots(study, rows, study_dir, ot)
    page = write_html(study, ot, study_dir)
    plots["importance"] = ("report.html" if page else
                           "parameter importance not available: no Optuna journal yet")
    text = markdown(study, rows, best, plots, study_dir)
    if problems:
        text += "\n## Damaged files\n\n" + "\n".join(f"- {p}" for p in problems) + "\n"
    durable.write_text(study_dir / "report.md", text)
    return study_dir / "report.md"


def readable(read, path: Path, problems: list[str], default):
    """``read(path)``, or ``default`` with the file and what failed added to ``problems``."""
    try:
        return read(path)
    except Exception as exc:  # damaged: JSON errors, torn lines, bad bytes
        problems.append(f"`{path}` could not be read ({type(exc).__name__}: {str(exc)[:160]})")
        return default


# ---------------------------------------------------------------------- gathering
def optuna_study(study: Study, study_dir: Path):
    """The study's Optuna record, or None before its journal exists."""
    import optuna

    from .paths import journal

    if not (study_dir / "optuna.journal").exists():
        return None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=study.name, storage=journal(study_dir))


def optuna_trials(ot) -> dict[str, object]:
    if ot is None:
        return {}
    return {t.user_attrs["tune_trial_id"]: t for t in ot.get_trials(deepcopy=False)
            if "tune_trial_id" in t.user_attrs}


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def collect(study: Study, study_dir: Path, study_ot=None, problems: list[str] | None = None) -> list[dict]:
    problems = [] if problems is None else problems
    ot = optuna_trials(study_ot)
    starts = Counter(r["trial_id"] for r in trial_starts(study_dir))
    ids = sorted(set(ot) | {p.name for p in (study_dir / "trials").glob("*") if p.is_dir()},
                 key=lambda t: (getattr(ot.get(t), "number", 1e9), t))
    rows = []
    for tid in ids:
        run = study_dir / "trials" / tid
        results = readable(read_jsonl, study_dir / "tune" / tid / "result.json", problems, [])
        # an epoch a resumed driver was handed again (its predecessor took it but died before
        # saving) is logged once since tune/loggers.py; studies made before list it twice: one
        # row per epoch, the later one
        results = list({r.get("epoch"): r for r in results}.values())
        last = results[-1] if results else {}
        epochs = [r for r in readable(read_jsonl, run / "metrics.jsonl", problems, []) if r.get("stage") == "train"]
        summary = readable(read_json, run / "summary.json", problems, {})
        stage1 = readable(read_json, run / "stage1.json", problems, {})
        trial = ot.get(tid)
        params = dict(trial.params) if trial is not None else readable(read_json, run / "params.json", problems, {})
        # a run folder the journal does not name: started by a driver killed before Tune saved
        # the trial (its parameters then ran again as another trial), unless the journal is damaged
        state = trial.state.name if trial is not None else ("ABANDONED" if study_ot is not None else "UNKNOWN")
        if trial is None and summary.get("status") == "complete":  # no journal record: the run folder says
            state = "COMPLETE"
        if summary.get("status") == "diverged":  # complete for Optuna (with the worst value), diverged here
            state = "DIVERGED"
        rows.append({
            "trial_id": tid, "number": getattr(trial, "number", ""), "state": state,
            "reason": summary.get("reason", ""),
            "params": params, "metrics": {m: last.get(m) for m in study.metrics},
            # a seed group's spread (tune/group.py): each objective's 95 % half-width and its seeds' values
            "ci95": {m: last.get(f"{m}_ci95") for m in study.metrics},
            "per_seed": {m: last.get(f"{m}_seeds") for m in study.metrics},
            "test_dice": (summary.get("test") or {}).get("dice"),
            # the trivial floors of the selection split (from Tune's results) and of the test split
            "sel_floor": last.get(_split(study) + "_dice_all_foreground"),
            "test_floor": (summary.get("test") or {}).get("all_foreground_dice"),
            # the epochs Tune saw: a trial stopped by ASHA may finish one more before it is killed
            "epochs": int(last.get("epoch", len(epochs))), "wall_s": round(last.get("time_total_s", 0.0), 1),
            "stage1": "" if not stage1 else ("reused" if stage1["reused"] else "ran"),
            # starts of the trial (Tune) or of its worker group (Train, after a worker died)
            "attempts": max(starts.get(tid, 0), len(read_jsonl(run / WORKER_STARTS))),
            # the best predictor of each epoch (any of the method's predictors)
            "curve": [next((v for k, v in r.items() if k.endswith("_dice_last")), 0) for r in epochs],
            "config": run / "config.yaml",
        })
    return rows


def below_floor(study: Study, r: dict) -> list[str]:
    """Where a trial does not beat predicting foreground everywhere."""
    out = []
    value = r["metrics"].get(study.metric)
    if study.metric.endswith("dice") and _num(value) and _num(r["sel_floor"]) and value <= r["sel_floor"]:
        out.append(_split(study))
    if _num(r["test_dice"]) and _num(r["test_floor"]) and r["test_dice"] <= r["test_floor"]:
        out.append("test")
    return out


def best_row(study: Study, rows: list[dict]) -> dict | None:
    done = [r for r in rows if r["state"] == "COMPLETE" and _num(r["metrics"][study.metric])]
    if not done:
        return None
    pick = max if study.mode == "max" else min
    return pick(done, key=lambda r: r["metrics"][study.metric])


# ---------------------------------------------------------------------- writing
def write_csv(study: Study, rows: list[dict], path: Path) -> None:
    keys = [p.key for p in study.space]
    spread = [f"{m}_{what}" for m in study.metrics for what in ("ci95", "seeds")] if study.seeds > 1 else []
    head = ["trial_id", "number", "state"] + keys + study.metrics + spread + ["test_dice", "epochs", "wall_s",
                                                                               "stage1", "attempts"]
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(head)
        for r in rows:
            out.writerow([r["trial_id"], r["number"], r["state"]] + [r["params"].get(k, "") for k in keys]
                         + [r["metrics"].get(m) for m in study.metrics]
                         + ([v for m in study.metrics for v in (r["ci95"].get(m), json.dumps(r["per_seed"].get(m)))]
                            if spread else [])
                         + [r["test_dice"], r["epochs"], r["wall_s"], r["stage1"], r["attempts"]])


def tuned_seeds(study: Study) -> set[int]:
    """Every ``seed`` and ``data.split_seed`` value the study's trials trained with."""
    from .group import tuning_seeds

    return tuning_seeds(study.base_config(), study.seeds)


def write_best(study: Study, best: dict, study_dir: Path) -> None:
    cfg = yaml.safe_load(best["config"].read_text())
    cfg["name"] = f"{study.name}-best"
    value = best["metrics"][study.metric]
    spread = f" ± {best['ci95'][study.metric]:.4f} (95 %, {study.seeds} seeds)" if _num(best["ci95"].get(study.metric)) else ""
    head = (f"# Best trial {best['trial_id']} of study {study.name}: {study.metric} = {value:.4f}{spread}\n"
            f"# Searched: {json.dumps(best['params'])}\n"
            f"# Tuning seeds (seed and data.split_seed values its trials trained with): {sorted(tuned_seeds(study))}\n"
            f"# Run it: python -m diffseg train --config {study_dir / 'best.yaml'}\n")
    (study_dir / "best.yaml").write_text(head + yaml.safe_dump(cfg, sort_keys=False))


def data_line(study: Study) -> str:
    """Which data the trials read, and what the study changed in its base config."""
    from diffseg import config as config_mod

    cfg = study.base_config()
    root = study.data_root or "the trial machines' $DIFFSEG_DATA or ../shared/data"
    try:
        base = config_mod.to_flat(config_mod.load(study.base))
        changed = {k: v for k, v in config_mod.to_flat(cfg).items() if base.get(k) != v and k != "name"}
    except Exception:  # the base file moved since the study began: the resolved config still holds
        changed = None
    what = ("its base config unchanged" if changed == {} else "base config changes unknown (the file moved)"
            if changed is None else "changes to the base config: " + ", ".join(f"`{k}={v}`" for k, v in changed.items()))
    return f"- data: dataset `{cfg.data.dataset}` under {root}; {what}"


def markdown(study: Study, rows: list[dict], best: dict | None, plots: dict, study_dir: Path) -> str:
    counts = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    ran = sum(r["stage1"] == "ran" for r in rows)
    reused = sum(r["stage1"] == "reused" for r in rows)
    lines = [f"# Study {study.name}", "",
             f"- study file: `{study.source}`; base config `{study.base}`; {study.searcher} search (seed "
             f"{study.seed}), scheduler {study.scheduler}; objective {study.metric} ({study.mode})"
             + (f", second objective {study.second_metric} ({study.second_mode})" if study.second_metric else ""),
             f"- trials: {len(rows)} of {study.trials} asked; "
             + ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items())),
             f"- stage-1 pretrainings: {ran} run, {reused} reused from the study's shared pretrained networks",
             data_line(study)]
    if study.seeds > 1:
        cfg = study.base_config()
        lines.append(f"- seeds: each trial trained its configuration {study.seeds} times (seed {cfg.seed}+i, "
                     f"data.split_seed {cfg.data.split_seed}+i, i < {study.seeds}); the objective is their mean, "
                     f"shown ± the half-width of its 95 % Student-t interval; test Dice is the seeds' mean. Tuning "
                     f"seeds: {sorted(tuned_seeds(study))}; score best.yaml on others")
    if study.enqueue or study.warm_start:
        lines.append("- warm start: " + "; ".join(
            (["the first trial ran the base config's own values"] if study.enqueue == "base" else [])
            + ([f"the finished trials of study {study.warm_start} informed the searcher"] if study.warm_start else [])))
    floors = {part: next((r[key] for r in rows if _num(r[key])), None)
              for part, key in ((_split(study), "sel_floor"), ("test", "test_floor"))}
    if any(_num(v) for v in floors.values()):
        lines.append("- predicting foreground everywhere scores Dice " + ", ".join(
            f"{v:.4f} on {part}" for part, v in floors.items() if _num(v))
                     + ": a trial must beat it to carry any signal (the last column flags those that do not)")
    lines.append("")
    if best is not None:
        lines += [f"**Best trial** {best['trial_id']}: {study.metric} {best['metrics'][study.metric]:.4f}"
                  + (f", test Dice {best['test_dice']:.4f}" if _num(best["test_dice"]) else "")
                  + f"; parameters `{json.dumps(best['params'])}`. Ready-to-run config: `best.yaml`."
                  + ("" if not below_floor(study, best) else
                     f" **It does not beat predicting foreground everywhere on "
                     f"{' and '.join(below_floor(study, best))}.**"), ""]
    else:
        lines += ["No trial has completed yet, so there is no best.yaml.", ""]
    lines += _table(study, rows) + [""]
    diverged = [r for r in rows if r["state"] == "DIVERGED"]
    if diverged:
        lines += ["Diverged trials (recorded with the worst objective, not retried: the same settings "
                  "diverge again):"] + [f"- {r['trial_id']}: {r['reason']}" for r in diverged] + [""]
    abandoned = [r for r in rows if r["state"] == "ABANDONED"]
    if abandoned:
        lines += ["Abandoned run folders (started by a driver that was killed before Tune saved the "
                  "trial; its parameters ran again as another trial): "
                  + ", ".join(r["trial_id"] for r in abandoned), ""]
    if study.second_metric:
        lines += _pareto(study, rows) + [""]
    for title, name in (("Validation Dice per trial over epochs", "curves"),
                        ("Parameter importance", "importance"), ("Parallel coordinates", "parallel")):
        lines.append(f"## {title}")
        if plots.get(name) == "report.html":  # Optuna's interactive figures
            lines.append(f"Optuna's parameter importance, parallel coordinates, history and slices: "
                         f"[report.html](report.html) (opens from this folder, no server)")
        else:
            lines.append(f"![{name}]({plots[name]})" if name in plots and plots[name].endswith(".png")
                         else f"_{plots.get(name, 'not drawn')}_")
        complete = sum(r["state"] == "COMPLETE" for r in rows)
        if name == "importance" and plots.get(name) == "report.html" and complete < FEW_TRIALS:
            lines.append(f"_Caveat: importance rests on {complete} complete trial(s), fewer than {FEW_TRIALS}; "
                         f"it cannot rank the parameters yet._")
        lines.append("")
    lines += ["## Look further",
              f"- TensorBoard (every trial's curves): `tensorboard --logdir {study_dir}`",
              f"- Optuna dashboard: `optuna-dashboard {study_dir / 'optuna.journal'}`",
              f"- one trial's run folder: `{study_dir / 'trials'}/<trial id>/` (summary.json, metrics.jsonl)"]
    return "\n".join(lines) + "\n"


def _table(study: Study, rows: list[dict]) -> list[str]:
    keys = [p.key for p in study.space]
    head = ["trial", "state"] + keys + study.metrics + ["test Dice", "epochs", "wall s", "stage 1",
                                                         "beats all-foreground"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["trial_id"], r["state"].lower()] + [_fmt(r["params"].get(k, "-")) for k in keys]
        cells += [_fmt(r["metrics"].get(m)) + (f" ± {_fmt(r['ci95'][m])}" if _num(r["ci95"].get(m)) else "")
                  for m in study.metrics]
        cells += [_fmt(r["test_dice"]), str(r["epochs"]), _fmt(r["wall_s"]), r["stage1"] or "-"]
        below = below_floor(study, r)
        cells.append("**no** (" + ", ".join(below) + ")" if below else
                     "yes" if _num(r["sel_floor"]) or _num(r["test_floor"]) else "-")
        out.append("| " + " | ".join(cells) + " |")
    return out


def _pareto(study: Study, rows: list[dict]) -> list[str]:
    done = [r for r in rows if r["state"] == "COMPLETE" and all(_num(r["metrics"][m]) for m in study.metrics)]
    sign = [1 if m == "max" else -1 for m in study.modes]

    def dominated(a, b):  # b dominates a
        va = [s * a["metrics"][m] for s, m in zip(sign, study.metrics)]
        vb = [s * b["metrics"][m] for s, m in zip(sign, study.metrics)]
        return all(y >= x for x, y in zip(va, vb)) and any(y > x for x, y in zip(va, vb))

    front = [r for r in done if not any(dominated(r, o) for o in done if o is not r)]
    return ["## Pareto front", ""] + [f"- {r['trial_id']}: " + ", ".join(
        f"{m} {_fmt(r['metrics'][m])}" for m in study.metrics) for r in front]


def _fmt(value) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# ---------------------------------------------------------------------- plots
