"""`diffinject results` and experiments/compare.py: read-only, so a missing store or experiment
is one error line and nothing is created; without --experiment the newest one is shown."""
from __future__ import annotations

import time

import pytest

from diffinject.cli.main import main
from diffinject.tracking.client import Tracker
from scripts import load_script


def _finished_cell(tracker: Tracker, experiment: str, acc: float) -> None:
    run = tracker.start_run(tracker.experiment(experiment), "vanilla", {
        "dataset": "colored_digits", "ratio": "1", "method": "vanilla", "seed": 0, "diffinject.role": "cell"})
    tracker.log_metrics(run, {"reported_acc": acc})
    tracker.finish(run)
    time.sleep(0.01)  # end times in milliseconds: the next run ends later


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


@pytest.fixture
def store(tmp_path, monkeypatch) -> Tracker:
    """A store with the experiment `diffinject` and, finished later, `table1-quick`."""
    tracker = Tracker(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    _finished_cell(tracker, "diffinject", 0.25)
    _finished_cell(tracker, "table1-quick", 0.5)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracker.uri)
    return tracker


def test_no_store_is_an_error_and_none_is_created(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    compare = load_script("compare")
    for run in (lambda: main(["results", "--experiment", "nosuch"]), lambda: main(["results"]),
                lambda: compare.main(["--experiments", "nosuch"])):
        assert run() == 2
        assert f"no MLflow store at sqlite:///{tmp_path / 'mlflow.db'} (run a table first" in _one_error_line(capsys)
    assert compare.main(["--experiments", "x", "--tracking-uri", str(tmp_path / "mlruns")]) == 2
    assert f"no MLflow store at {tmp_path / 'mlruns'}" in _one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_experiment_names_the_ones_there(store, capsys):
    expected = f"error: no experiment 'nosuch' in {store.uri}; experiments: Default, diffinject, table1-quick\n"
    capsys.readouterr()
    assert main(["results", "--experiment", "nosuch"]) == 2
    assert capsys.readouterr().err == expected
    assert load_script("compare").main(["--experiments", "table1-quick", "nosuch"]) == 2
    assert capsys.readouterr().err == expected


def test_results_default_to_the_experiment_that_finished_last(store, capsys):
    assert main(["results"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("experiment 'table1-quick': the one whose finished run ended last")
    assert any(line.startswith("vanilla") and "50.00 ± 0.00 (n=1)" in line for line in out), out
    assert main(["results", "--experiment", "diffinject"]) == 0
    assert "25.00 ± 0.00 (n=1)" in capsys.readouterr().out


def test_a_store_without_finished_runs_names_its_experiments(tmp_path, monkeypatch, capsys):
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracker.experiment("empty")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracker.uri)
    capsys.readouterr()  # MLflow's log lines of creating the store
    assert main(["results"]) == 2
    assert f"no finished runs in {tracker.uri}; experiments: Default, empty" in _one_error_line(capsys)


def test_the_seeds_of_one_config_are_one_row(tmp_path, monkeypatch, capsys):
    """A cell run logs its seed twice (`seed`, `run.seed`); neither splits a method's row."""
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = tracker.experiment("table1-quick")
    for seed, acc in ((0, 0.2), (1, 0.4)):
        run = tracker.start_run(experiment, "vanilla", {
            "dataset": "colored_digits", "ratio": "1", "method": "vanilla", "seed": seed, "diffinject.role": "cell"},
            params={"seed": seed, "run.seed": seed, "classifier.lr": 0.01})
        tracker.log_metrics(run, {"reported_acc": acc})
        tracker.finish(run)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracker.uri)
    assert main(["results"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("vanilla")]
    assert len(rows) == 1 and "30.00 ± 14.14 (n=2)" in rows[0], rows
