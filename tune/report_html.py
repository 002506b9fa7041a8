"""The study report as one HTML page (``report.html`` beside ``report.md``): Optuna's own
interactive figures (optimisation history, parallel coordinates, parameter importance, slices)
from the study's journal, drawn by ``optuna.visualization``. plotly.js is written into the page,
so it opens from the study folder with no server and no network."""
from __future__ import annotations

import contextlib
import html
import warnings
from pathlib import Path

from diffseg import durable

# (title, optuna.visualization function, whether it needs two or more complete trials)
FIGURES = (("Optimisation history", "plot_optimization_history"),
           ("Parallel coordinates (complete trials)", "plot_parallel_coordinate"),
           ("Parameter importance", "plot_param_importances"),
           ("Slices: the objective against each parameter", "plot_slice"))


def figures(study, ot) -> list[tuple[str, object | str]]:
    """(title, plotly figure) per figure, or (title, why it is missing)."""
    import optuna.visualization as vis

    target = (lambda t: t.values[0]) if study.second_metric else None
    out = []
    with optuna_quiet():
        for title, name in FIGURES:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # experimental and few-trial warnings: expected in small studies
                    fig = getattr(vis, name)(ot, target=target, target_name=study.metric)
                out.append((title, fig))
            except Exception as exc:  # too few complete trials, no parameter varied, ...
                out.append((title, f"not available: {exc}"))
        if study.second_metric:
            try:
                out.append(("Pareto front", vis.plot_pareto_front(ot, target_names=study.metrics)))
            except Exception as exc:
                out.append(("Pareto front", f"not available: {exc}"))
    return out


@contextlib.contextmanager
def optuna_quiet():
    """Optuna's own "no completed trials" lines off the console while the figures are drawn (an
    interrupted or young study has none; the page says so per figure)."""
    import optuna

    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)


def write_html(study, ot, study_dir: Path) -> Path | None:
    """``report.html`` from the Optuna study ``ot``; None without a journal to draw from."""
    if ot is None:
        return None
    parts, script_written = [], False
    for title, fig in figures(study, ot):
        parts.append(f"<h2>{html.escape(title)}</h2>")
        if isinstance(fig, str):
            parts.append(f"<p class='missing'>{html.escape(fig)}</p>")
            continue
        # plotly.js once, inline, with the first figure: the page works offline
        parts.append(fig.to_html(full_html=False, include_plotlyjs=not script_written, div_id=_div_id(title)))
        script_written = True
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Study {html.escape(study.name)}</title>"
            f"</head><body><h1>Study {html.escape(study.name)}: {html.escape(study.metric)} ({study.mode})</h1>"
            f"<p>{len(ot.trials)} Optuna trials (copies of a warm-start study's included); the tables, learning "
            f"curves and best config are in report.md beside this page.</p>" + "\n".join(parts) + "</body></html>")
    path = study_dir / "report.html"
    durable.write_text(path, page)
    return path


def _div_id(title: str) -> str:
    """fig-optimisation-history, fig-parameter-importance, ... (what a reader's script can find)."""
    import re

    return "fig-" + re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
