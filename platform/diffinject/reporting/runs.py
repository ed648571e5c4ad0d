"""The one reader of finished runs: every report (the results table, the comparison of
experiments, Table 1's paired differences) reads runs and pairs seeds through here.

A finished run is read as it was logged (tags, params, metrics); `latest` keeps the newest run of
each key (a seed run more than once counts once), and `paired_difference` is the statistic every
claim that a method helps rests on: the per-seed difference to a reference method over the seeds
both have, its mean and sample std.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Hashable, Iterable
from urllib.parse import urlparse

import numpy as np

from diffinject.core.errors import ConfigError
from diffinject.tracking.client import Tracker, tracking_uri
from diffinject.tracking.store_check import check_tracking_store

MAX_RESULTS = 50_000  # MLflow's largest page


@dataclass(frozen=True)
class FinishedRun:
    """One FINISHED run as logged: its role (tag `diffinject.role`), where it belongs and its numbers."""
    experiment: str
    run_id: str
    start_time: int
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]

    @property
    def role(self) -> str | None:
        return self.tags.get("diffinject.role")


def local_store(uri: str) -> Path | None:
    """The file (SQLite) or folder (file store) of a local MLflow store; None for a server,
    a remote database or SQLite in memory."""
    if uri.startswith("sqlite:"):
        path = uri.split("?", 1)[0][len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
        return Path(path) if path not in ("", ":memory:") else None
    scheme = urlparse(uri).scheme
    return Path(urlparse(uri).path if scheme else uri) if scheme in ("", "file") else None


def open_store(uri: str | None = None) -> Tracker:
    """A Tracker on the MLflow store at `uri` (default: tracking_uri()) that exists already:
    MlflowClient creates a missing SQLite database or file store, and reading results must
    leave none behind."""
    uri = uri or tracking_uri()
    path = local_store(uri)
    if path is not None and not path.exists():
        raise ConfigError(f"no MLflow store at {uri} (run a table first, or set MLFLOW_TRACKING_URI)")
    return Tracker(check_tracking_store(uri))


def experiments(tracker: Tracker) -> list:
    return tracker.client.search_experiments(max_results=MAX_RESULTS)


def experiment_names(tracker: Tracker) -> str:
    return ", ".join(sorted(e.name for e in experiments(tracker))) or "none"


def find_experiment(tracker: Tracker, name: str):
    """The experiment `name`; ConfigError naming the store's experiments when there is none."""
    found = tracker.client.get_experiment_by_name(name)
    if found is None:
        raise ConfigError(f"no experiment {name!r} in {tracker.uri}; experiments: {experiment_names(tracker)}")
    return found


def finished_runs(tracker: Tracker, experiment, role: str | None = None) -> list[FinishedRun]:
    """The FINISHED runs of `experiment` (an MLflow experiment), of one `role` or all, oldest first."""
    query = "attributes.status = 'FINISHED'" + (f" and tags.`diffinject.role` = '{role}'" if role else "")
    runs = tracker.client.search_runs([experiment.experiment_id], query, max_results=MAX_RESULTS,
                                      order_by=["attributes.start_time ASC"])
    return [FinishedRun(experiment.name, run.info.run_id, run.info.start_time, dict(run.data.tags),
                        dict(run.data.params), dict(run.data.metrics)) for run in runs]


def latest(items: Iterable, key: Callable[[object], Hashable], start_time: Callable[[object], int]) -> dict:
    """key -> the item with the latest start time among those of that key (a seed run again
    replaces its earlier run; of equal start times, the one listed last)."""
    out: dict = {}
    for item in items:
        k = key(item)
        if k not in out or start_time(out[k]) <= start_time(item):
            out[k] = item
    return out


def per_seed_difference(ours: dict[int, float], theirs: dict[int, float]) -> dict[int, float]:
    """seed -> ours[seed] - theirs[seed], over the seeds both have, in seed order."""
    return {s: ours[s] - theirs[s] for s in sorted(ours) if s in theirs}


def paired_difference(ours: dict[int, float], theirs: dict[int, float]) -> tuple[float, float, int] | None:
    """Mean and sample std (ddof 1; 0 for one seed) of the per-seed differences, and their number;
    None when no seed is shared."""
    d = np.array(list(per_seed_difference(ours, theirs).values()))
    if not len(d):
        return None
    return float(d.mean()), float(d.std(ddof=1)) if len(d) > 1 else 0.0, len(d)


def mean_std(values, signed: bool = False) -> str:
    """'mean ± sample std' of values; '—' when there are none."""
    v = np.asarray(list(values), dtype=float)
    if not len(v):
        return "—"
    return f"{v.mean():{'+' if signed else ''}.2f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.2f}"
