"""experiments/compare.py and diffinject.reporting.compare: comparisons read back from MLflow."""
from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np
import pytest

from diffinject.core.errors import ConfigError
from diffinject.reporting.compare import compare, format_comparison, load_cell_runs
from diffinject.tracking.client import Tracker


def _cell(tracker, experiment, method, seed, acc, dataset="colored_digits", ratio="1", status="FINISHED"):
    exp = tracker.experiment(experiment)
    run = tracker.start_run(exp, f"{method}-s{seed}", {"dataset": dataset, "ratio": ratio, "method": method,
                                                       "seed": seed, "diffinject.role": "cell"})
    # the whole test split's accuracy differs: the comparison reads the reported one
    tracker.log_metrics(run, {"reported_acc": acc, "test_acc": acc / 2})
    tracker.client.set_terminated(run, status)
    return run


@pytest.fixture
def tracker(tmp_path):
    t = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for seed, (v, d) in enumerate([(0.30, 0.35), (0.40, 0.41), (0.20, 0.29)]):
        _cell(t, "quick", "vanilla", seed, v)
        _cell(t, "quick", "diffinject", seed, d)
    _cell(t, "quick", "lff", 0, 0.50)                   # only seed 0
    _cell(t, "quick", "lff", 1, 0.99, status="FAILED")  # a failed run never counts
    _cell(t, "quick", "lff", 2, 0.98, status="KILLED")  # nor a stopped one
    _cell(t, "quick", "vanilla", 0, 0.10, ratio="5")
    return t


def test_paired_differences_use_the_seeds_both_methods_have(tracker):
    table = compare(load_cell_runs(tracker, ["quick"], ratios=["1"]), "vanilla")
    rows = {r.label: r for r in table[("colored_digits", "1")]}
    assert table[("colored_digits", "1")][0].label == "vanilla"  # the reference first
    assert rows["diffinject"].diff == pytest.approx({0: 5.0, 1: 1.0, 2: 9.0})
    assert rows["lff"].diff == pytest.approx({0: 20.0}) and rows["lff"].by_seed == pytest.approx({0: 50.0})
    text = format_comparison(table, "vanilla")
    d = np.array([5.0, 1.0, 9.0])
    assert f"+{d.mean():.2f} ± {d.std(ddof=1):.2f}" in text and "s0:+5.00 s1:+1.00 s2:+9.00" in text
    assert rows["diffinject"].runs[2] in text  # the runs behind each number


def test_latest_run_of_a_cell_counts_and_filters_apply(tracker):
    time.sleep(0.01)
    _cell(tracker, "quick", "vanilla", 1, 0.45)  # a later re-run of vanilla, seed 1
    runs = load_cell_runs(tracker, ["quick"], methods=["vanilla"], ratios=["1"])
    assert sorted((r.seed, r.reported_acc) for r in runs) == [(0, 0.30), (1, 0.45), (2, 0.20)]
    assert {r.ratio for r in load_cell_runs(tracker, ["quick"])} == {"1", "5"}


def test_several_experiments_label_rows_and_pick_the_reference(tracker):
    _cell(tracker, "ablation", "diffinject", 0, 0.33)
    table = compare(load_cell_runs(tracker, ["quick", "ablation"], ratios=["1"]), "vanilla")
    labels = [r.label for r in table[("colored_digits", "1")]]
    assert labels[0] == "vanilla@quick" and "diffinject@ablation" in labels and "diffinject@quick" in labels
    row = next(r for r in table[("colored_digits", "1")] if r.label == "diffinject@ablation")
    assert row.diff == pytest.approx({0: 3.0})


def test_missing_reference_or_experiment_is_an_error(tracker):
    with pytest.raises(ConfigError, match="reference method 'nope' has no finished runs for colored_digits 1%"):
        compare(load_cell_runs(tracker, ["quick"]), "nope")
    with pytest.raises(ConfigError, match="no experiment 'absent' in .*; experiments: Default, quick"):
        load_cell_runs(tracker, ["absent"])


def test_script_prints_the_comparison_and_writes_the_plot(tracker, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        "compare_script", Path(__file__).resolve().parents[1] / "experiments" / "compare.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    plot = tmp_path / "diff.png"
    assert script.main(["--experiments", "quick", "--tracking-uri", tracker.uri, "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "colored_digits @ 1%" in out and "colored_digits @ 5%" in out and "Δ vs vanilla" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert script.main(["--experiments", "quick", "--tracking-uri", tracker.uri, "--reference", "x"]) == 2
    assert "error: reference method 'x'" in capsys.readouterr().err


def test_an_ablation_experiment_compares_its_trials_seed_by_seed(tracker):
    """Trial runs carry every seed; their rows are method[setting] and cite the cells' runs; the
    cell runs the trials built are not rows of their own."""
    import json

    exp = tracker.experiment("abl")
    for method, variant, accs in (("vanilla", "", (30.0, 40.0)), ("diffinject", "gamma=0.5", (36.0, 41.0))):
        run = tracker.start_run(exp, method, {"dataset": "colored_digits", "ratio": "1", "method": method,
                                              "variant": variant, "diffinject.role": "trial",
                                              "cell_runs": json.dumps({"0": f"{method}-c0", "1": f"{method}-c1"})})
        tracker.log_metrics(run, {f"seed{s}.test_acc": a for s, a in enumerate(accs)})
        tracker.finish(run)
    _cell(tracker, "abl", "diffinject", 0, 0.99)  # a cell a trial built
    table = compare(load_cell_runs(tracker, ["abl"]), "vanilla")
    rows = {r.label: r for r in table[("colored_digits", "1")]}
    assert set(rows) == {"vanilla", "diffinject[gamma=0.5]"}
    assert rows["diffinject[gamma=0.5]"].diff == pytest.approx({0: 6.0, 1: 1.0})
    assert rows["diffinject[gamma=0.5]"].runs == {0: "diffinject-c0", 1: "diffinject-c1"}
    assert {r.method for r in load_cell_runs(tracker, ["abl"], methods=["diffinject"])} == {"diffinject[gamma=0.5]"}


def test_results_rows_are_configs_and_count_distinct_seeds(tmp_path, monkeypatch, capsys):
    """`diffinject results` after reruns: a second run of a seed with the same config replaces
    the first (however it ran: other paths, workers); another config is a row of its own."""
    from diffinject.cli.main import main
    from diffinject.config.builder import experiment_config
    from diffinject.config.schema import flatten

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = tracker.experiment("reruns")

    def cell(acc, seed=0, **changes):
        cfg = experiment_config("colored_digits", "1", quick=True)
        cfg.run.seed = cfg.diffusion.seed = seed
        params = {**flatten(cfg), **changes}
        run = tracker.start_run(exp, "vanilla", {"dataset": "colored_digits", "ratio": "1", "method": "vanilla",
                                                 "seed": seed, "diffinject.role": "cell"}, params)
        tracker.log_metrics(run, {"reported_acc": acc, "test_acc": acc / 2})
        tracker.finish(run)
        time.sleep(0.01)

    cell(0.10)
    cell(0.17, **{"data.data_root": "/elsewhere/data", "run.num_workers": 1})  # the same config, run again
    cell(0.24, **{"classifier.lr": 0.0001})
    cell(0.30, seed=1, **{"classifier.lr": 0.0001})
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracker.uri)
    assert main(["results", "--experiment", "reruns"]) == 0
    rows = {line.split("  ")[0]: line for line in capsys.readouterr().out.splitlines()}
    default_lr = experiment_config("colored_digits", "1", quick=True).classifier.lr
    assert "17.00 ± 0.00 (n=1)" in rows[f"vanilla [classifier.lr={default_lr}]"]
    assert f"27.00 ± {np.std([24, 30], ddof=1):.2f} (n=2)" in rows["vanilla [classifier.lr=0.0001]"]
    assert "vanilla" not in rows
