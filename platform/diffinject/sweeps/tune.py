"""Ablation sweeps on Ray Tune: one trial per setting, evaluated over seeds with cells from the
artifact cache; grid search, or Optuna for joint searches; resumable with `Tuner.restore`.

Trials reserve next to nothing. Tune cannot place a trial that asks for no resources at all,
so each asks for one byte of memory, and runs its cells in a task outside the trial's placement
group: the cells' trainings and injection jobs reserve the CPUs and GPUs they need (as table
cells do), which a CPU held by the trial would starve. `max_concurrent_trials` bounds the
settings in flight. Trials and their cells stay on the driver's node (a sliver of its
`node:<ip>` resource; the cells by node affinity), where the Tune state, the data and the
artifact cache are; the cells' jobs run anywhere (parallel_cells).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import ray
from ray import tune
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from diffinject.cluster.session import on_node
from diffinject.config.schema import ExperimentConfig
from diffinject.core.errors import ConfigError, DiffInjectError
from diffinject.experiment.parallel_cells import RunnerSpec, cell_task
from diffinject.sweeps.ablations import Axis, SettingResult, apply_setting, evaluate_setting, setting_label, trial_key

TRIAL_RESOURCES = {"cpu": 0, "memory": 1}
METRIC = "valid_acc_mean"  # settings are chosen on validation accuracy, never on test
OUTSIDE_TRIAL = PlacementGroupSchedulingStrategy(placement_group=None)


@dataclass
class Sweep:
    """Everything a trial needs (shipped to the trial actors)."""

    runner: RunnerSpec
    base: ExperimentConfig
    axes: list[Axis]
    method: str
    seeds: list[int]
    torch_threads: int  # for in-process trainings (run.num_workers=0) of a trial's cells
    driver_node: str = ""  # the node the cells run on (cluster.session.node_id() of the driver)

    def setting_of(self, config: dict) -> dict:
        """Grid trials carry the whole setting; Optuna's carry one entry per axis."""
        return dict(config["setting"]) if "setting" in config else {a.name: config[a.name] for a in self.axes}

    def key(self, setting: dict) -> str:
        return trial_key(self.method, setting, self.base)


def _trial(config: dict, sweep: Sweep) -> None:
    setting = sweep.setting_of(config)
    cfg = apply_setting(sweep.base, sweep.axes, setting)

    def run_cell(cell_cfg: ExperimentConfig, method: str):
        task = cell_task.options(scheduling_strategy=on_node(sweep.driver_node) if sweep.driver_node else OUTSIDE_TRIAL)
        return ray.get(task.remote(sweep.runner, cell_cfg, method, sweep.torch_threads))

    evaluate_setting(cfg, sweep.method, setting, sweep.seeds, sweep.runner.tracker(), run_cell,
                     sweep.key(setting), on_seed=lambda partial: tune.report(partial.metrics()))


def optuna_space(axes: list[Axis]) -> dict:
    """Listed values are categorical choices; LOW:HIGH ranges are uniform (integers for int fields)."""
    space = {}
    for a in axes:
        if not a.is_range:
            space[a.name] = tune.choice(list(a.values))
        elif isinstance(a.low, int):
            space[a.name] = tune.randint(a.low, a.high + 1)
        else:
            space[a.name] = tune.uniform(a.low, a.high)
    return space


def optuna_searcher(seed: int):
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise ConfigError("--search optuna needs the optuna package: pip install -e '.[optuna]'") from None
    from ray.tune.search.optuna import OptunaSearch

    return OptunaSearch(metric=METRIC, mode="max", seed=seed)


class TrialLines(tune.Callback):
    """One line per finished seed and per finished or failed trial (instead of Tune's tables)."""

    def __init__(self, sweep: Sweep, total: int):
        self.sweep, self.total, self.done, self.started = sweep, total, 0, time.perf_counter()

    def setup(self, **info):  # also on a restored run, whose callbacks are unpickled
        self.started = time.perf_counter()

    def _prefix(self) -> str:
        return f"[{self.done}/{self.total} trials {time.perf_counter() - self.started:6.0f}s]"

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.done = sum(t.status == "TERMINATED" for t in trials)  # a resumed sweep starts with some
        label = setting_label(self.sweep.setting_of(trial.config))
        partial = SettingResult.from_metrics(self.sweep.method, {}, result)
        seed = list(partial.test)[-1]
        print(f"{self._prefix()} {label}: seed {seed} unbiased {partial.test[seed]:.2f} valid {partial.valid[seed]:.2f}"
              f" ({len(partial.test)}/{len(self.sweep.seeds)} seeds)", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done = 1 + sum(t.status == "TERMINATED" for t in trials if t is not trial)
        result = SettingResult.from_metrics(self.sweep.method, {}, trial.last_result)
        print(f"{self._prefix()} {setting_label(self.sweep.setting_of(trial.config))}: done, unbiased "
              f"{result.mean():.2f} ± {result.std():.2f}", flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        print(f"{self._prefix()} {setting_label(self.sweep.setting_of(trial.config))}: FAILED "
              f"(see {trial.path})", flush=True)


def user_error(error: BaseException) -> BaseException:
    """The DiffInjectError behind a trial's failure (Ray wraps it, once per task level it
    crossed, in RayTaskErrors whose text is a traceback), else the error as it is."""
    cause = error
    while isinstance(cause, ray.exceptions.RayTaskError) and cause.cause is not None:
        cause = cause.cause
    return cause if isinstance(cause, DiffInjectError) else error


def _not_the_incomplete_trials_line(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Trials did not complete")  # the driver names each failed trial


def run_sweep(sweep: Sweep, path: Path, settings: list[dict] | None, samples: int, parallel: int,
              search_seed: int = 0) -> tuple[list[tuple[dict, dict, object]], bool]:
    """Run (or resume, when `path` holds this Tune experiment) the sweep. `settings` given: a
    grid over them; None: an Optuna search of `samples` trials. Returns (setting or None, last
    metrics, error) per trial and whether the experiment was restored."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no Tune tables, TrialLines reports
    # a failed trial is one line (TrialLines, and the driver's error line); its traceback is in
    # the trial folder's error.txt
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    logging.getLogger("ray.tune.tune").addFilter(_not_the_incomplete_trials_line)
    here = {f"node:{ray.util.get_node_ip_address()}": 0.001}  # trials on this node
    trainable = tune.with_resources(tune.with_parameters(_trial, sweep=sweep), {**TRIAL_RESOURCES, **here})
    total = len(settings) if settings is not None else samples  # Tune creates trials as slots free up
    run_config = tune.RunConfig(name=path.name, storage_path=str(path.parent), verbose=0,
                                callbacks=[TrialLines(sweep, total)])
    restored = tune.Tuner.can_restore(str(path))
    if restored:
        tuner = tune.Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=True)
        before = tuner.get_results()
        finished = sum(r.error is None and (r.metrics or {}).get("seeds_done") == len(sweep.seeds) for r in before)
        print(f"resuming the sweep in {path}: {finished} of {total} trials finished before", flush=True)
    elif settings is not None:
        tuner = tune.Tuner(trainable, param_space={"setting": tune.grid_search(settings)},
                           tune_config=tune.TuneConfig(max_concurrent_trials=parallel,
                                                       trial_dirname_creator=_dirname),
                           run_config=run_config)
    else:
        tuner = tune.Tuner(trainable, param_space=optuna_space(sweep.axes),
                           tune_config=tune.TuneConfig(search_alg=optuna_searcher(search_seed), num_samples=samples,
                                                       max_concurrent_trials=parallel, trial_dirname_creator=_dirname),
                           run_config=run_config)
    grid = tuner.fit()
    # a trial that never reported (stopped before its first seed) has no config in its result
    return [(sweep.setting_of(r.config) if r.config else None, dict(r.metrics or {}),
             r.error and user_error(r.error)) for r in grid], restored


def _dirname(trial) -> str:
    return f"trial_{trial.trial_id}"
