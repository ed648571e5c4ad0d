"""How runs end: finished, failed on an error, killed when the process is being stopped."""
from __future__ import annotations

from pathlib import Path

import pytest

from diffinject.tracking.client import Tracker


@pytest.fixture
def tracker(tmp_path):
    return Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")


def _runs(tracker: Tracker, n: int) -> list[str]:
    exp = tracker.experiment("t")
    return [tracker.start_run(exp, f"run{i}", {}) for i in range(n)]


def _status(tracker: Tracker, run_id: str) -> str:
    return tracker.client.get_run(run_id).info.status


def test_a_block_that_returns_finishes_its_runs(tracker):
    runs = _runs(tracker, 2)

    def body():
        with tracker.ending(*runs):
            return 7

    assert body() == 7
    assert [_status(tracker, r) for r in runs] == ["FINISHED", "FINISHED"]


@pytest.mark.parametrize("error, status", [(ValueError, "FAILED"), (RuntimeError, "FAILED"),
                                           (KeyboardInterrupt, "KILLED"), (SystemExit, "KILLED")])
def test_an_error_fails_the_runs_and_a_stop_kills_them(tracker, error, status):
    runs = _runs(tracker, 2)
    with pytest.raises(error):
        with tracker.ending(*runs):
            raise error()
    assert [_status(tracker, r) for r in runs] == [status, status]


def test_kill_running_ends_only_the_running_runs_that_match(tracker):
    match, other, done = _runs(tracker, 3)
    tracker.set_tags(match, {"role": "trial"})
    tracker.set_tags(done, {"role": "trial"})
    tracker.finish(done)
    killed = tracker.kill_running(tracker.experiment("t"), "tags.`role` = 'trial'")
    assert killed == [match]
    assert [_status(tracker, r) for r in (match, other, done)] == ["KILLED", "RUNNING", "FINISHED"]


def test_artifacts_travel_with_the_database(tmp_path):
    """Artifact locations are relative to the folder beside the database (`mlflow-artifacts:/`),
    so a moved project folder keeps them: for the Tracker, and for `mlflow ui` started there."""
    from mlflow.server.handlers import _get_proxied_run_artifact_destination_path

    project = tmp_path / "project"
    project.mkdir()
    tracker = Tracker(f"sqlite:///{project / 'mlflow.db'}")
    run = tracker.start_run(tracker.experiment("t"), "r", {})
    (tmp_path / "table.md").write_text("| a |")
    tracker.log_artifact(run, tmp_path / "table.md", "tables")
    tracker.finish(run)
    moved = project.rename(tmp_path / "moved")
    again = Tracker(f"sqlite:///{moved / 'mlflow.db'}")
    uri = again.client.get_run(run).info.artifact_uri
    assert uri == f"mlflow-artifacts:/t/{run}/artifacts"
    assert [a.path for a in again.list_artifacts(run, "tables")] == ["tables/table.md"]
    # the MLflow server resolves it under its --artifacts-destination, ./mlartifacts by default
    served = moved / "mlartifacts" / _get_proxied_run_artifact_destination_path(uri, "tables/table.md")
    assert served.read_text() == "| a |"
    # from any folder, the printed UI command points the server at the moved artifacts
    assert again.ui_command() == (f"mlflow ui --backend-store-uri sqlite:///{moved / 'mlflow.db'} "
                                  f"--artifacts-destination {moved / 'mlartifacts'}")


def test_experiments_open_in_the_training_view_with_a_description(tracker):
    exp = tracker.client.get_experiment(tracker.experiment("t"))
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "`unbiased_acc_pct`" in exp.tags["mlflow.note.content"]
    older = tracker.client.create_experiment("older")  # made before these tags; its description edited
    tracker.client.set_experiment_tag(older, "mlflow.note.content", "my notes")
    assert tracker.experiment("older") == older
    tags = tracker.client.get_experiment(older).tags
    assert tags["mlflow.note.content"] == "my notes" and tags["mlflow.experimentKind"] == "custom_model_development"


def test_runs_name_their_source_commit_and_user(tracker):
    from diffinject.tracking.client import git_commit

    (run,) = _runs(tracker, 1)
    tags = tracker.client.get_run(run).data.tags
    assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.source.name"]
    assert tags.get("mlflow.source.git.commit") == (git_commit() or None)  # None outside a git checkout
    assert tags["mlflow.user"]
    named = Tracker(tracker.uri, source="experiments/table1.py")
    (run,) = _runs(named, 1)
    assert named.client.get_run(run).data.tags["mlflow.source.name"] == "experiments/table1.py"


def _open_stores(folders: list[str], barrier, results) -> None:
    """Open a Tracker on a fresh SQLite store in each folder, in step with the other process."""
    failures = []
    for folder in folders:
        barrier.wait()
        try:
            Tracker(f"sqlite:///{folder}/mlflow.db").experiment("t")
        except Exception as exc:  # the race: sqlalchemy "table ... already exists", "duplicate column"
            failures.append(f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
    results.put(failures)


def test_two_processes_creating_a_new_store_at_once_both_succeed(tmp_path):
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    folders = [str(tmp_path / f"store{i}") for i in range(4)]
    for folder in folders:
        Path(folder).mkdir()
    barrier, results = context.Barrier(2), context.Queue()
    processes = [context.Process(target=_open_stores, args=(folders, barrier, results)) for _ in range(2)]
    for process in processes:
        process.start()
    failures = [results.get(timeout=300) for _ in processes]
    for process in processes:
        process.join()
    assert failures == [[], []]


def test_an_experiment_another_cell_creates_meanwhile_is_used(tracker, monkeypatch):
    """Cells in parallel on a fresh tracking server: both find no experiment, one creates it,
    the other's create fails (RESOURCE_ALREADY_EXISTS) and must use the one that now exists."""
    other = Tracker(tracker.uri)
    made = other.experiment("table1")
    real, calls = tracker.client.get_experiment_by_name, []

    def lookup(name):  # the first look-up ran before the other cell created it
        calls.append(name)
        return None if len(calls) == 1 else real(name)

    monkeypatch.setattr(tracker.client, "get_experiment_by_name", lookup)
    assert tracker.experiment("table1") == made
