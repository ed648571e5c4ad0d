"""Reproduce the paper's Table 1: every registered method on every dataset and ratio, over seeds.

    python experiments/table1.py --quick          # Colored Digits at 1%, 5 seeds, CPU, < 20 minutes
    python experiments/table1.py --data-root DIR \\
        --checkpoint bffhq=ffhq_p2.pt --checkpoint dogs_and_cats=afhqdog_p2.pt   # the full table

Every stage output (bias classifier and top-K set, diffusion model, synthetic set, trained
cell) is cached under --artifact-root by a hash of its config and inputs: re-running an
interrupted command redoes only what is missing, and a stage many cells share (a dataset's
diffusion model) is built once. Cells run --parallel at a time on the Ray cluster that
RAY_ADDRESS names (or a local one). Results go to MLflow (MLFLOW_TRACKING_URI, default
./mlflow.db); the table is printed and written under --out as Markdown, CSV and a bar chart.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

from diffinject.cli.arguments import ArgumentParser
from diffinject.cli.run_guards import sigterm_as_interrupt
from diffinject.cluster.session import ensure_ray
from diffinject.cluster.session import check_shared_services, decide_gpu_use, gpu_capacity, request_gpu_nodes
from diffinject.config.builder import check_shipped_generators, experiment_config, without_shipped_generators
from diffinject.config.overrides import absolute_args, apply_overrides
from diffinject.config.overrides import distinct
from diffinject.config.quick import QUICK_DATASET
from diffinject.config.rules import COUNT, NON_NEGATIVE, SEED, check_options
from diffinject.core.errors import DiffInjectError
from diffinject.core.preflight import check_data_paths, check_output_dir
from diffinject.data.registry import get_dataset_spec, normalize_ratio
from diffinject.experiment.cache import artifact_key
from diffinject.experiment.cells import CellResult, check_checkpoint_datasets, parse_checkpoints
from diffinject.experiment.progress import Progress
from diffinject.experiment.run_context import check_against_data, dataset_folder, with_seed
from diffinject.experiment.shipped_diffusion import with_quick_checkpoint
from diffinject.methods import get_method, table_methods
from diffinject.nets.diffusion.checkpoint import check_given_checkpoints
from diffinject.reporting.table1 import Table1
from diffinject.tracking.client import Tracker
from diffinject.tracking.store_check import check_tracking_store

PAPER_DATASETS = ("cmnist", "cifar10c", "bffhq", "dogs_and_cats")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"the embedded {QUICK_DATASET} on CPU")
    p.add_argument("--protocol", choices=("release", "paper"), default="release",
                   help="DiffInject's presets: the authors' released code or the paper's text (docs/design.md 2.3)")
    p.add_argument("--baselines", choices=("reference", "uniform"), default="reference",
                   help="how the comparison methods and the stage-4 classifier train: as their reference "
                        "repositories do, or all alike (docs/design.md 2.4)")
    p.add_argument("--datasets", nargs="+", help=f"default: {' '.join(PAPER_DATASETS)} (--quick: {QUICK_DATASET})")
    p.add_argument("--ratios", nargs="+", help="default: 1 5 (--quick: 1, where the quick DiffInject row is measured)")
    p.add_argument("--methods", nargs="+", help="default: every registered method")
    p.add_argument("--seeds", nargs="+", type=int, default=list(range(5)),
                   help="default: 0 1 2 3 4 (a method's gain is a paired per-seed difference over >= 5 seeds)")
    p.add_argument("--data-root", default="data")
    p.add_argument("--cache-root", default="cache", help="Parquet conversions of the datasets")
    p.add_argument("--artifact-root", default="artifacts",
                   help="stage outputs: a folder or a URI pyarrow opens (s3://bucket/path)")
    p.add_argument("--checkpoint", action="append", default=[], metavar="DATASET=PATH",
                   help="a diffusion checkpoint for DATASET (released guided-diffusion / P2 file, or ours) "
                        "instead of training one")
    p.add_argument("--retrain-diffusion", action="store_true",
                   help="--quick: train the diffusion model instead of starting from the checkpoint "
                        "the project ships")
    p.add_argument("--retrain-generators", action="store_true",
                   help="--quick: train A²'s source StyleGAN2 and AmpliBias's FastGANs from scratch instead of "
                        "starting from the generators the project ships")
    p.add_argument("--experiment", help="MLflow experiment (default table1 or table1-quick)")
    p.add_argument("--out", default="results", help="folder for the finished table")
    p.add_argument("--num-workers", type=int, help="Ray Train workers per training (default: 1 on GPUs or on a "
                                                   "cluster of several nodes; 0 = in-process on a single CPU node)")
    p.add_argument("--parallel", type=int, help="cells in flight at once (default: the GPUs the cluster has or its autoscaler may add; "
                        "on CPUs, --quick: one per CPU, "
                        "each with one torch thread; else 1)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    return p.parse_args(argv)


def cell_jobs(configs, seeds, methods) -> list:
    """Every (config, method) cell; methods on synthetic data first in each (dataset, ratio, seed),
    so the long shared stages start early."""
    ordered = sorted(methods, key=lambda m: not get_method(m).needs_synthetic)
    return [(with_seed(cfg, seed), method) for cfg in configs for seed in seeds for method in ordered]


def main(argv: list[str] | None = None) -> int:
    args = absolute_args(parse_args(argv), "artifact_root", "out")
    sigterm_as_interrupt()
    experiment = args.experiment or ("table1-quick" if args.quick else "table1")
    started_ms = int(time.time() * 1000)
    progress, requested_gpus = None, False
    try:
        check_options(args, {"seeds": SEED, "num_workers": NON_NEGATIVE, "parallel": COUNT})
        datasets = distinct(args.datasets or ([QUICK_DATASET] if args.quick else list(PAPER_DATASETS)), "--datasets")
        methods = distinct(args.methods or table_methods(), "--methods")
        on_synthetic = any([get_method(m).needs_synthetic for m in methods])  # (each checked) these run stages 1-3
        ratios = distinct(args.ratios or (["1"] if args.quick else ["1", "5"]), "--ratios",
                          key=lambda r: tuple(normalize_ratio(get_dataset_spec(d), r) for d in datasets))
        seeds = distinct(args.seeds, "--seeds")
        checkpoints = parse_checkpoints(args.checkpoint)
        check_checkpoint_datasets(checkpoints, datasets)
        configs = []
        for dataset in datasets:
            for ratio in ratios:
                cfg = experiment_config(dataset, ratio, quick=args.quick, protocol=args.protocol, baselines=args.baselines)
                cfg.data.data_root, cfg.data.cache_root = args.data_root, args.cache_root
                cfg.run.experiment = experiment
                if args.retrain_generators:
                    cfg = without_shipped_generators(cfg)
                configs.append(apply_overrides(cfg, args.set))
        check_shipped_generators(configs)
        check_given_checkpoints(checkpoints, configs)
        checkpoints = with_quick_checkpoint(checkpoints, args.quick, args.retrain_diffusion, configs)
        check_output_dir(args.out, "--out")
        check_output_dir(args.artifact_root, "--artifact-root")
        check_tracking_store()
        for cfg in configs:  # every dataset is found and valid (and fits stages 1 and 3), every output writable,
            check_output_dir(cfg.run.storage_path, "run.storage_path")  # before anything starts
            check_data_paths(cfg.data)
            if on_synthetic:
                check_against_data(cfg, methods)
            else:
                dataset_folder(cfg)
        ensure_ray()
        tracker = Tracker()
        for line in check_shared_services(tracker.uri, [cfg.run.storage_path for cfg in configs]):
            print(line, flush=True)
        capacity = gpu_capacity()
        on_gpu, gpu_line = decide_gpu_use(configs, capacity)  # once: no job decides again
        from diffinject.experiment.parallel_cells import (RunnerSpec, default_num_workers, default_parallel,
                                                          in_job_order, run_cells)

        for cfg in configs:
            cfg.run.num_workers = args.num_workers if args.num_workers is not None else default_num_workers(on_gpu)
        spec = RunnerSpec(str(args.artifact_root), tracker.uri, checkpoints)
        jobs = cell_jobs(configs, seeds, methods)
        parallel = args.parallel or default_parallel(on_gpu, capacity, args.quick)
        if on_gpu:
            requested_gpus = True
            request_gpu_nodes(min(parallel, len(jobs)))  # the autoscaler starts them now, not job by job
        print(f"{gpu_line}; {configs[0].run.num_workers or 'no'} Ray Train worker(s) per training", flush=True)
        print(f"{len(jobs)} cells ({len(methods)} methods x {len(configs)} dataset/ratio x {len(seeds)} seeds), "
              f"{parallel} at a time; artifacts in {args.artifact_root}", flush=True)
        progress = Progress(len(jobs), methods=[method for _, method in jobs], parallel=parallel)
        results = in_job_order(run_cells(spec, jobs, parallel, progress.cell_done), jobs)
        table = Table1(methods, protocol=configs[0].injection.protocol,  # --protocol / --baselines, or a --set
                       baselines=configs[0].baselines.protocol, quick=args.quick)
        for r in results:
            table.add(r.dataset, r.ratio, r.method, r.metrics, r.seed)
        built = Counter((stage, how) for r in results for stage, how in r.stages.items() if stage != "cell")
        if on_synthetic:
            add_precision_row(table, spec.runner(), [with_seed(cfg, seed) for cfg in configs for seed in seeds],
                              progress, built)
    except DiffInjectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        from diffinject.sweeps.ablations import end_stopped_runs

        end_stopped_runs(Tracker(), experiment, started_ms)  # cells in Ray tasks may not have ended theirs
        print(f"\ninterrupted: finished stages are kept under {args.artifact_root}; the same command continues "
              f"from there", file=sys.stderr)
        return 130
    finally:
        if progress:
            progress.close()
        if requested_gpus:  # withdrawn, so that idle GPU nodes go after the cluster's idle timeout
            request_gpu_nodes(0)
    paths = write_outputs(table, results, Path(args.out), experiment, len(seeds), tracker,
                          configs[0].run.use_gpu)
    summary = ", ".join(f"{s} x{n}" for (s, h), n in sorted(built.items()) if h == "built" and n) or "nothing"
    print(f"\nthis run built: {summary}; {sum(r.cached for r in results)} of {len(results)} cells came from the cache")
    print(f"table: {paths['md']} (+ {paths['csv'].name}, {paths['png'].name})   MLflow: {tracker.uri} "
          f"(experiment {experiment!r}, run {paths['run_id']}; `{tracker.ui_command()}`; in the UI's runs list, filter `tags.diffinject.role = 'cell'` and group by `method`)   "
          f"total {progress.elapsed():.0f}s")
    return 0


def add_precision_row(table: Table1, runner, stage1_cfgs: list, progress: Progress, built: Counter) -> None:
    """precision@K of the stage-1 top-K sets (the methods on synthetic data built them); one
    their cells did not leave in the cache is built here, and counted in the progress lines."""
    missing = [cfg for cfg in stage1_cfgs
               if runner.cache.lookup("stage1", artifact_key("stage1", runner.stage1_material(cfg))) is None]
    progress.total += len(missing)
    for cfg in stage1_cfgs:
        stage1 = runner.stage1(cfg)
        precision = stage1.meta["metrics"]["precision_at_k"]
        if not stage1.reused:
            built[("stage1", "built")] += 1
            progress.step_done(f"{cfg.data.dataset} {cfg.data.ratio}% seed {cfg.run.seed} stage 1 (for precision@K): "
                               f"{precision:.2f}")
        table.add_precision(cfg.data.dataset, cfg.data.ratio, precision)


def write_outputs(table: Table1, results: list[CellResult], out: Path, experiment: str, seeds: int,
                  tracker: Tracker, use_gpu: str) -> dict:
    """Print the table; write Markdown, CSV and the bar chart; log them to an MLflow `table` run."""
    from diffinject.core.atomic import atomic_file
    from diffinject.reporting.table1 import table_note

    text = (f"{table.markdown()}\n\n{table.notes(seeds)}\n\n"
            f"As the references report (best test accuracy during training):\n\n{table.markdown('best_test')}\n\n"
            f"{table.references_notes()}\n\nEach selection, from the same runs:\n\n{table.selection_markdown()}")
    print("\n" + text)
    out.mkdir(parents=True, exist_ok=True)
    md, csv_path, png = out / f"{experiment}.md", out / f"{experiment}.csv", out / f"{experiment}.png"
    with atomic_file(md) as handle:
        handle.write(f"# Table 1 ({experiment})\n\n{text}\n\n## Detail\n\n{table.detail_markdown()}\n")
    table.write_csv(csv_path)
    table.bar_chart(png, f"{experiment}: unbiased test accuracy (%), mean ± std over {seeds} seed(s)")
    runs = out / f"{experiment}-runs.json"
    with atomic_file(runs) as handle:
        json.dump([{"dataset": r.dataset, "ratio": r.ratio, "method": r.method, "seed": r.seed, "run_id": r.run_id,
                    "reported_acc": r.metrics["reported_acc"],
                    "reported_acc_best_test": r.metrics["reported_acc_best_test"]} for r in results], handle, indent=1)
    exp = tracker.experiment(experiment)
    run_id = tracker.start_run(exp, f"{experiment} table", {"diffinject.role": "table", "cells": len(results),
                                                            "protocol": table.protocol,
                                                            "baselines": table.baselines,
                                                            "run.use_gpu": use_gpu})
    tracker.log_metrics(run_id, table.metrics())
    tracker.describe(run_id, table_note(table, text, results, exp))
    for path in (md, csv_path, png, runs):
        tracker.log_artifact(run_id, path)
    tracker.finish(run_id)
    return {"md": md, "csv": csv_path, "png": png, "run_id": run_id}


if __name__ == "__main__":
    sys.exit(main())
