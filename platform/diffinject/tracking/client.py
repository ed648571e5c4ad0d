"""MLflow tracking: URI, experiments, runs with the project's tags, batched metric logging.

The default tracking URI is a SQLite file in the working directory (MLflow's own default
since 3.7); MLFLOW_TRACKING_URI overrides it. Experiments and runs are created on the
driver before workers log. Two drivers started at once in a fresh folder would both create
and migrate a new SQLite database (and one would fail): the Tracker opens a SQLite store under
an fcntl lock beside it (`.mlflow.db.lock`), so the first creates it and the others wait.

Artifacts of a SQLite store live beside the database in `mlartifacts/<experiment>/`, and
the experiment records them as `mlflow-artifacts:/<experiment>`, a location relative to the
server's artifact folder: `mlflow ui` started next to the database (whose
`--artifacts-destination` is `./mlartifacts` by default) finds them wherever the folder
was moved. MLflow's client reads such locations only through a server, so the Tracker
writes and lists them as files itself.
"""
from __future__ import annotations

import functools
import getpass
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mlflow.entities import FileInfo, Metric, Param, RunTag
from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository
from mlflow.tracking import MlflowClient

from diffinject import __version__
from diffinject.tracking.descriptions import EXPERIMENT_NOTE

REPOSITORY = Path(__file__).resolve().parents[2]
ARTIFACTS_FOLDER = "mlartifacts"
NOTE = "mlflow.note.content"  # the markdown description the MLflow UI shows and edits
# The experiment kind in MLflow's vocabulary (custom_model_development: a training experiment).
# The 3.17 UI opens the view chosen by a ?workflowType= link or last clicked in the browser,
# whatever the kind (README: "Comparing in the MLflow UI").
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, a relative SQLite file in it made absolute (Ray Train workers log
    from their trial folder), or ./mlflow.db."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    database = uri.removeprefix("sqlite:///")
    return f"sqlite:///{Path(database).absolute()}" if uri.startswith("sqlite:///") and database[:1] not in ("", ":") \
        else uri


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """The git commit of the source tree, when it is a checkout ("" otherwise)."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                              capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def code_version() -> str:
    """Package version plus the short git commit of the source tree, when it is a checkout."""
    sha = git_commit()[:7]
    return f"{__version__}+{sha}" if sha else __version__


def run_source() -> str:
    """The script this process runs (`mlflow.source.name`): relative to the repository when in it."""
    script = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    if script is None:
        return "python"
    return str(script.relative_to(REPOSITORY)) if script.is_relative_to(REPOSITORY) else script.name


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no $USER (some containers)
        return ""


def source_tags(source: str) -> dict[str, str]:
    """MLflow's system tags for the UI's Source and User columns."""
    tags = {"mlflow.source.name": source, "mlflow.source.type": "LOCAL",
            "mlflow.source.git.commit": git_commit(), "mlflow.user": _user()}
    return {k: v for k, v in tags.items() if v}


@contextmanager
def store_creation_lock(uri: str) -> Iterator[None]:
    """For a SQLite file store: an exclusive lock beside the database, held while it is opened
    (MLflow creates and migrates a missing database then, which two processes must not do at
    once). Other stores need none."""
    from diffinject.core.atomic import file_lock

    database = uri.split("?", 1)[0].removeprefix("sqlite:///")
    if not uri.startswith("sqlite:///") or database in ("", ":memory:"):
        yield
        return
    path = Path(database)
    with file_lock(path.with_name(f".{path.name}.lock")):
        yield


class Tracker:
    """Thin wrapper over MlflowClient that always addresses runs by id (no global state)."""

    def __init__(self, uri: str | None = None, source: str | None = None):
        self.uri = uri or tracking_uri()
        with store_creation_lock(self.uri):
            self.client = MlflowClient(tracking_uri=self.uri)  # opens the store: creates and migrates a new one
        self.source = source or run_source()

    def experiment(self, name: str) -> str:
        """The experiment's id; created with its description and kind, which an experiment made
        before them gets too (an existing description is kept)."""
        from mlflow.exceptions import MlflowException

        defaults = {**EXPERIMENT_KIND, NOTE: EXPERIMENT_NOTE}
        found = self.client.get_experiment_by_name(name)
        if found is None:
            try:
                return self.client.create_experiment(name, self._artifact_location(name), tags=defaults)
            except MlflowException as exc:  # another cell created it meanwhile (cells in parallel, one server)
                found = self.client.get_experiment_by_name(name)
                if found is None:
                    raise exc from None
        for key, value in defaults.items():
            if key not in found.tags:
                self.client.set_experiment_tag(found.experiment_id, key, value)
        return found.experiment_id

    def artifact_root(self) -> Path | None:
        """The folder beside a SQLite database that holds its artifacts (None for other stores)."""
        if not self.uri.startswith("sqlite:///"):
            return None
        return Path(self.uri.removeprefix("sqlite:///")).parent / ARTIFACTS_FOLDER

    def ui_command(self) -> str:
        """The `mlflow ui` command that shows this store with its artifacts (from any folder)."""
        root = self.artifact_root()
        return f"mlflow ui --backend-store-uri {self.uri}" + (f" --artifacts-destination {root}" if root else "")

    def _artifact_location(self, name: str) -> str | None:
        """`mlartifacts/<name>` beside a SQLite database, as a location relative to the artifact
        folder of the server that shows it (MLflow would otherwise use ./mlruns of the current
        directory, as an absolute path)."""
        if self.artifact_root() is None:
            return None
        return f"mlflow-artifacts:/{re.sub(r'[^A-Za-z0-9._-]', '_', name)}"

    def _artifact_repository(self, run_id: str) -> LocalArtifactRepository | None:
        """The run's artifact folder when it is one of ours beside the SQLite database."""
        parsed = urlparse(self.client.get_run(run_id).info.artifact_uri)
        root = self.artifact_root()
        if root is None or parsed.scheme != "mlflow-artifacts" or parsed.netloc:
            return None
        return LocalArtifactRepository((root / parsed.path.lstrip("/")).resolve().as_uri())

    def start_run(self, experiment_id: str, name: str, tags: dict[str, Any],
                  params: dict[str, Any] | None = None, parent: str | None = None) -> str:
        all_tags = {"diffinject.code_version": code_version(), **source_tags(self.source),
                    **{k: str(v) for k, v in tags.items()}}
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

    def describe(self, run_id: str, markdown: str) -> None:
        """The run's description in the MLflow UI."""
        self.set_tags(run_id, {NOTE: markdown})

    def log_artifact(self, run_id: str, path: Path, folder: str | None = None) -> None:
        local = self._artifact_repository(run_id)
        if local is None:
            self.client.log_artifact(run_id, str(path), folder)
        else:
            local.log_artifact(str(path), folder)

    def list_artifacts(self, run_id: str, path: str | None = None) -> list[FileInfo]:
        local = self._artifact_repository(run_id)
        return self.client.list_artifacts(run_id, path) if local is None else local.list_artifacts(path)

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
