"""How runs end: finished, failed on an error, killed when the process is being stopped."""
from __future__ import annotations

import pytest

from diffinject.tracking import Tracker


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
