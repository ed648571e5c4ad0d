"""Results collector: reads finished runs from MLflow and prints mean +- std tables."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from .tracking import Tracker

COLUMNS = (("test_acc", "unbiased"), ("test_aligned_acc", "aligned"), ("test_conflicting_acc", "conflicting"))


def mean_std(values, signed: bool = False) -> str:
    """'mean ± sample std' of values; '—' when there are none."""
    v = np.asarray(list(values), dtype=float)
    if not len(v):
        return "—"
    return f"{v.mean():{'+' if signed else ''}.2f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.2f}"


@dataclass
class Cell:
    values: list[float]

    def __str__(self) -> str:
        if not self.values:
            return "-"
        return f"{mean_std(100.0 * np.asarray(self.values))} (n={len(self.values)})"


def collect(experiment: str, tracker: Tracker | None = None, run_ids: set[str] | None = None) -> dict:
    """{(dataset, ratio): {row: {metric: [values over seeds]}}} from finished runs (all of the
    experiment's, or only `run_ids`)."""
    tracker = tracker or Tracker()
    found = tracker.client.get_experiment_by_name(experiment)
    if found is None:
        return {}
    runs = tracker.client.search_runs(
        [found.experiment_id], "attributes.status = 'FINISHED'", max_results=50_000)
    table: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for run in runs:
        if run_ids is not None and run.info.run_id not in run_ids:
            continue
        tags, metrics = run.data.tags, run.data.metrics
        role = tags.get("diffinject.role")
        key = (tags.get("dataset"), tags.get("ratio"))
        if role == "cell":
            for metric, _ in COLUMNS:
                if metric in metrics:
                    table[key][tags["method"]][metric].append(metrics[metric])
        elif role == "stage1" and "precision_at_k" in metrics:
            row = table[key]["stage-1 bias classifier (GCE)"]
            row["precision_at_k"].append(metrics["precision_at_k"])
            for metric, _ in COLUMNS:
                if f"final_{metric}" in metrics:
                    row[metric].append(metrics[f"final_{metric}"])
    return table


def format_table(table: dict) -> str:
    """One block per (dataset, ratio): methods x (unbiased, aligned, conflicting) accuracy, %."""
    lines = []
    for (dataset, ratio), rows in sorted(table.items(), key=lambda kv: (kv[0][0] or "", float(kv[0][1] or 0))):
        lines.append(f"\n{dataset} @ {ratio}% bias-conflicting (accuracy %, mean ± std over seeds)")
        header = ["method"] + [label for _, label in COLUMNS] + ["precision@K"]
        body = []
        for method in sorted(rows, key=lambda m: (m.startswith("stage-1"), m)):
            metrics = rows[method]
            body.append([method] + [str(Cell(metrics.get(m, []))) for m, _ in COLUMNS]
                        + [str(Cell(metrics.get("precision_at_k", [])))])
        widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
        for row in [header, ["-" * w for w in widths]] + body:
            lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
    return "\n".join(lines).lstrip("\n") if lines else "no finished runs"
