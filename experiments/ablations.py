"""Ablations the paper left out, on Ray Tune: DiffInject's accuracy as gamma, K, the conflict
ratio, the top-K scope, the injection step counts, t_edit or local/global injection vary, alone
or crossed, over seeds.

    python experiments/ablations.py --quick          # gamma and ratio sweeps on Colored Digits, CPU
    python experiments/ablations.py --dataset cmnist --ratio 1 --sweep gamma=0.3,0.5,0.7,0.9 --sweep k=10,50,100
    python experiments/ablations.py --dataset cmnist --sweep gamma=0.3,0.9 --sweep t_edit=200,400,600 --cross
    python experiments/ablations.py --dataset cmnist --search optuna --samples 16 \\
        --sweep gamma=0.2:1.0 --sweep t_edit=100:700 --sweep mode=local,global

Axes: gamma (injection.gamma), k (bias.k), ratio (injection.conflict_ratio), scope (bias.scope),
steps (both DDIM step counts), inversion_steps, generation_steps, t_edit, mode (injection.mode),
label_from (injection.label_from), k_per_class (bias.k with bias.scope=per_class), p2_gamma
(diffusion.gamma), or any config field as SECTION.FIELD. Swept alone, each axis varies
around the preset with the others at the preset's value; --cross runs every combination. Grid
search by default; --search optuna searches jointly (values become choices, LOW:HIGH ranges).

One Tune trial per setting runs every seed; its cells come from the artifact cache (shared with
table1.py under the same --artifact-root), so a gamma sweep trains one diffusion model and one
bias classifier per seed. Each trial is one MLflow run (role "trial"); the reference method is
evaluated the same way. An interrupted sweep resumes with `Tuner.restore` when the same command
is run again. Settings are ranked by validation accuracy; the plot shows unbiased test accuracy
against each swept value, mean ± std over the seeds.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import time
from pathlib import Path

from diffinject.cli.arguments import ArgumentParser
from diffinject.cli.run_guards import exclusive, sigterm_as_interrupt
from diffinject.cluster.session import ensure_ray
from diffinject.cluster.session import check_shared_services, decide_gpu_use, gpu_capacity, request_gpu_nodes
from diffinject.config.builder import experiment_config
from diffinject.config.overrides import absolute_args, apply_overrides
from diffinject.config.overrides import distinct
from diffinject.config.quick import QUICK_DATASET
from diffinject.config.rules import COUNT, NON_NEGATIVE, SEED, check_options
from diffinject.config.schema import flatten
from diffinject.core.atomic import atomic_file
from diffinject.core.errors import ConfigError, DiffInjectError
from diffinject.core.preflight import check_data_paths, check_output_dir
from diffinject.data.embedded import EMBEDDED
from diffinject.experiment.cells import check_checkpoint_datasets, parse_checkpoints
from diffinject.experiment.run_context import check_against_data, dataset_folder
from diffinject.experiment.shipped_diffusion import with_quick_checkpoint
from diffinject.methods import get_method
from diffinject.nets.diffusion.checkpoint import check_given_checkpoints
from diffinject.sweeps.ablations import (Axis, SettingResult, ablation_plot, apply_setting, best_setting,
                                         end_stopped_runs, evaluate_setting, finished_trial, format_results,
                                         grid_settings, parse_axis, setting_label, trial_key, write_csv)
from diffinject.tracking.client import Tracker, tracking_uri
from diffinject.tracking.store_check import check_tracking_store

QUICK_SWEEPS = ["gamma=0,0.5,1", "ratio=0.05,0.1,0.2"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"{QUICK_DATASET} 1%% on CPU, sweeps {' '.join(QUICK_SWEEPS)}")
    p.add_argument("--protocol", choices=("release", "paper"), default="release",
                   help="DiffInject's presets: the authors' released code or the paper's text (docs/design.md 2.3)")
    p.add_argument("--baselines", choices=("reference", "uniform"), default="reference",
                   help="how the comparison methods and the stage-4 classifier train: as their reference "
                        "repositories do, or all alike (docs/design.md 2.4)")
    p.add_argument("--dataset", default=QUICK_DATASET)
    p.add_argument("--ratio", default="1", help="percent of bias-conflicting training samples of the data set")
    p.add_argument("--sweep", action="append", default=[], metavar="NAME=V1,V2,...|NAME=LOW:HIGH")
    p.add_argument("--cross", action="store_true", help="every combination of the swept values (default: one axis "
                                                        "at a time around the preset)")
    p.add_argument("--search", choices=("grid", "optuna"), default="grid")
    p.add_argument("--samples", type=int, default=12, help="Optuna trials")
    p.add_argument("--method", default="diffinject", help="the method whose settings are swept")
    p.add_argument("--reference", default="vanilla", help="method every setting is compared with ('none': skip)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--data-root", default="data")
    p.add_argument("--cache-root", default="cache", help="Parquet conversions of the datasets")
    p.add_argument("--artifact-root", default="artifacts", help="stage outputs (shared with table1.py): a folder or "
                                                                "a URI pyarrow opens (s3://bucket/path)")
    p.add_argument("--checkpoint", action="append", default=[], metavar="DATASET=PATH",
                   help="a diffusion checkpoint for DATASET instead of training one")
    p.add_argument("--retrain-diffusion", action="store_true",
                   help="--quick: train the diffusion model instead of starting from the checkpoint "
                        "the project ships")
    p.add_argument("--experiment", help="MLflow experiment and Tune experiment name (default ablations[-quick])")
    p.add_argument("--out", default="results", help="folder for the table, CSV and plot")
    p.add_argument("--tune-root", help="Tune experiment state (default OUT/tune)")
    p.add_argument("--fresh", action="store_true", help="discard this experiment's Tune state and start over "
                                                        "(finished stages still come from the artifact cache)")
    p.add_argument("--num-workers", type=int, help="Ray Train workers per training (default: 1 on GPUs or on a "
                                                   "cluster of several nodes; 0 = in-process on a single CPU node)")
    p.add_argument("--parallel", type=int, help="trials in flight at once (default: the GPUs the cluster has or "
                                                 "its autoscaler may add, or 1)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", help="change the preset")
    return p.parse_args(argv)


def sweep_record(args, axes: list[Axis], base, seeds: list[int]) -> dict:
    """What makes a Tune experiment this sweep: a restored experiment must match it."""
    return {"method": args.method, "search": args.search, "cross": args.cross, "seeds": seeds,
            "samples": args.samples if args.search == "optuna" else None,
            "axes": [[a.name, list(a.values), a.low, a.high] for a in axes], "base": flatten(base)}


def check_same_sweep(record_path: Path, record: dict, tune_path: Path) -> None:
    """A Tune experiment resumes only the sweep that started it."""
    if not record_path.is_file() or not tune_path.exists():
        return
    old = json.loads(record_path.read_text())
    changed = sorted(k for k in set(old) | set(record) if old.get(k) != record.get(k))
    if changed:
        raise ConfigError(f"{tune_path} holds a different sweep of this experiment (it differs in: "
                          f"{', '.join(changed)}); add --fresh to replace it, or give --experiment NAME")


def check_settings_against_data(base, axes: list[Axis], settings: list[dict] | None, method: str) -> None:
    """Every grid setting (Optuna: every listed value and both ends of every range) fits the
    data, before Tune starts a trial that would fail on it."""
    checked = settings if settings is not None else [{a.name: v} for a in axes for v in (a.values or (a.low, a.high))]
    for setting in checked:
        try:
            check_against_data(apply_setting(base, axes, setting), (method,))
        except ConfigError as exc:
            raise ConfigError(f"--sweep {setting_label(setting)}: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    args = absolute_args(parse_args(argv), "artifact_root", "out")
    sigterm_as_interrupt()
    with contextlib.ExitStack() as held:  # the lock on this experiment's Tune state, once taken
        return run(args, held)


def run(args: argparse.Namespace, held: contextlib.ExitStack) -> int:
    if args.quick and args.dataset not in EMBEDDED:
        print(f"error: --dataset {args.dataset}: --quick runs on an embedded dataset ({' or '.join(EMBEDDED)})",
              file=sys.stderr)
        return 2
    experiment = args.experiment or ("ablations-quick" if args.quick else "ablations")
    out = Path(args.out)
    tune_path = (Path(args.tune_root) if args.tune_root else out / "tune").resolve() / experiment
    record_path = tune_path.with_name(f"{experiment}.sweep.json")
    started_ms = int(time.time() * 1000)
    try:
        check_options(args, {"seeds": SEED, "num_workers": NON_NEGATIVE, "parallel": COUNT, "samples": COUNT})
        get_method(args.method)
        reference = None if args.reference == "none" else args.reference
        if reference:
            get_method(reference)
        checkpoints = parse_checkpoints(args.checkpoint)
        check_checkpoint_datasets(checkpoints, [args.dataset])
        base = experiment_config(args.dataset, args.ratio, quick=args.quick, protocol=args.protocol,
                      baselines=args.baselines)
        base.data.data_root, base.data.cache_root = args.data_root, args.cache_root
        base.run.experiment = experiment
        apply_overrides(base, args.set)
        seeds = distinct(args.seeds, "--seeds")
        sweeps = args.sweep or (QUICK_SWEEPS if args.quick else [])
        if not sweeps:
            raise ConfigError("nothing to sweep: give --sweep NAME=V1,V2,... (or --quick)")
        axes = [parse_axis(text, base) for text in sweeps]
        if len({a.name for a in axes}) != len(axes):
            raise ConfigError("an axis is swept twice; give each --sweep NAME once")
        check_given_checkpoints(checkpoints, [base])
        checkpoints = with_quick_checkpoint(checkpoints, args.quick, args.retrain_diffusion, [base],
                                            swept=[f for a in axes for f in a.fields])
        settings = grid_settings(axes, base, args.cross) if args.search == "grid" else None
        for folder, what in ((out, "--out"), (tune_path.parent, "--tune-root"), (args.artifact_root, "--artifact-root"),
                             (base.run.storage_path, "run.storage_path")):
            check_output_dir(folder, what)
        check_tracking_store()
        check_data_paths(base.data)
        dataset_folder(base)
        if get_method(args.method).needs_synthetic:
            check_settings_against_data(base, axes, settings, args.method)
        ensure_ray()
        for line in check_shared_services(tracking_uri(), [base.run.storage_path]):
            print(line, flush=True)
        capacity = gpu_capacity()
        on_gpu, gpu_line = decide_gpu_use([base], capacity)  # once: no job decides again
        from diffinject.experiment.parallel_cells import RunnerSpec, default_num_workers, threads_per_cell

        base.run.num_workers = args.num_workers if args.num_workers is not None else default_num_workers(on_gpu)
        parallel = args.parallel or (max(1, capacity["alive"] + capacity["scalable"]) if on_gpu else 1)
        print(f"{gpu_line}; {base.run.num_workers or 'no'} Ray Train worker(s) per training", flush=True)
        record = sweep_record(args, axes, base, seeds)
        held.enter_context(exclusive(tune_path.with_name(f"{experiment}.lock"), f"sweep of experiment {experiment!r}"))
        if args.fresh and tune_path.exists():
            shutil.rmtree(tune_path)
        check_same_sweep(record_path, record, tune_path)
        tune_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(record_path) as handle:
            json.dump(record, handle, indent=1)

        from diffinject.cluster.session import node_id
        from diffinject.sweeps.tune import Sweep, run_sweep

        tracker = Tracker()
        spec = RunnerSpec(str(args.artifact_root), tracker.uri, checkpoints)
        sweep = Sweep(spec, base, axes, args.method, seeds, threads_per_cell(parallel), node_id())
        if on_gpu:
            held.callback(request_gpu_nodes, 0)  # withdrawn at the end: idle GPU nodes go after the idle timeout
            request_gpu_nodes(parallel)
        what = f"{len(settings)} settings (grid)" if settings is not None else f"{args.samples} Optuna trials"
        print(f"{args.method} on {args.dataset} {base.data.ratio}%: {what} x {len(seeds)} seeds, "
              f"{parallel} at a time; artifacts in {args.artifact_root}; Tune state in {tune_path}", flush=True)
        ref = evaluate_reference(reference, base, seeds, spec, tracker) if reference else None
        trials, restored = run_sweep(sweep, tune_path, settings, args.samples, parallel)
    except DiffInjectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        end_stopped_runs(Tracker(), experiment, started_ms)
        print(f"\ninterrupted: finished stages are kept under {args.artifact_root}; the same command continues",
              file=sys.stderr)
        return 130

    results = [SettingResult.from_metrics(args.method, setting, metrics) for setting, metrics, error in trials
               if error is None and metrics.get("seeds_done") == len(seeds)]
    failed = [(setting, error) for setting, _, error in trials if error is not None]
    for setting, error in failed:
        print(f"error: trial {setting_label(setting)} failed: {error}", file=sys.stderr)
    total = len(settings) if settings is not None else args.samples
    if len(results) + len(failed) < total:
        end_stopped_runs(tracker, experiment, started_ms)
        print(f"\ninterrupted: {len(results)} of {total} trials finished; the same command resumes the sweep "
              f"from {tune_path} (finished stages are kept under {args.artifact_root})", file=sys.stderr)
        return 130
    if failed or not results:
        return 2
    write_outputs(results, axes, base, ref, out, experiment, tracker, restored)
    return 0


def evaluate_reference(method: str, base, seeds: list[int], spec, tracker: Tracker) -> SettingResult:
    """The reference method over the seeds, as a trial run of its own; reused when this
    experiment already has one for the same config."""
    key = trial_key(method, {}, base)
    found = finished_trial(tracker, base.run.experiment, key)
    if found and sorted(found.test) == sorted(seeds):
        print(f"reference {method}: {found.mean():.2f} ± {found.std():.2f} (trial run {found.run_id})", flush=True)
        return found
    runner = spec.runner()
    ref = evaluate_setting(base, method, {}, seeds, tracker, runner.cell, key)
    print(f"reference {method}: {ref.mean():.2f} ± {ref.std():.2f} (trial run {ref.run_id})", flush=True)
    return ref


def write_outputs(results: list[SettingResult], axes: list[Axis], base, ref: SettingResult | None, out: Path,
                  experiment: str, tracker: Tracker, restored: bool) -> None:
    """Print the settings and the best one; write Markdown, CSV and the plot; log them to MLflow."""
    best = best_setting(results)
    text = format_results(results, axes, ref)
    seeds = len(best.test)
    summary = (f"best by validation accuracy: {setting_label(best.setting)}: unbiased {best.mean():.2f} ± "
               f"{best.std():.2f} (valid {best.mean('valid'):.2f} ± {best.std('valid'):.2f})")
    if ref:
        diff = [best.test[s] - ref.test[s] for s in best.test if s in ref.test]
        summary += f", {sum(diff) / len(diff):+.2f} points vs {ref.method} (paired over {len(diff)} seeds)"
    print(f"\n{text}\n\n{summary}")
    out.mkdir(parents=True, exist_ok=True)
    md, csv_path, png = out / f"{experiment}.md", out / f"{experiment}.csv", out / f"{experiment}.png"
    with atomic_file(md) as handle:
        handle.write(f"# Ablations ({experiment}): {base.data.dataset} {base.data.ratio}%, {seeds} seed(s)\n\n"
                     f"Accuracies in %, mean ± std over seeds; Δ paired by seed.\n\n```\n{text}\n```\n\n{summary}\n")
    write_csv(csv_path, results, axes, ref)
    ablation_plot(png, results, axes, base, ref, f"{experiment}: {base.data.dataset} {base.data.ratio}%, "
                                                  f"unbiased accuracy, mean ± std over {seeds} seeds")
    run_id = tracker.start_run(tracker.experiment(experiment), f"{experiment}-summary",
                               {"diffinject.role": "ablation", "settings": len(results),
                                "best": setting_label(best.setting), "resumed": restored})
    tracker.log_metrics(run_id, {"best_test_acc_mean": best.mean(), "best_valid_acc_mean": best.mean("valid")})
    for path in (md, csv_path, png):
        tracker.log_artifact(run_id, path)
    tracker.finish(run_id)
    print(f"table: {md} (+ {csv_path.name}, {png.name})   MLflow: {tracker.uri} (experiment {experiment!r}; "
          f"`python experiments/compare.py --experiments {experiment}`)")


if __name__ == "__main__":
    sys.exit(main())
