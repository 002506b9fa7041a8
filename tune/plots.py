"""The study report's static plots (matplotlib, from the report's rows; no Ray): learning curves
and a parallel-coordinates view of every trial, pruned ones included. Optuna's own interactive
figures are in report.html (tune/report_html.py)."""
from __future__ import annotations

import math
from pathlib import Path

from .study import Study


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def split_of(study: Study) -> str:
    """The split the objective is measured on: val, or test under protocol=paper."""
    return "test" if study.metric.startswith("test_") else "val"


def make_plots(study: Study, rows: list[dict], study_dir: Path, ot=None) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    folder = study_dir / "plots"
    folder.mkdir(exist_ok=True)
    # parameter importance (and Optuna's own parallel coordinates, history and slices) are in
    # report.html (tune/report_html.py); this parallel-coordinates view also shows pruned trials
    return {"curves": _curves(study, rows, folder), "parallel": _parallel(study, rows, folder)}


def _curves(study: Study, rows: list[dict], folder: Path) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for r in rows:
        if r["curve"]:
            style = "--" if r["state"] == "PRUNED" else "-"
            ax.plot(range(1, len(r["curve"]) + 1), r["curve"], style, marker="o", label=r["trial_id"])
    floor = next((r["sel_floor"] for r in rows if is_number(r["sel_floor"])), None)
    if floor is not None:
        ax.axhline(floor, color="grey", linestyle=":", label="all-foreground")
    ax.set_xlabel("epoch", fontsize=11)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel(f"{'test' if split_of(study) == 'test' else 'validation'} Dice\n(best predictor of the epoch)",
                  fontsize=11)
    ax.set_title("one line per trial; dashed: stopped early (pruned)", fontsize=11)
    ax.grid(alpha=0.3)
    if any(r["curve"] for r in rows):  # beside the axes, so many trials stay legible
        ax.legend(fontsize=8, ncol=1 + len(rows) // 16, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(folder / "val_dice_curves.png", dpi=110)
    plt.close(fig)
    return "plots/val_dice_curves.png"


FEW_TRIALS = 5  # below this many complete trials, parameter importance is noise


def _parallel(study: Study, rows: list[dict], folder: Path) -> str:
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize

    keys = [p.key for p in study.space]
    scored = [r for r in rows if is_number(r["metrics"].get(study.metric))]
    if not scored:
        return "parallel coordinates not available: no trial has reported yet"
    axes = keys + [study.metric]
    fig, ax = plt.subplots(figsize=(1.9 * len(axes) + 2, 4.8))
    values = [r["metrics"][study.metric] for r in scored]
    lo, hi = min(values), max(values)
    norm = Normalize(lo, hi if hi > lo else lo + 1e-9)
    cmap = plt.get_cmap("viridis")
    for r in scored:
        ys = [_position(study, k, r["params"].get(k), scored) for k in keys]
        ys.append(float(norm(r["metrics"][study.metric])) if hi > lo else 0.5)
        ax.plot(range(len(axes)), ys, color=cmap(norm(r["metrics"][study.metric])), alpha=0.85, linewidth=1.6,
                linestyle="--" if r["state"] == "PRUNED" else "-")
    for i, key in enumerate(axes):  # each axis with its own values, bottom to top
        ax.axvline(i, color="grey", linewidth=0.8)
        for y, text in _ticks(study, key, lo, hi):
            ax.text(i + 0.03, y, text, fontsize=8, va="center")
    ax.set_xticks(range(len(axes)), axes, rotation=15, fontsize=9)
    ax.set_yticks([])
    ax.set_ylim(-0.15, 1.05)
    ax.set_title("each line a trial; dashed: pruned; at -0.1: parameter not sampled (conditional)", fontsize=10)
    bar = fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, pad=0.02)
    bar.set_label(study.metric, fontsize=10)
    fig.tight_layout()
    fig.savefig(folder / "parallel_coordinates.png", dpi=110)
    plt.close(fig)
    return "plots/parallel_coordinates.png"


def _ticks(study: Study, key: str, lo: float, hi: float) -> list[tuple[float, str]]:
    """Labels along one axis of the parallel-coordinates plot."""
    if key == study.metric:
        return [(0.0, f"{lo:.3g}"), (1.0, f"{hi:.3g}")]
    param = next(p for p in study.space if p.key == key)
    if param.kind == "choice":
        n = max(1, len(param.choices) - 1)
        return [(i / n, str(c)) for i, c in enumerate(param.choices)]
    ends = [(0.0, f"{param.low:.3g}"), (1.0, f"{param.high:.3g}")]
    if param.kind == "int" and param.high - param.low < 2:
        return ends
    mid = math.sqrt(param.low * param.high) if param.log else (param.low + param.high) / 2
    return ends + [(0.5, f"{mid:.3g}")]


def _position(study: Study, key: str, value, rows: list[dict]) -> float:
    """Where ``value`` sits on its axis, 0..1; -0.1 marks an inactive conditional parameter."""
    if value is None:
        return -0.1
    param = next(p for p in study.space if p.key == key)
    if param.kind == "choice":
        return param.choices.index(value) / max(1, len(param.choices) - 1) if value in param.choices else 0.5
    lo, hi = float(param.low), float(param.high)
    if param.log:
        return (math.log(value) - math.log(lo)) / (math.log(hi) - math.log(lo))
    return (value - lo) / (hi - lo)
