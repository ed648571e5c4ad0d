"""Results collector: reads finished runs from MLflow and prints mean +- std tables."""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from .config import PATH_FIELDS
from .tracking import Tracker

# "unbiased": the reported test accuracy of the selected weights (BFFHQ: its bias-conflicting images)
COLUMNS = (("reported_acc", "unbiased"), ("test_aligned_acc", "aligned"), ("test_conflicting_acc", "conflicting"))


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


STAGE1_ROW = "stage-1 bias classifier (GCE)"


def config_of(role: str, params: dict[str, str]) -> dict[str, str]:
    """The logged config fields that make a run's result (what stays when a seed is rerun):
    for a cell everything but the seeds, the paths and how it ran (run.*); for stage 1 its
    `bias` section."""
    if role == "stage1":
        return {k: v for k, v in params.items() if k.startswith("bias.")}
    return {k: v for k, v in params.items()
            if not k.startswith("run.") and k not in PATH_FIELDS and k != "diffusion.seed"}


def collect(experiment: str, tracker: Tracker | None = None, run_ids: set[str] | None = None) -> dict:
    """{(dataset, ratio): {row: {metric: [values over seeds]}}} from finished runs (all of the
    experiment's, or only `run_ids`). Runs of one method with different configs are rows of
    their own, labelled by the fields that differ (`vanilla [classifier.lr=0.0001]`); a seed
    run more than once with the same config counts once, with its latest run."""
    tracker = tracker or Tracker()
    found = tracker.client.get_experiment_by_name(experiment)
    if found is None:
        return {}
    runs = tracker.client.search_runs([found.experiment_id], "attributes.status = 'FINISHED'", max_results=50_000,
                                      order_by=["attributes.start_time ASC"])
    latest: dict = {}  # (dataset, ratio, row, config) -> seed -> metrics of its latest run
    configs: dict = {}
    for run in runs:
        if run_ids is not None and run.info.run_id not in run_ids:
            continue
        tags, metrics = run.data.tags, run.data.metrics
        role = tags.get("diffinject.role")
        if role == "cell":
            row, values = tags["method"], {m: metrics[m] for m, _ in COLUMNS if m in metrics}
        elif role == "stage1" and "precision_at_k" in metrics:
            row = STAGE1_ROW
            values = {m: metrics[f"final_{m}"] for m, _ in COLUMNS if f"final_{m}" in metrics}
            values["precision_at_k"] = metrics["precision_at_k"]
        else:
            continue
        config = config_of(role, run.data.params)
        group = (tags.get("dataset"), tags.get("ratio"), row, json.dumps(config, sort_keys=True))
        configs[group] = config
        latest.setdefault(group, {})[tags.get("seed")] = values  # runs come oldest first
    table: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for group, by_seed in latest.items():
        dataset, ratio, row, _ = group
        siblings = [configs[g] for g in latest if g[:3] == group[:3]]
        label = _label(row, configs[group], siblings)
        for values in by_seed.values():
            for metric, value in values.items():
                table[(dataset, ratio)][label][metric].append(value)
    return table


def _label(row: str, config: dict, siblings: list[dict]) -> str:
    """`row`, or `row [field=value, ...]` with the fields in which its config differs from
    another config of the same row."""
    fields = sorted({k for other in siblings for k in set(config) | set(other) if config.get(k) != other.get(k)})
    if not fields:
        return row
    return f"{row} [" + ", ".join(f"{k}={config.get(k, '—')}" for k in fields) + "]"


def format_table(table: dict) -> str:
    """One block per (dataset, ratio): methods x (unbiased, aligned, conflicting) accuracy, %."""
    lines = []
    for (dataset, ratio), rows in sorted(table.items(), key=lambda kv: (kv[0][0] or "", float(kv[0][1] or 0))):
        lines.append(f"\n{dataset} @ {ratio}% bias-conflicting (accuracy %, mean ± std over seeds)")
        header = ["method"] + [label for _, label in COLUMNS] + ["precision@K"]
        body = []
        for method in sorted(rows, key=lambda m: (m.startswith(STAGE1_ROW), m)):
            metrics = rows[method]
            body.append([method] + [str(Cell(metrics.get(m, []))) for m, _ in COLUMNS]
                        + [str(Cell(metrics.get("precision_at_k", [])))])
        widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
        for row in [header, ["-" * w for w in widths]] + body:
            lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
    return "\n".join(lines).lstrip("\n") if lines else "no finished runs"
