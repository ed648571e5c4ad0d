"""MLflow tracking: URI, experiments, runs with the project's tags, batched metric logging.

The default tracking URI is a SQLite file in the working directory (MLflow's own default
since 3.7); MLFLOW_TRACKING_URI overrides it. Experiments and runs are created on the
driver before workers log, so SQLite never sees two processes creating the schema.
"""
from __future__ import annotations

import functools
import math
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from . import __version__


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, a relative SQLite file in it made absolute (Ray Train workers log
    from their trial folder), or ./mlflow.db."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    database = uri.removeprefix("sqlite:///")
    return f"sqlite:///{Path(database).absolute()}" if uri.startswith("sqlite:///") and database[:1] not in ("", ":") \
        else uri


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Package version plus the git commit of the source tree, when it is a checkout."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__


class Tracker:
    """Thin wrapper over MlflowClient that always addresses runs by id (no global state)."""

    def __init__(self, uri: str | None = None):
        self.uri = uri or tracking_uri()
        self.client = MlflowClient(tracking_uri=self.uri)

    def experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        return found.experiment_id if found else self.client.create_experiment(name, self._artifact_location(name))

    def _artifact_location(self, name: str) -> str | None:
        """Beside a SQLite database (MLflow would otherwise use ./mlruns of the current directory)."""
        if not self.uri.startswith("sqlite:///"):
            return None
        return (Path(self.uri.removeprefix("sqlite:///")).parent / "mlartifacts" / name).as_uri()

    def start_run(self, experiment_id: str, name: str, tags: dict[str, Any],
                  params: dict[str, Any] | None = None, parent: str | None = None) -> str:
        all_tags = {"diffinject.code_version": code_version(), **{k: str(v) for k, v in tags.items()}}
        if parent:
            all_tags["mlflow.parentRunId"] = parent
        run = self.client.create_run(experiment_id, run_name=name, tags=all_tags)
        if params:
            self.client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
        return run.info.run_id

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not math.isnan(float(v))]
        if batch:
            self.client.log_batch(run_id, metrics=batch)

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, run_id: str, path: Path, folder: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), folder)

    def kill_running(self, experiment_id: str, condition: str) -> list[str]:
        """Mark the experiment's RUNNING runs that match `condition` (an MLflow search filter)
        KILLED: runs whose process died before it could end them. Returns their ids."""
        runs = self.client.search_runs([experiment_id], f"attributes.status = 'RUNNING' and {condition}",
                                       max_results=10_000)
        for run in runs:
            self.client.set_terminated(run.info.run_id, "KILLED")
        return [run.info.run_id for run in runs]

    def finish(self, run_id: str) -> None:
        self.client.set_terminated(run_id, "FINISHED")

    @contextmanager
    def ending(self, *run_ids: str) -> Iterator[None]:
        """End the runs when the block exits: FINISHED; FAILED on an error; KILLED when the
        process is being stopped (KeyboardInterrupt on Ctrl-C, or the SystemExit that Ray
        raises in a Tune trial's thread when Tune stops it), so a stopped run is not taken
        for a failed one."""
        status = "KILLED"
        try:
            yield
            status = "FINISHED"
        except Exception:
            status = "FAILED"
            raise
        finally:
            for run_id in run_ids:
                self.client.set_terminated(run_id, status)
