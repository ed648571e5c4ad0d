"""What the experiment drivers (and the CLI) do around the stages: paths made absolute before
they reach Ray workers, repeated grid values collapsed, the precision@K row only when stage 1
runs, SIGTERM handled like Ctrl-C, one sweep per Tune state, swept values checked against the
data, and an error inside a Tune trial shown as one line. Cells and sweeps are faked where the
driver's own logic is what is tested."""
from __future__ import annotations

import argparse
import copy
import fcntl
import os
import shutil
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from diffinject.config.builder import experiment_config
from diffinject.config.overrides import apply_overrides
from diffinject.data.layout import read_layout
from diffinject.data.parquet import fingerprint
from diffinject.data.registry import get_dataset_spec
from diffinject.experiment.cache import Artifact, ArtifactCache
from diffinject.experiment.cells import CellResult, CellRunner, parse_checkpoints
from diffinject.sweeps.ablations import SettingResult
from diffinject.tracking.client import Tracker
from scripts import load_script as _script


def test_paths_are_made_absolute_and_uris_left_alone(tmp_path, monkeypatch):
    from diffinject.config.overrides import absolute_args

    monkeypatch.chdir(tmp_path)
    cfg = experiment_config("colored_digits", "1", quick=True)  # data, cache, ray_results: relative defaults
    cfg.run.storage_path = "s3://bucket/ray"
    apply_overrides(cfg, ["data.cache_root=sub/cache"])
    assert (cfg.data.data_root, cfg.data.cache_root) == (str(tmp_path / "data"), str(tmp_path / "sub" / "cache"))
    assert cfg.run.storage_path == "s3://bucket/ray"
    apply_overrides(cfg, ["run.storage_path=ray_results"])
    assert cfg.run.storage_path == str(tmp_path / "ray_results")
    args = absolute_args(argparse.Namespace(out=Path("o"), synthetic=["a", "/b"], topk_dir=None,
                                            artifact_root="gs://x/y"), "out", "synthetic", "topk_dir", "artifact_root")
    assert args.out == tmp_path / "o" and args.synthetic == [str(tmp_path / "a"), "/b"]
    assert args.topk_dir is None and args.artifact_root == "gs://x/y"
    assert parse_checkpoints(["bffhq=ck.pt"]) == {"bffhq": str(tmp_path / "ck.pt")}


def test_stage_keys_do_not_depend_on_how_the_data_root_is_written(digits_root, tmp_path, monkeypatch):
    """The dataset fingerprint (part of every stage key) is the same for a relative and an
    absolute data root, so making paths absolute re-keys nothing."""
    monkeypatch.chdir(digits_root)
    spec = get_dataset_spec("colored_digits")
    assert fingerprint(read_layout(Path("data"), spec, "1")) == fingerprint(read_layout(digits_root / "data", spec, "1"))
    relative = experiment_config("colored_digits", "1", quick=True)  # data, cache: relative to digits_root
    absolute = apply_overrides(copy.deepcopy(relative), [])
    assert absolute.data.data_root == str(digits_root / "data")
    runner = CellRunner(ArtifactCache(tmp_path / "artifacts"), Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}"))
    assert runner.cell_material(relative, "vanilla") == runner.cell_material(absolute, "vanilla")
    assert runner.stage2_material(relative) == runner.stage2_material(absolute)  # its Parquet folder's fingerprint


@pytest.mark.slow
def test_relative_paths_reach_a_real_ray_train_worker(ray_session, digits_root, tmp_path, mlflow_uri, monkeypatch,
                                                      capsys):
    """table1.py with its relative default roots and one Ray Train worker per training (as on a
    GPU cluster): the worker runs in its trial folder and must still find the Parquet data."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(digits_root / "data", "data", ignore=lambda folder, names: [
        n for n in names if n.endswith("pct") and n != "1pct"])
    table1, sigint = _script("table1"), signal.getsignal(signal.SIGINT)
    assert table1.main(["--quick", "--datasets", "colored_digits", "--ratios", "1", "--seeds", "0", "--methods", "vanilla", "--num-workers", "1",
                        "--set", "classifier.num_steps=6", "--set", "classifier.eval_every=3"]) == 0, \
        capsys.readouterr().err
    assert "[1/1" in capsys.readouterr().out
    assert (tmp_path / "results" / "table1-quick.md").is_file() and list((tmp_path / "artifacts" / "cell").iterdir())
    assert signal.getsignal(signal.SIGINT) is sigint  # Ctrl-C is still a KeyboardInterrupt, not Ray Train's abort


class NotHandled(BaseException):
    """What a SIGTERM raises where the driver installed no handler of its own."""


def _not_handled(signum, frame):
    raise NotHandled


@pytest.fixture
def no_sigterm_handler():
    """SIGTERM raises NotHandled unless the driver handles it; the test process's handlers come back after."""
    before = signal.signal(signal.SIGTERM, _not_handled), signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGTERM, before[0])
    signal.signal(signal.SIGINT, before[1])


def _table1_argv(digits_root, tmp_path, *extra):
    return ["--quick", "--datasets", "colored_digits", "--data-root", str(digits_root / "data"), "--cache-root", str(digits_root / "cache"),
            "--artifact-root", str(tmp_path / "artifacts"), "--out", str(tmp_path / "results"), *extra]


def _fake_run_cells(jobs_seen: list, accuracy: float = 0.2775):
    def run_cells(spec, jobs, parallel, on_result):
        jobs_seen.extend(jobs)
        results = [CellResult(cfg.data.dataset, cfg.data.ratio, method, cfg.run.seed,
                              {"reported_acc": accuracy, "reported_acc_best_test": accuracy, "test_acc": accuracy},
                              "run") for cfg, method in jobs]
        for r in results:
            on_result(r)
        return results
    return run_cells


def test_repeated_grid_values_are_one_value(ray_session, digits_root, tmp_path, mlflow_uri, monkeypatch, capsys):
    jobs = []
    monkeypatch.setattr("diffinject.experiment.parallel_cells.run_cells", _fake_run_cells(jobs))
    table1 = _script("table1")
    assert table1.main(_table1_argv(digits_root, tmp_path, "--seeds", "0", "0", "--ratios", "1", "1.0",
                                    "--methods", "vanilla", "vanilla")) == 0
    out = capsys.readouterr().out
    assert [(cfg.data.ratio, cfg.run.seed, method) for cfg, method in jobs] == [("1", 0, "vanilla")]
    assert "note: --seeds 0 0 repeats values; using 0" in out and "note: --ratios 1 1.0 repeats values; using 1" in out
    assert "note: --methods vanilla vanilla repeats values; using vanilla" in out
    assert "27.75 ± 0.00" in out and "over 1 seed(s)" in out


def test_the_quick_table_defaults_to_1_percent_over_5_seeds_from_the_shipped_model(ray_session, digits_root, tmp_path,
                                                                                   mlflow_uri, monkeypatch, capsys):
    jobs, specs = [], []
    monkeypatch.setattr("diffinject.experiment.parallel_cells.run_cells", _fake_run_cells(jobs))
    table1 = _script("table1")
    real_spec = __import__("diffinject.experiment.parallel_cells", fromlist=["RunnerSpec"]).RunnerSpec
    monkeypatch.setattr("diffinject.experiment.parallel_cells.RunnerSpec", lambda *a, **k: specs.append(a) or real_spec(*a, **k))
    assert table1.main(_table1_argv(digits_root, tmp_path, "--methods", "vanilla")) == 0
    assert [(cfg.data.ratio, cfg.run.seed) for cfg, _ in jobs] == [("1", s) for s in range(5)]
    from diffinject.experiment.shipped_diffusion import SHIPPED

    assert specs[0][2] == {"colored_digits": str(SHIPPED["colored_digits"].path)}  # the cells start from it


def test_stage_1_left_to_build_for_precision_at_k_is_counted_in_the_progress(capsys):
    """A method on synthetic data built every stage-1 set its table needs, except one that is
    no longer in the cache: that one is built for the precision@K row, as a counted step."""
    table1 = _script("table1")
    cfgs = [experiment_config("colored_digits", "1", quick=True) for _ in range(2)]
    cfgs[1].run.seed = 1

    class Runner:
        class cache:
            @staticmethod
            def lookup(stage, key):
                return None if key == missing else object()

        stage1_material = staticmethod(lambda cfg: {"seed": cfg.run.seed})

        @staticmethod
        def stage1(cfg):
            return Artifact("stage1", "", Path("."), {"metrics": {"precision_at_k": 0.5 + cfg.run.seed / 10}},
                            reused=cfg.run.seed == 0)

    missing = table1.artifact_key("stage1", {"seed": 1})
    progress = table1.Progress(2)
    progress.done = 2
    table, built = table1.Table1(["diffinject"]), Counter()
    try:
        table1.add_precision_row(table, Runner, cfgs, progress, built)
    finally:
        progress.close()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("[3/3") and "seed 1 stage 1 (for precision@K): 0.60" in lines[0]
    assert built == {("stage1", "built"): 1} and table.precision[("colored_digits", "1")] == [0.5, 0.6]


def test_sigterm_ends_a_table_run_like_ctrl_c(ray_session, digits_root, tmp_path, mlflow_uri, monkeypatch, capsys,
                                              no_sigterm_handler):
    """The run open in the driver ends KILLED, and so does one a cell's Ray task left RUNNING."""
    tracker, runs = Tracker(), []

    def terminated_cells(spec, jobs, parallel, on_result):
        exp = tracker.experiment("table1-quick")
        runs.extend([tracker.start_run(exp, "in-task", {}), tracker.start_run(exp, "in-driver", {})])
        with tracker.ending(runs[-1]):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)

    monkeypatch.setattr("diffinject.experiment.parallel_cells.run_cells", terminated_cells)
    assert _script("table1").main(_table1_argv(digits_root, tmp_path, "--seeds", "0", "--methods", "vanilla")) == 130
    assert "interrupted: finished stages are kept" in capsys.readouterr().err
    assert [tracker.client.get_run(r).info.status for r in runs] == ["KILLED", "KILLED"]


def test_sigterm_is_a_keyboard_interrupt_whatever_handles_sigint(no_sigterm_handler):
    from diffinject.cli.run_guards import sigterm_as_interrupt

    sigterm_as_interrupt()
    signal.signal(signal.SIGINT, lambda signum, frame: None)  # e.g. one a finished Ray Train run left
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)


def _ablations_argv(digits_root, tmp_path, *extra):
    return ["--quick", "--dataset", "colored_digits", "--seeds", "0", "--reference", "none", "--experiment", "abl", "--data-root",
            str(digits_root / "data"), "--cache-root", str(digits_root / "cache"), "--artifact-root",
            str(tmp_path / "artifacts"), "--out", str(tmp_path / "results"), *extra]


def _fake_run_sweep(sweeps_seen: list):
    def run_sweep(sweep, path, settings, samples, parallel):
        sweeps_seen.append(sweep)
        return [(s, SettingResult(sweep.method, s, test={x: 50.0 for x in sweep.seeds},
                                  valid={x: 40.0 for x in sweep.seeds}).metrics(), None) for s in settings], False
    return run_sweep


def test_a_repeated_seed_of_a_sweep_is_one_seed(ray_session, digits_root, tmp_path, mlflow_uri, monkeypatch, capsys):
    sweeps = []
    monkeypatch.setattr("diffinject.sweeps.tune.run_sweep", _fake_run_sweep(sweeps))
    argv = _ablations_argv(digits_root, tmp_path, "--sweep", "gamma=0,1,0.0")
    argv[argv.index("--seeds") + 1:argv.index("--seeds") + 2] = ["0", "0"]
    assert _script("ablations").main(argv) == 0
    out = capsys.readouterr().out
    assert sweeps[0].seeds == [0] and "note: --seeds 0 0 repeats values; using 0" in out
    assert "note: --sweep gamma 0.0 1.0 0.0 repeats values; using 0.0 1.0" in out
    assert "2 settings (grid) x 1 seeds" in out


def test_a_second_sweep_on_the_same_tune_state_is_refused(ray_session, digits_root, tmp_path, mlflow_uri,
                                                          monkeypatch, capsys):
    sweeps = []
    monkeypatch.setattr("diffinject.sweeps.tune.run_sweep", _fake_run_sweep(sweeps))
    lock = tmp_path / "results" / "tune" / "abl.lock"
    lock.parent.mkdir(parents=True)
    with open(lock, "a") as running:  # the sweep that is running now
        fcntl.flock(running, fcntl.LOCK_EX)
        assert _script("ablations").main(_ablations_argv(digits_root, tmp_path, "--sweep", "gamma=0")) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: another sweep of experiment 'abl' holds {lock}") and err.count("\n") == 1
    assert not sweeps
    assert _script("ablations").main(_ablations_argv(digits_root, tmp_path, "--sweep", "gamma=0")) == 0  # released


@pytest.mark.parametrize("sweep, message", [
    ("k=5,100000", "error: --sweep gamma=1,k=100000: bias.k = 100000 per class is larger than the smallest class "
                   "of the training set of colored_digits at 1% (109 samples)"),
    ("ratio=0.1,0.0001", "error: --sweep gamma=1,ratio=0.0001: injection.conflict_ratio = 0.0001 of the 1200 "
                         "training samples of colored_digits at 1% rounds to 0 synthetic samples")])
def test_swept_values_are_checked_against_the_data_before_tune_starts(ray_session, digits_root, tmp_path, mlflow_uri,
                                                                       monkeypatch, capsys, sweep, message):
    sweeps = []
    monkeypatch.setattr("diffinject.sweeps.tune.run_sweep", _fake_run_sweep(sweeps))
    assert _script("ablations").main(_ablations_argv(digits_root, tmp_path, "--sweep", "gamma=1", "--sweep",
                                                     sweep)) == 2
    assert capsys.readouterr().err == message + "\n" and not sweeps


def test_sigterm_ends_a_sweep_like_ctrl_c(ray_session, digits_root, tmp_path, mlflow_uri, monkeypatch, capsys,
                                          no_sigterm_handler):
    tracker, runs = Tracker(), []

    def terminated_sweep(sweep, path, settings, samples, parallel):
        runs.append(tracker.start_run(tracker.experiment("abl"), "trial", {}))
        with tracker.ending(runs[-1]):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)

    monkeypatch.setattr("diffinject.sweeps.tune.run_sweep", terminated_sweep)
    assert _script("ablations").main(_ablations_argv(digits_root, tmp_path, "--sweep", "gamma=0")) == 130
    assert "interrupted:" in capsys.readouterr().err
    assert tracker.client.get_run(runs[0]).info.status == "KILLED"


@pytest.mark.slow
def test_an_error_inside_a_trial_is_one_line(ray_session, digits_root, tmp_path, mlflow_uri, monkeypatch, capfd):
    """A DiffInjectError in a trial's cell (here: the --checkpoint file is gone, removed after
    the driver checked it) reaches the user as its message, without the tracebacks of the Ray
    tasks it crossed."""
    from diffinject.experiment.shipped_diffusion import quick_checkpoint

    gone = tmp_path / "gone.pt"
    shutil.copyfile(quick_checkpoint("colored_digits"), gone)
    ablations = _script("ablations")
    start_ray = ablations.ensure_ray
    monkeypatch.setattr(ablations, "ensure_ray", lambda: (gone.unlink(), start_ray()))
    argv = _ablations_argv(digits_root, tmp_path, "--sweep", "gamma=0", "--checkpoint", f"colored_digits={gone}")
    assert ablations.main(argv) == 2
    err = capfd.readouterr().err
    assert f"error: trial gamma=0 failed: --checkpoint colored_digits={tmp_path / 'gone.pt'}: no such file\n" in err
    assert "Traceback" not in err and len([line for line in err.splitlines() if "error" in line.lower()]) == 1


def test_user_error_unwraps_ray_task_errors():
    from ray.exceptions import RayTaskError

    from diffinject.core.errors import ConfigError
    from diffinject.sweeps.tune import user_error

    inner = RayTaskError("task", "Traceback ...", ConfigError("bias.k too large")).as_instanceof_cause()
    outer = RayTaskError("trial", "Traceback ...", inner).as_instanceof_cause()
    assert repr(user_error(outer)) == "ConfigError('bias.k too large')"
    bug = RayTaskError("trial", "Traceback ...", ValueError("a bug")).as_instanceof_cause()
    assert user_error(bug) is bug
