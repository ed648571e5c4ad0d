"""The table run's estimate of the time left, and its heartbeat."""
import time
from collections import Counter

import pytest

from diffinject.experiment.cells import CellResult
from diffinject.experiment.progress import Progress, minutes, time_left


def test_time_left_is_each_pending_cell_at_its_methods_mean_time_shared_by_the_parallel_cells():
    seconds = {"vanilla": [10.0, 20.0], "diffinject": [100.0]}
    # 3 Vanilla cells at 15 s, 2 DiffInject cells at 100 s, one LfF cell at the mean of all built cells (130/3)
    expected = 3 * 15 + 2 * 100 + 130 / 3
    assert time_left(Counter(vanilla=3, diffinject=2, lff=1), seconds, 1, 0.0) == pytest.approx(expected)
    assert time_left(Counter(vanilla=3, diffinject=2, lff=1), seconds, 2, 0.0) == pytest.approx(expected / 2)
    assert time_left(Counter(vanilla=3, diffinject=2, lff=1), seconds, 1, 40.0) == pytest.approx(expected - 40)
    assert time_left(Counter(vanilla=1), seconds, 1, 1e6) == 0.0  # never negative
    assert time_left(Counter(vanilla=1), {}, 1, 0.0) is None      # nothing built yet: no estimate
    assert time_left(Counter(), seconds, 1, 0.0) == 0.0


def test_minutes_reads_as_seconds_below_a_minute_and_a_half():
    assert minutes(45) == "45 s" and minutes(89) == "89 s" and minutes(90) == "2 min" and minutes(725) == "12 min"


def _result(method, seconds, cached=False):
    return CellResult("colored_digits", "1", method, 0, {"reported_acc": 0.5, "reported_acc_best_test": 0.6},
                      "run", stages={"cell": "reused" if cached else "built"}, seconds=seconds)


def test_cell_lines_and_the_heartbeat_carry_the_estimate_from_built_cells_only(capsys):
    progress = Progress(4, every_s=0.2, methods=["vanilla"] * 4)
    try:
        progress.cell_done(_result("vanilla", 0.0, cached=True))  # a cached cell: no estimate from it
        progress.cell_done(_result("vanilla", 600.0))
        time.sleep(0.5)
    finally:
        progress.close()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("[1/4") and "left" not in lines[0]
    assert lines[1].startswith("[2/4") and lines[1].endswith("about 20 min left")  # two cells at 600 s
    assert lines[2].startswith("[2/4") and "working; about 20 min left" in lines[2]


def test_results_are_taken_in_job_order_whatever_order_the_cells_finished_in():
    from diffinject.config.builder import experiment_config
    from diffinject.experiment.parallel_cells import in_job_order

    jobs = []
    for seed in (0, 1):
        cfg = experiment_config("colored_digits", "1", quick=True)
        cfg.run.seed = seed
        jobs += [(cfg, "diffinject"), (cfg, "vanilla")]
    finished = [CellResult("colored_digits", "1", m, s, {}, f"{m}{s}") for m, s in
                [("vanilla", 1), ("diffinject", 0), ("vanilla", 0), ("diffinject", 1)]]
    assert [r.run_id for r in in_job_order(finished, jobs)] == ["diffinject0", "vanilla0", "diffinject1", "vanilla1"]


def test_a_quick_table_on_cpus_runs_one_cell_per_cpu_by_default(ray_session):
    from diffinject.experiment.parallel_cells import default_num_workers, default_parallel

    none = {"alive": 0, "scalable": 0}
    assert default_parallel(False, none, quick=True) == 2  # the test session's Ray has 2 CPUs
    assert default_parallel(False, none, quick=False) == 1
    # one cell per GPU the cluster has or its autoscaler may add
    assert default_parallel(True, {"alive": 1, "scalable": 3}, quick=True) == 4
    # trainings in the cell's process on a single node with CPUs; one Ray Train worker on GPUs
    assert default_num_workers(False) == 0 and default_num_workers(True) == 1
