"""Method comparisons read from MLflow (any tracking URI): mean ± std per method, the paired
difference to a reference method seed by seed, and the runs behind every number.

A "cell" run (role tag `cell`, status FINISHED) is one (dataset, ratio, method, seed). An
ablation experiment holds "trial" runs instead, one per setting with every seed's accuracy
(`seed<N>.test_acc`); their rows are `method[setting]` (the reference method's trial has no
setting), and the cell runs the trials built are not rows of their own. When an experiment holds
several runs for the same row and seed (re-runs), the latest counts. With several experiments,
rows are `row@experiment`.
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from diffinject.core.errors import ConfigError
from diffinject.reporting.runs import FinishedRun, find_experiment, finished_runs, latest, mean_std, per_seed_difference
from diffinject.tracking.client import Tracker


@dataclass(frozen=True)
class CellRun:
    experiment: str
    dataset: str
    ratio: str
    method: str
    seed: int
    reported_acc: float  # fraction: the unbiased accuracy of the selected weights
    run_id: str
    start_time: int


@dataclass
class Row:
    label: str
    by_seed: dict[int, float] = field(default_factory=dict)     # seed -> unbiased accuracy (%)
    runs: dict[int, str] = field(default_factory=dict)          # seed -> run id
    diff: dict[int, float] = field(default_factory=dict)        # seed -> accuracy - reference's (points)


def load_cell_runs(tracker: Tracker, experiments: list[str], datasets=None, ratios=None, methods=None) -> list[CellRun]:
    """The latest finished run per (experiment, dataset, ratio, row, seed): from the trial runs
    of an ablation experiment, else from its cell runs. `methods` filters by method."""
    cells: list[CellRun] = []
    for name in experiments:
        found = find_experiment(tracker, name)
        of_experiment = []
        for role in ("trial", "cell"):
            of_experiment = [cell for run in finished_runs(tracker, found, role) for cell in _cells_of(name, run)]
            if of_experiment:
                break
        cells += [cell for cell in of_experiment
                  if not ((datasets and cell.dataset not in datasets) or (ratios and cell.ratio not in ratios) or
                          (methods and cell.method.split("[")[0] not in methods))]
    newest = latest(cells, key=lambda c: (c.experiment, c.dataset, c.ratio, c.method, c.seed),
                    start_time=lambda c: c.start_time)
    return list(newest.values())


def _cells_of(experiment: str, run: FinishedRun) -> list[CellRun]:
    """A cell run's one accuracy, or a trial run's accuracy per seed (row `method[setting]`)."""
    tags, metrics = run.tags, run.metrics
    if run.role == "cell":
        if "reported_acc" not in metrics:
            return []
        by_seed = {int(tags["seed"]): metrics["reported_acc"]}
        row = tags["method"]
    else:
        by_seed = {int(k[4:].split(".")[0]): v / 100.0 for k, v in metrics.items()
                   if k.startswith("seed") and k.endswith(".test_acc")}
        row = f"{tags['method']}[{tags['variant']}]" if tags.get("variant") else tags["method"]
    cell_runs = json.loads(tags.get("cell_runs", "{}"))  # a trial's number per seed comes from that cell's run
    return [CellRun(experiment, tags["dataset"], tags["ratio"], row, seed, acc,
                    cell_runs.get(str(seed), run.run_id), run.start_time) for seed, acc in by_seed.items()]


def compare(runs: list[CellRun], reference: str) -> dict[tuple[str, str], list[Row]]:
    """(dataset, ratio) -> rows; the reference row first, each row's `diff` paired by seed."""
    several = len({r.experiment for r in runs}) > 1
    groups: dict = defaultdict(dict)
    for r in runs:
        label = f"{r.method}@{r.experiment}" if several else r.method
        row = groups[(r.dataset, r.ratio)].setdefault(label, Row(label))
        row.by_seed[r.seed] = 100.0 * r.reported_acc
        row.runs[r.seed] = r.run_id
    out = {}
    for column, rows in sorted(groups.items(), key=lambda kv: (kv[0][0], float(kv[0][1]))):
        ref = rows.get(reference) or next((row for label, row in rows.items() if label.split("@")[0] == reference),
                                          None)
        if ref is None:
            raise ConfigError(f"reference method {reference!r} has no finished runs for {column[0]} {column[1]}%; "
                              f"found {', '.join(sorted(rows))}")
        for row in rows.values():
            row.diff = per_seed_difference(row.by_seed, ref.by_seed)
        out[column] = [ref] + sorted((r for r in rows.values() if r is not ref), key=lambda r: r.label)
    return out


def format_comparison(table: dict[tuple[str, str], list[Row]], reference: str, show_runs: bool = True) -> str:
    lines = []
    for (dataset, ratio), rows in table.items():
        lines.append(f"\n{dataset} @ {ratio}% — unbiased accuracy (%), and the paired difference to {reference} "
                     f"(points, mean ± std over the seeds both have)")
        header = ["method", "accuracy", "seeds", f"Δ vs {reference}", "Δ per seed"]
        body = [[row.label, mean_std(row.by_seed.values()), str(len(row.by_seed)), mean_std(row.diff.values(), signed=True),
                 " ".join(f"s{s}:{d:+.2f}" for s, d in row.diff.items())] for row in rows]
        widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
        for row in [header, ["-" * w for w in widths]] + body:
            lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if show_runs:
            lines.append("runs:")
            for row in rows:
                lines.append(f"  {row.label}: " + ", ".join(f"s{s}={rid}" for s, rid in sorted(row.runs.items())))
    return "\n".join(lines).lstrip("\n") if lines else "no finished cell runs match"


def difference_plot(path, table: dict[tuple[str, str], list[Row]], reference: str):
    """Paired differences to the reference per method and column: mean with std error bars,
    every seed as a dot."""
    from diffinject.core.plots import pyplot, save_figure

    plt = pyplot()
    columns = list(table)
    fig, axes = plt.subplots(1, len(columns), figsize=(4.2 * len(columns), 3.6), squeeze=False)
    for ax, column in zip(axes[0], columns):
        rows = [r for r in table[column] if r.diff]
        for i, row in enumerate(rows):
            d = np.asarray(list(row.diff.values()))
            ax.bar(i, d.mean(), yerr=d.std(ddof=1) if len(d) > 1 else 0.0, capsize=3, color="tab:blue", alpha=0.6)
            ax.scatter(np.full(len(d), i), d, color="black", s=10, zorder=3)
        ax.axhline(0.0, color="gray", linewidth=0.8)
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([r.label for r in rows], rotation=30, ha="right", fontsize=7)
        ax.set_title(f"{column[0]} {column[1]}%", fontsize=9)
        ax.set_ylabel(f"accuracy − {reference} (points)")
    fig.tight_layout()
    return save_figure(fig, path)
