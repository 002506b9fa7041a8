"""The benchmark's tables and plots, from its folder alone (no Ray): results.csv, table.md
(mean and 95 % confidence interval over seeds, paired comparisons of the paper's method against
each baseline), and plots."""
from __future__ import annotations

import csv
import json
import math
import re
from collections import defaultdict
from pathlib import Path

import yaml

from diffseg.intervals import mean_ci

PAPER = "diffusion_cps"
COLUMNS = ["dataset", "ratio", "seed", "method", "base_method", "cell", "kept", "test_dice", "test_jaccard", "test_dice_mean",
           "test_hd95_mean", "test_asd_mean", "test_all_foreground_dice", "val_dice", "val_jaccard", "wall_s",
           "peak_memory_mb", "pl_cost", "device", "resolution", "protocol", "run_dir"]
METRICS = (("test_dice", "Dice", "max"), ("test_jaccard", "Jaccard", "max"), ("test_hd95_mean", "HD95", "min"),
           ("test_asd_mean", "ASD", "min"))


# a cell's folder: dataset-variant-rNN-sS (experiments.benchmark.Cell.name; a variant has no '-')
CELL = re.compile(r"^(?P<dataset>.+)-(?P<variant>[A-Za-z0-9_.]+)-r\d+-s-?\d+$")


def collect(bench_dir: Path) -> list[dict]:
    """One row per finished cell; ``method`` is the row's name (a variant's, or its method's)."""
    rows = []
    for run in sorted((bench_dir / "trials").glob("*")):
        summary_path = run / "summary.json"
        if not summary_path.exists():
            continue
        s = json.loads(summary_path.read_text())
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        test, val = s.get("test") or {}, s.get("val") or {}
        match = CELL.match(run.name)
        rows.append({"dataset": cfg["data"]["dataset"], "ratio": cfg["data"]["labeled_ratio"], "seed": cfg["seed"],
                     "method": match["variant"] if match else cfg["method"], "base_method": cfg["method"],
                     "cell": run.name, "kept": s["selected"]["predictor"],
                     "test_dice": test.get("dice"), "test_jaccard": test.get("jaccard"),
                     "test_dice_mean": test.get("dice_mean"), "test_hd95_mean": test.get("hd95_mean"),
                     "test_asd_mean": test.get("asd_mean"), "test_all_foreground_dice": test.get("all_foreground_dice"),
                     "val_dice": val.get("dice"), "val_jaccard": val.get("jaccard"), "wall_s": s.get("wall_s"),
                     "peak_memory_mb": s.get("peak_memory_mb"), "pl_cost": s.get("pl_cost"), "device": s.get("device"),
                     "resolution": s.get("resolution"), "protocol": s.get("protocol"), "run_dir": str(run)})
    return rows


def paired(rows: list[dict], baseline: str, paper: str = PAPER, words=("paper wins", "paper loses")
           ) -> dict[tuple, dict]:
    """Per dataset and ratio: ``paper`` (the paper's method, or a variant) minus ``baseline``
    (a baseline, or the variant's parent), seed by seed, with the mean difference's interval; a
    win or a loss only when the interval excludes zero."""
    by = {(r["dataset"], r["ratio"], r["seed"], r["method"]): r["test_dice"] for r in rows}
    out = {}
    for dataset, ratio in sorted({(r["dataset"], r["ratio"]) for r in rows}):
        diffs = [by[(dataset, ratio, s, paper)] - by[(dataset, ratio, s, baseline)]
                 for s in sorted({r["seed"] for r in rows})
                 if by.get((dataset, ratio, s, paper)) is not None and by.get((dataset, ratio, s, baseline)) is not None]
        mean, half = mean_ci(diffs)
        verdict = ("cannot tell" if not math.isfinite(half) or abs(mean) <= half
                   else words[0] if mean > 0 else words[1])
        out[(dataset, ratio)] = {"diffs": diffs, "mean": mean, "half": half, "verdict": verdict}
    return out


def write(bench_dir: str | Path) -> Path:
    bench_dir = Path(bench_dir)
    bench = yaml.safe_load((bench_dir / "benchmark.yaml").read_text())
    rows = collect(bench_dir)
    with open(bench_dir / "results.csv", "w", newline="") as fh:
        out = csv.DictWriter(fh, COLUMNS)
        out.writeheader()
        out.writerows(rows)
    plots = make_plots(rows, bench_dir)
    (bench_dir / "table.md").write_text(markdown(bench, rows, plots))
    return bench_dir / "table.md"


def _fmt(mean: float, half: float, digits: int = 3) -> str:
    if not math.isfinite(mean):
        return "-"
    return f"{mean:.{digits}f} ± {half:.{digits}f}" if math.isfinite(half) else f"{mean:.{digits}f}"


def markdown(bench: dict, rows: list[dict], plots: dict) -> str:
    groups = defaultdict(list)
    for r in rows:
        groups[(r["dataset"], r["ratio"], r["method"])].append(r)
    lines = [f"# Benchmark {bench['name']}", "",
             f"- preset `{bench['preset']}`; {len(rows)} finished cells; seeds {list(bench['seeds'])}; "
             f"methods {', '.join(bench['methods'])}",
             f"- {protocol_line(rows)}; mean ± half-width of the 95 % "
             "Student-t interval over seeds; **bold**: the best mean of its column (higher Dice and Jaccard, "
             "lower HD95 and ASD, in pixels)", ""]
    lines += tuned_caveat(bench) + against_published(bench, groups) + the_field(bench) + against_parents(bench, rows)
    for dataset in sorted({r["dataset"] for r in rows}):
        floor = next((r["test_all_foreground_dice"] for r in rows if r["dataset"] == dataset
                      and r["test_all_foreground_dice"] is not None), None)
        lines += [f"## {dataset}", ""]
        if floor is not None:
            lines += [f"Predicting foreground everywhere scores test Dice {floor:.3f}.", ""]
        for ratio in sorted({r["ratio"] for r in rows if r["dataset"] == dataset}):
            methods = [m for m in bench["methods"] if (dataset, ratio, m) in groups]
            stats = {m: {key: mean_ci([r[key] for r in groups[(dataset, ratio, m)]]) for key, _, _ in METRICS}
                     for m in methods}
            best = {key: (max if how == "max" else min)(
                (stats[m][key][0] for m in methods if math.isfinite(stats[m][key][0])), default=math.nan)
                for key, _, how in METRICS}
            lines += [f"### {dataset}, {round(ratio * 100)} % labels", "",
                      "| method | n | " + " | ".join(label for _, label, _ in METRICS) + " | wall s per cell |",
                      "|---|---|" + "---|" * (len(METRICS) + 1)]
            for m in methods:
                cells = []
                for key, _, _ in METRICS:
                    mean, half = stats[m][key]
                    text = _fmt(mean, half, 1 if "hd95" in key or "asd" in key else 3)
                    cells.append(f"**{text}**" if mean == best[key] and len(methods) > 1 else text)
                wall = mean_ci([r["wall_s"] for r in groups[(dataset, ratio, m)]])[0]
                lines.append(f"| {m} | {len(groups[(dataset, ratio, m)])} | " + " | ".join(cells) + f" | {wall:.0f} |")
            lines.append("")
    if PAPER in bench["methods"]:
        lines += ["## The paper's method against each baseline (paired by seed)", "",
                  "Test Dice of the paper's method minus the baseline's, seed by seed, and the mean difference "
                  "with its 95 % interval: a win or a loss only when the interval excludes 0.", "",
                  "| dataset | labels | baseline | differences | mean ± 95 % CI | verdict |", "|---|---|---|---|---|---|"]
        for baseline in [m for m in bench["methods"] if m != PAPER]:
            for (dataset, ratio), p in paired(rows, baseline).items():
                if p["diffs"]:
                    lines.append(f"| {dataset} | {round(ratio * 100)} % | {baseline} | "
                                 + ", ".join(f"{d:+.3f}" for d in p["diffs"])
                                 + f" | {_fmt(p['mean'], p['half'])} | {p['verdict']} |")
        lines.append("")
    lines += ["## Cost", "", "Wall time per cell at equal iterations (the paper's method also pays its stage 1, "
              "shared between cells with the same stage-1 key; see `diffseg bench` for per-step costs).", ""]
    for name, path in plots.items():
        lines += [f"![{name}]({path})", ""]
    return "\n".join(lines)


def tuned_caveat(bench: dict) -> list[str]:
    """``tuned:`` gives the paper's method a study's best config and the baselines their defaults:
    the table says so, as its paired verdicts then compare a tuned method with untuned ones."""
    if bench.get("tune"):
        section, rows = bench["tune"], sorted(bench.get("tuned_rows") or {})
        return [f"**Every method tuned alike.** Each row ran its own study of {section['trials']} trials before its "
                f"cells (study file `{section['study']}`, the row's own space, tuning seed "
                f"{section['seed'] if section['seed'] >= 0 else max(bench['seeds']) + 1}, never a final seed); its "
                f"cells run the study's best config. Tuned rows: {', '.join(rows) or 'none yet'}; the studies are in "
                f"`studies/<row>/` (report.md each).", ""]
    tuned = bench.get("tuned") or {}
    if not tuned:
        return []
    where = ", ".join(f"{d} ({p})" for d, p in sorted(tuned.items()))
    return [f"**Tuned against untuned.** {PAPER} runs a study's best config on {where}; every other method runs "
            f"its defaults. Its wins below are over baselines that were not tuned: not a fair comparison "
            f"of the methods.", ""]


def protocol_line(rows: list[dict]) -> str:
    """How the cells were selected and scored, from their summaries."""
    protocols = {r["protocol"] for r in rows} - {None}
    sizes = {"original": "the images' own size", "training": "the training size, pooled"}
    where = " and ".join(sorted({sizes.get(r["resolution"], str(r["resolution"])) for r in rows
                                 if r["resolution"]})) or "-"
    if "paper" in protocols:
        return (f"**checkpoint and threshold selected on the TEST split** (protocol=paper, the published "
                f"protocol: not an honest estimate), scored at {where}")
    return f"selected on validation, test split scored once per cell at {where}"


def against_published(bench: dict, groups: dict) -> list[str]:
    """Each row with a published value: ours in percent (mean, 90 % and 95 % intervals over the
    seeds; the authors printed 90 %) beside it, and the difference."""
    reference = bench.get("reference") or {}
    if not reference:
        return []
    lines = ["## Against the published values", "",
             "Dice in percent. Ours: mean over seeds ± half-width of the Student-t interval (90 %, as the "
             "authors print it; 95 %). Difference: our mean minus the published value.", "",
             "| cell | published | protocol of the published value | ours | ± 90 % | ± 95 % | n | difference |",
             "|---|---|---|---|---|---|---|---|"]
    for key, ref in reference.items():
        dataset, rest = key.split("-", 1)
        variant, ratio = rest.rsplit("-r", 1)
        found = [r for (d, q, m), rs in groups.items() if d == dataset and m == variant
                 and round(q * 100) == int(ratio) for r in rs]
        values = [100 * r["test_dice"] for r in found if r["test_dice"] is not None]
        mean, h90 = mean_ci(values, 0.90)
        _, h95 = mean_ci(values, 0.95)
        diff = f"{mean - ref['dice']:+.2f}" if math.isfinite(mean) else "-"
        lines.append(f"| {key} | {ref['dice']:.2f} | {ref.get('protocol', '')} | "
                     + (f"{mean:.2f} | {h90:.2f} | {h95:.2f}" if math.isfinite(mean) else "- | - | -")
                     + f" | {len(values)} | {diff} |")
    return lines + ["", "Sources: " + "; ".join(sorted({r["source"] for r in reference.values()})), ""]


def the_field(bench: dict) -> list[str]:
    """Published values of methods the benchmark does not run: where the field stands, not a row."""
    field_values = bench.get("literature") or {}
    if not field_values:
        return []
    lines = ["## The field's published values (methods not run here)", "",
             "Context, not a comparison: other methods, other training budgets and, for most, other protocols.", "",
             "| method and setting | Dice (%) | protocol | source |", "|---|---|---|---|"]
    lines += [f"| {label} | {v['dice']:.2f} | {v.get('protocol', '')} | {v['source']} |" for label, v in field_values.items()]
    return lines + [""]


def against_parents(bench: dict, rows: list[dict]) -> list[str]:
    """Each named variant against the plain method it varies, paired by seed."""
    pairs = [(name, v["method"]) for name, v in (bench.get("variants") or {}).items()
             if v["method"] != name and v["method"] in bench["methods"]]
    if not pairs:
        return []
    lines = ["## Variants against their parents (paired by seed)", "",
             "| dataset | labels | variant | parent | differences | mean ± 95 % CI | verdict |",
             "|---|---|---|---|---|---|---|"]
    for name, parent in pairs:
        for (dataset, ratio), p in paired(rows, parent, name, (f"{name} higher", f"{name} lower")).items():
            if p["diffs"]:
                lines.append(f"| {dataset} | {round(ratio * 100)} % | {name} | {parent} | "
                             + ", ".join(f"{d:+.3f}" for d in p["diffs"])
                             + f" | {_fmt(p['mean'], p['half'])} | {p['verdict']} |")
    return lines + [""]


def make_plots(rows: list[dict], bench_dir: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return {}
    folder = bench_dir / "plots"
    folder.mkdir(exist_ok=True)
    datasets = sorted({r["dataset"] for r in rows})
    methods = sorted({r["method"] for r in rows})
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets) + 1, 4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for k, m in enumerate(methods):
            ratios = sorted({r["ratio"] for r in rows if r["dataset"] == dataset and r["method"] == m})
            stats = [mean_ci([r["test_dice"] for r in rows if (r["dataset"], r["ratio"], r["method"]) == (dataset, q, m)])
                     for q in ratios]
            means = [s[0] for s in stats]
            halves = [s[1] if math.isfinite(s[1]) else 0.0 for s in stats]
            # methods side by side around each ratio, so their interval bars do not hide each other
            xs = [q * 100 + (k - (len(methods) - 1) / 2) * 0.15 for q in ratios]
            line = ax.errorbar(xs, means, yerr=halves, marker="o", capsize=3, label=m)
            if len(xs) > 1:  # the band needs two ratios; a single ratio shows the bars alone
                ax.fill_between(xs, [a - b for a, b in zip(means, halves)], [a + b for a, b in zip(means, halves)],
                                alpha=0.12, color=line[0].get_color())
        all_ratios = sorted({r["ratio"] * 100 for r in rows if r["dataset"] == dataset})
        ax.set_xticks(all_ratios)
        ax.set_xlim(min(all_ratios) - 1, max(all_ratios) + 1)
        floor = next((r["test_all_foreground_dice"] for r in rows if r["dataset"] == dataset
                      and r["test_all_foreground_dice"] is not None), None)
        if floor is not None:
            ax.axhline(floor, color="grey", linestyle=":", label="all-foreground")
        ax.set_title(dataset)
        ax.set_xlabel("labeled images (%)")
        ax.set_ylabel("test Dice (mean, 95 % CI)")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.tight_layout()
    fig.savefig(folder / "dice_vs_ratio.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    walls = [mean_ci([r["wall_s"] for r in rows if r["method"] == m]) for m in methods]
    ax.bar(methods, [w[0] for w in walls], yerr=[w[1] if math.isfinite(w[1]) else 0 for w in walls], capsize=3)
    ax.set_ylabel("wall time per cell (s)")
    ax.set_title("cost per method (equal iterations)")
    ax.tick_params(axis="x", labelrotation=15)
    fig.tight_layout()
    fig.savefig(folder / "cost.png", dpi=110)
    plt.close(fig)
    return {"Dice against label ratio": "plots/dice_vs_ratio.png", "Cost per method": "plots/cost.png"}
