"""Ablation sweeps: axes and settings, one trial run per setting in MLflow, the best setting on
validation accuracy, the plot, and experiments/ablations.py on Ray Tune (grid with an
interrupted-and-resumed run through DiffInject's real stages; Optuna)."""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

import numpy as np
import pytest

from diffinject.config.builder import experiment_config
from diffinject.core.errors import ConfigError
from diffinject.experiment.cells import CellResult
from diffinject.sweeps.ablations import (SettingResult, ablation_plot, apply_setting, best_setting, end_stopped_runs,
                                         evaluate_setting, finished_trial, format_results, grid_settings, parse_axis,
                                         trial_key)
from diffinject.tracking.client import Tracker
from scripts import load_script as _script
from test_cells import TINY


@pytest.fixture
def base():
    return experiment_config("colored_digits", "1", quick=True)  # injection gamma 1.0, conflict ratio 0.1, k 10


def test_axes_parse_typed_checked_values(base):
    gamma = parse_axis("gamma=0.5, 0.9,0.5", base)
    assert gamma.fields == ("injection.gamma",) and gamma.values == (0.5, 0.9)  # repeats dropped
    assert parse_axis("k=5,20", base).values == (5, 20) and isinstance(parse_axis("k=5", base).values[0], int)
    assert parse_axis("mode=local,global", base).values == ("local", "global")
    assert parse_axis("injection.t_edit=100,300", base).fields == ("injection.t_edit",)
    assert parse_axis("steps=10,20", base).fields == ("injection.inversion_steps", "injection.generation_steps")
    ranged = parse_axis("gamma=0.2:1.0", base)
    assert ranged.is_range and (ranged.low, ranged.high) == (0.2, 1.0)
    with pytest.raises(ConfigError, match=r"--sweep gamma: .*injection.gamma must be in \[0, 1\], got 2.0"):
        parse_axis("gamma=0.5,2", base)
    with pytest.raises(ConfigError, match="--sweep mode: .*local or global, got 'both'"):
        parse_axis("mode=both", base)
    with pytest.raises(ConfigError, match="unknown config field 'injection.nope'"):
        parse_axis("injection.nope=1", base)
    with pytest.raises(ConfigError, match="expected NAME=V1,V2"):
        parse_axis("gamma", base)
    with pytest.raises(ConfigError, match="LOW < HIGH"):
        parse_axis("gamma=0.9:0.1", base)
    with pytest.raises(ConfigError, match="config section"):
        parse_axis("injection=1", base)


def test_alone_sweeps_share_the_preset_setting_and_crossed_ones_combine(base):
    axes = [parse_axis("gamma=0,1", base), parse_axis("ratio=0.05,0.1", base)]
    alone = grid_settings(axes, base, crossed=False)
    assert alone == [{"gamma": 0.0, "ratio": 0.1}, {"gamma": 1.0, "ratio": 0.1}, {"gamma": 1.0, "ratio": 0.05}]
    crossed = grid_settings(axes, base, crossed=True)
    assert len(crossed) == 4 and {"gamma": 0.0, "ratio": 0.05} in crossed
    with pytest.raises(ConfigError, match="grid search needs lists.*gamma"):
        grid_settings([parse_axis("gamma=0:1", base)], base, crossed=False)


def test_a_setting_sets_every_field_of_its_axes_and_leaves_the_base_alone(base):
    axes = [parse_axis("steps=7,9", base), parse_axis("k=3", base)]
    cfg = apply_setting(base, axes, {"steps": 7, "k": 3})
    assert (cfg.injection.inversion_steps, cfg.injection.generation_steps, cfg.bias.k) == (7, 7, 3)
    assert (base.injection.inversion_steps, base.bias.k) == (20, 10)


def test_label_from_and_k_per_class_axes_carry_their_fields():
    base = experiment_config("colored_digits", "1", quick=True, protocol="paper")  # label_from content, global top-K
    axes = [parse_axis("label_from=original,content", base), parse_axis("k_per_class=5,10,20", base)]
    assert axes[0].fields == ("injection.label_from",) and axes[0].values == ("original", "content")
    assert axes[1].fields == ("bias.k",) and axes[1].values == (5, 10, 20)
    settings = grid_settings(axes, base, crossed=False)
    assert {"label_from": "original", "k_per_class": 10} in settings and {"label_from": "content", "k_per_class": 20} \
        in settings
    cfg = apply_setting(base, axes, {"label_from": "original", "k_per_class": 20})
    assert (cfg.injection.label_from, cfg.bias.k, cfg.bias.scope) == ("original", 20, "per_class")
    assert (base.injection.label_from, base.bias.k, base.bias.scope) == ("content", 10, "global")
    with pytest.raises(ConfigError, match="--sweep label_from: .*content or original, got 'style'"):
        parse_axis("label_from=style", base)


def test_best_setting_is_chosen_on_validation_not_test():
    a = SettingResult("diffinject", {"gamma": 0.5}, test={0: 90.0, 1: 80.0}, valid={0: 50.0, 1: 50.0})
    b = SettingResult("diffinject", {"gamma": 0.9}, test={0: 60.0, 1: 60.0}, valid={0: 70.0, 1: 60.0})
    assert best_setting([a, b]) is b
    back = SettingResult.from_metrics("diffinject", a.setting, a.metrics())
    assert back.test == a.test and back.valid == a.valid
    assert a.metrics()["test_acc_std"] == pytest.approx(np.std([90.0, 80.0], ddof=1))


def test_results_table_pairs_differences_by_seed(base):
    axes = [parse_axis("gamma=0.5,0.9", base)]
    ref = SettingResult("vanilla", {}, test={0: 30.0, 1: 40.0, 2: 20.0}, valid={0: 1.0, 1: 1.0, 2: 1.0})
    a = SettingResult("diffinject", {"gamma": 0.5}, test={0: 35.0, 1: 41.0}, valid={0: 9.0, 1: 9.0})
    b = SettingResult("diffinject", {"gamma": 0.9}, test={0: 30.0, 1: 30.0}, valid={0: 5.0, 1: 5.0})
    lines = format_results([b, a], axes, ref).splitlines()
    assert lines[0].split()[:2] == ["gamma", "seeds"] and lines[2].startswith("(vanilla)")
    d = np.array([5.0, 1.0])  # only the seeds both have
    assert lines[3].startswith("0.5") and f"+{d.mean():.2f} ± {d.std(ddof=1):.2f}" in lines[3]
    assert lines[3].endswith("<- best") and "best" not in lines[4]


def _status(tracker: Tracker, experiment: str, key: str) -> list[str]:
    exp = tracker.client.get_experiment_by_name(experiment).experiment_id
    return [r.info.status for r in tracker.client.search_runs([exp], f"tags.`trial.key` = '{key}'")]


def _fake_cells(accuracies: dict[int, float], fail_at: int | None = None, error: type[BaseException] = RuntimeError):
    def run_cell(cfg, method):
        if cfg.run.seed == fail_at:
            raise error("boom")
        acc = accuracies[cfg.run.seed]
        return CellResult(cfg.data.dataset, cfg.data.ratio, method, cfg.run.seed,
                          {"reported_acc": acc, "test_acc": acc - 0.1, "valid_acc": acc / 2},  # the trial keeps reported_acc
                          f"cell-{cfg.run.seed}-{cfg.injection.gamma}")
    return run_cell


def test_a_setting_is_one_trial_run_with_every_seed(base, tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    base.run.experiment = "abl"
    axes = [parse_axis("gamma=0.5", base)]
    cfg = apply_setting(base, axes, {"gamma": 0.5})
    seen = []
    key = trial_key("diffinject", {"gamma": 0.5}, base)
    result = evaluate_setting(cfg, "diffinject", {"gamma": 0.5}, [0, 1], tracker, _fake_cells({0: 0.3, 1: 0.5}), key,
                              on_seed=lambda r: seen.append(dict(r.test)))
    assert seen == [{0: 30.0}, {0: 30.0, 1: 50.0}]  # partial results after every seed
    run = tracker.client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["diffinject.role"] == "trial"
    assert run.data.tags["variant"] == "gamma=0.5" and run.data.params["injection.gamma"] == "0.5"
    assert run.data.metrics["seed1.test_acc"] == 50.0 and run.data.metrics["test_acc_mean"] == 40.0
    assert json.loads(run.data.tags["cell_runs"]) == {"0": "cell-0-0.5", "1": "cell-1-0.5"}
    found = finished_trial(tracker, "abl", key)
    assert found.run_id == result.run_id and found.test == result.test and found.setting == {"gamma": 0.5}
    # a trial that fails is marked so, and is never found as finished
    other = trial_key("diffinject", {"gamma": 0.9}, base)
    with pytest.raises(RuntimeError):
        evaluate_setting(cfg, "diffinject", {"gamma": 0.9}, [0, 1], tracker, _fake_cells({0: 0.3}, fail_at=1), other)
    assert finished_trial(tracker, "abl", other) is None
    assert _status(tracker, "abl", other) == ["FAILED"]
    # a trial that Tune stops (Ray raises SystemExit in the trial's thread) is KILLED, not FAILED
    stopped = trial_key("diffinject", {"gamma": 0.7}, base)
    with pytest.raises(SystemExit):
        evaluate_setting(cfg, "diffinject", {"gamma": 0.7}, [0, 1], tracker,
                         _fake_cells({0: 0.3}, fail_at=1, error=SystemExit), stopped)
    assert _status(tracker, "abl", stopped) == ["KILLED"] and finished_trial(tracker, "abl", stopped) is None
    assert trial_key("diffinject", {"gamma": 0.5}, cfg) != key  # the base config is part of the key


def test_a_trial_carries_its_synthetic_sets_fidelity_and_conflict_rate(base, tmp_path):
    """Cells on synthetic data carry the stage-3 quality report; the trial keeps label fidelity
    and conflict rate per seed (MLflow, a finished trial found again, the CSV, the plot)."""
    from diffinject.sweeps.ablations import write_csv

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    base.run.experiment = "abl"
    axes = [parse_axis("gamma=0.5", base)]
    quality = {0: (0.8, 0.4), 1: (0.6, 0.6)}

    def run_cell(cfg, method):
        fidelity, conflict = quality[cfg.run.seed]
        return CellResult(cfg.data.dataset, cfg.data.ratio, method, cfg.run.seed,
                          {"reported_acc": 0.5, "valid_acc": 0.4, "quality.label_fidelity": fidelity,
                           "quality.conflict_rate": conflict, "quality.useful_rate": 0.1}, f"cell-{cfg.run.seed}")

    key = trial_key("diffinject", {"gamma": 0.5}, base)
    result = evaluate_setting(apply_setting(base, axes, {"gamma": 0.5}), "diffinject", {"gamma": 0.5}, [0, 1],
                              tracker, run_cell, key)
    assert result.label_fidelity == {0: 0.8, 1: 0.6} and result.conflict_rate == {0: 0.4, 1: 0.6}
    metrics = tracker.client.get_run(result.run_id).data.metrics
    assert metrics["label_fidelity_mean"] == pytest.approx(0.7) and metrics["seed1.conflict_rate"] == 0.6
    found = finished_trial(tracker, "abl", key)
    assert found.label_fidelity == result.label_fidelity and found.conflict_rate == result.conflict_rate
    rows = write_csv(tmp_path / "abl.csv", [result], axes, None).read_text().splitlines()
    assert rows[0].endswith("cell_run_id,label_fidelity,conflict_rate") and rows[1].endswith(",0.8000,0.4000")
    plain = SettingResult("diffinject", {"gamma": 0.5}, test=dict(result.test), valid=dict(result.valid))
    second = SettingResult("diffinject", {"gamma": 0.9}, test={0: 60.0, 1: 62.0}, label_fidelity={0: 0.5, 1: 0.5},
                           conflict_rate={0: 0.9, 1: 0.7})
    axes = [parse_axis("gamma=0.5,0.9", base)]
    with_quality = ablation_plot(tmp_path / "q.png", [result, second], axes, base, None, "q").read_bytes()
    without = ablation_plot(tmp_path / "p.png", [plain, SettingResult("diffinject", {"gamma": 0.9}, test=second.test)],
                            axes, base, None, "q").read_bytes()
    assert with_quality[:8] == b"\x89PNG\r\n\x1a\n" and with_quality != without


def test_an_interrupted_sweep_kills_only_the_runs_it_started(tmp_path):
    """A Ctrl-C can end a trial's process before the trial ends its run; the driver then
    marks what this invocation started and left RUNNING as KILLED, and nothing older."""
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert end_stopped_runs(tracker, "abl", 0) == []  # no such experiment yet
    exp = tracker.experiment("abl")
    older = tracker.start_run(exp, "older", {})
    time.sleep(0.01)
    since = int(time.time() * 1000)
    trial, finished = tracker.start_run(exp, "trial", {}), tracker.start_run(exp, "cell", {})
    tracker.finish(finished)
    assert end_stopped_runs(tracker, "abl", since) == [trial]
    status = {r: tracker.client.get_run(r).info.status for r in (older, trial, finished)}
    assert status == {older: "RUNNING", trial: "KILLED", finished: "FINISHED"}


def test_plots_for_alone_crossed_categorical_and_scattered_settings(base, tmp_path):
    ref = SettingResult("vanilla", {}, test={0: 30.0, 1: 32.0})
    axes = [parse_axis("gamma=0,0.5,1", base), parse_axis("mode=local,global", base)]
    results = [SettingResult("diffinject", {"gamma": g, "mode": m}, test={0: 10 * g + len(m), 1: 20 * g})
               for g in (0.0, 0.5, 1.0) for m in ("local", "global")]
    for name, subset in (("crossed", results), ("alone", results[:3] + results[4:5]),
                         ("scattered", [SettingResult("diffinject", {"gamma": g, "mode": "global"}, test={0: g})
                                        for g in (0.13, 0.71)])):
        path = ablation_plot(tmp_path / f"{name}.png", subset, axes, base, ref, name)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_optuna_space_and_a_clear_error_without_optuna(base, monkeypatch):
    from ray import tune

    from diffinject.sweeps.tune import optuna_searcher, optuna_space

    space = optuna_space([parse_axis("gamma=0.2:0.8", base), parse_axis("k=5:9", base),
                          parse_axis("mode=local,global", base)])
    assert isinstance(space["gamma"], tune.search.sample.Float) and (space["gamma"].lower, space["gamma"].upper) == (0.2, 0.8)
    assert isinstance(space["k"], tune.search.sample.Integer) and (space["k"].lower, space["k"].upper) == (5, 10)
    assert space["mode"].categories == ["local", "global"]
    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(ConfigError, match=r"needs the optuna package: pip install -e '.\[optuna\]'"):
        optuna_searcher(0)


def _argv(digits_root, tmp_path, *extra):
    return ["--quick", "--dataset", "colored_digits", "--retrain-diffusion", "--seeds", "0", "--data-root", str(digits_root / "data"), "--cache-root",
            str(digits_root / "cache"), "--artifact-root", str(tmp_path / "artifacts"), "--out", str(tmp_path / "results"),
            *[item for override in TINY for item in ("--set", override)], "--set", "injection.conflict_ratio=0.05",
            *extra]


def _trial_runs(tracker: Tracker, experiment: str, status: str = "FINISHED"):
    exp = tracker.client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return tracker.client.search_runs([exp.experiment_id], f"tags.`diffinject.role` = 'trial' and "
                                      f"attributes.status = '{status}'")


def test_interrupted_grid_sweep_resumes_without_rerunning_finished_trials(ray_session, digits_root, tmp_path,
                                                                          mlflow_uri, capsys):
    """DiffInject's stages through Tune (injection in a trial); Ctrl-C once the first setting is
    done; the same command then runs only what was left, and compare.py reads the trials."""
    ablations = _script("ablations")
    argv = _argv(digits_root, tmp_path, "--sweep", "gamma=0,1", "--experiment", "abl")
    tracker = Tracker()

    def interrupt_after_first_setting():
        deadline = time.time() + 300
        while time.time() < deadline and len([r for r in _trial_runs(tracker, "abl")
                                              if r.data.tags["method"] == "diffinject"]) < 1:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C: Tune saves its state and stops

    watcher = threading.Thread(target=interrupt_after_first_setting, daemon=True)
    watcher.start()
    assert ablations.main(argv) == 130
    watcher.join()
    first = capsys.readouterr()
    assert "interrupted: 1 of 2 trials finished; the same command resumes" in first.err
    assert not _trial_runs(tracker, "abl", "RUNNING") and not _trial_runs(tracker, "abl", "FAILED")
    assert not (tmp_path / "results" / "abl.md").exists()

    assert ablations.main(argv) == 0
    second = capsys.readouterr().out
    assert "resuming the sweep in" in second and "1 of 2 trials finished before" in second
    assert "reference vanilla:" in second and "best by validation accuracy: gamma=" in second
    runs = _trial_runs(tracker, "abl")
    labels = sorted(r.data.tags["variant"] or r.data.tags["method"] for r in runs)
    assert labels == ["gamma=0", "gamma=1", "vanilla"]  # each exactly once: nothing redone
    assert not _trial_runs(tracker, "abl", "RUNNING") and not _trial_runs(tracker, "abl", "FAILED")
    for name in ("abl.md", "abl.csv", "abl.png"):
        assert (tmp_path / "results" / name).stat().st_size > 0
    rows = (tmp_path / "results" / "abl.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 and rows[0].startswith("method,gamma,seed,test_acc")

    # a different sweep under the same name is refused rather than mixed in
    assert ablations.main(_argv(digits_root, tmp_path, "--sweep", "gamma=0.5", "--experiment", "abl")) == 2
    assert "holds a different sweep" in capsys.readouterr().err

    compare = _script("compare")
    assert compare.main(["--experiments", "abl", "--no-runs"]) == 0
    table = capsys.readouterr().out
    assert "diffinject[gamma=0]" in table and "diffinject[gamma=1]" in table
    assert table.splitlines()[3].startswith("vanilla")  # the reference row first


def test_optuna_search_over_a_range(ray_session, digits_root, tmp_path, mlflow_uri, capsys):
    """Vanilla ignores injection.gamma, so every trial reuses one cached cell: the Tune and
    Optuna machinery at the cost of one small training."""
    ablations = _script("ablations")
    argv = _argv(digits_root, tmp_path, "--method", "vanilla", "--reference", "none", "--search", "optuna",
                 "--samples", "3", "--sweep", "gamma=0.0:1.0", "--experiment", "opt")
    assert ablations.main(argv) == 0
    out = capsys.readouterr().out
    runs = _trial_runs(Tracker(), "opt")
    gammas = [json.loads(r.data.tags["setting"])["gamma"] for r in runs]
    assert len(gammas) == 3 and len(set(gammas)) == 3 and all(0.0 <= g <= 1.0 for g in gammas)
    assert len({r.data.metrics["seed0.test_acc"] for r in runs}) == 1  # one cell behind every trial
    assert "3 Optuna trials" in out and "best by validation accuracy" in out
    assert (tmp_path / "results" / "opt.png").is_file()


def test_the_driver_builds_its_base_with_the_protocol(monkeypatch, capsys):
    ablations, seen = _script("ablations"), []
    real = ablations.experiment_config
    monkeypatch.setattr(ablations, "experiment_config", lambda *a, **kw: seen.append(real(*a, **kw)) or seen[-1])
    assert ablations.main(["--protocol", "paper"]) == 2  # stops at "nothing to sweep", after the preset
    assert "nothing to sweep" in capsys.readouterr().err
    assert seen[-1].injection.protocol == "paper" and seen[-1].bias.scope == "global"
