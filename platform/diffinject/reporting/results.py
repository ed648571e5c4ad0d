"""Results collector: reads finished runs from MLflow and prints mean +- std tables."""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from diffinject.config.overrides import PATH_FIELDS
from diffinject.core.errors import ConfigError
from diffinject.reporting.runs import experiment_names, experiments, finished_runs, latest, mean_std
from diffinject.tracking.client import Tracker

# "unbiased": the reported test accuracy of the selected weights (BFFHQ: its bias-conflicting images)
COLUMNS = (("reported_acc", "unbiased"), ("test_aligned_acc", "aligned"), ("test_conflicting_acc", "conflicting"))


@dataclass
class Cell:
    values: list[float]

    def __str__(self) -> str:
        if not self.values:
            return "-"
        return f"{mean_std(100.0 * np.asarray(self.values))} (n={len(self.values)})"


STAGE1_ROW = "stage-1 bias classifier (GCE)"
ROLES = ("cell", "stage1")  # the runs a results table shows


def newest_experiment(tracker: Tracker) -> str:
    """The name of the experiment whose finished cell or stage-1 run ended last."""
    ids = [e.experiment_id for e in experiments(tracker)]
    runs = [run for role in ROLES for run in tracker.client.search_runs(
        ids, f"attributes.status = 'FINISHED' and tags.`diffinject.role` = '{role}'", max_results=1,
        order_by=["attributes.end_time DESC"])] if ids else []
    if not runs:
        raise ConfigError(f"no finished runs in {tracker.uri}; experiments: {experiment_names(tracker)}")
    newest = max(runs, key=lambda run: run.info.end_time or 0)
    return tracker.client.get_experiment(newest.info.experiment_id).name


def config_of(role: str, params: dict[str, str]) -> dict[str, str]:
    """The logged config fields that make a run's result (what stays when a seed is rerun):
    for a cell everything but the seeds, the paths and how it ran (run.*); for stage 1 its
    `bias` section."""
    if role == "stage1":
        return {k: v for k, v in params.items() if k.startswith("bias.")}
    return {k: v for k, v in params.items()
            if not k.startswith("run.") and k not in PATH_FIELDS and k not in ("seed", "diffusion.seed")}


def collect(experiment: str, tracker: Tracker | None = None, run_ids: set[str] | None = None) -> dict:
    """{(dataset, ratio): {row: {metric: [values over seeds]}}} from finished runs (all of the
    experiment's, or only `run_ids`). Runs of one method with different configs are rows of
    their own, labelled by the fields that differ (`vanilla [classifier.lr=0.0001]`); a seed
    run more than once with the same config counts once, with its latest run."""
    tracker = tracker or Tracker()
    found = tracker.client.get_experiment_by_name(experiment)
    if found is None:
        return {}
    rows: list = []  # (group, seed, values, start_time)
    configs: dict = {}
    for run in finished_runs(tracker, found):
        if run_ids is not None and run.run_id not in run_ids:
            continue
        tags, metrics = run.tags, run.metrics
        if run.role == "cell":
            row, values = tags["method"], {m: metrics[m] for m, _ in COLUMNS if m in metrics}
        elif run.role == "stage1" and "precision_at_k" in metrics:
            row = STAGE1_ROW
            values = {m: metrics[f"final_{m}"] for m, _ in COLUMNS if f"final_{m}" in metrics}
            values["precision_at_k"] = metrics["precision_at_k"]
        else:
            continue
        config = config_of(run.role, run.params)
        group = (tags.get("dataset"), tags.get("ratio"), row, json.dumps(config, sort_keys=True))
        configs[group] = config
        rows.append((group, tags.get("seed"), values, run.start_time))
    newest = latest(rows, key=lambda r: (r[0], r[1]), start_time=lambda r: r[3])
    latest_by_group: dict = {}  # (dataset, ratio, row, config) -> seed -> metrics of its latest run
    for (group, seed), (_, _, values, _) in newest.items():
        latest_by_group.setdefault(group, {})[seed] = values
    table: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for group, by_seed in latest_by_group.items():
        dataset, ratio, row, _ = group
        siblings = [configs[g] for g in latest_by_group if g[:3] == group[:3]]
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
