"""Two table cells at once with one torch thread each, against one after another with every thread.

    python bench/cell_parallel.py [--dataset colored_mnist_5k] [--steps 2000] [--methods vanilla disent]

For each method, trains two seeds of it in-process on the quick preset's data, as the quick
table's cells train them: first one after the other with torch's default threads (the
reference path, `--parallel 1`), then both at once in two processes with one thread each
(`--parallel 2` on a 2-CPU machine), and prints the training time of each path (processes' start-up
left out: a table's cells run in Ray workers that are already up) and their ratio. The
small MLPs of the colour datasets keep two cores busier as two single-threaded jobs than as one
two-threaded job; the ratio says by how much on this machine.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

import torch

from diffinject.cluster.train_jobs import TrainJob, load_train_data
from diffinject.config.builder import experiment_config
from diffinject.config.schema import to_dict
from diffinject.data.parquet import prepare_dataset
from diffinject.data.registry import get_dataset_spec
from diffinject.experiment.run_context import with_seed
from diffinject.stages.stage4 import train_classifier
from diffinject.training.loop import TrainContext


def train(dataset: str, method: str, seed: int, steps: int, work: str, threads: int) -> float:
    """Seconds to train `method` for `steps` steps (seed `seed`) with `threads` torch threads."""
    torch.set_num_threads(threads)
    cfg = experiment_config(dataset, "1", quick=True)
    cfg.data.data_root, cfg.data.cache_root = str(Path(work) / "data"), str(Path(work) / "cache")
    cfg.classifier.num_steps = steps
    cfg.baselines.lff_num_steps = steps
    cfg = with_seed(cfg, seed)
    parquet = prepare_dataset(Path(cfg.data.data_root), Path(cfg.data.cache_root), get_dataset_spec(dataset), "1")
    data = load_train_data(TrainJob(kind="classifier", method=method, config=to_dict(cfg), parquet=str(parquet)), cfg)
    start = time.perf_counter()
    train_classifier(method, cfg, data, TrainContext())
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="colored_mnist_5k")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--methods", nargs="+", default=["vanilla", "disent"])
    args = p.parse_args()
    work = tempfile.mkdtemp(prefix="bench-cells-")
    cpus = os.cpu_count() or 1
    train(args.dataset, "vanilla", 0, 20, work, cpus)  # builds the data once; warms the imports
    print(f"{cpus} CPUs, torch {torch.__version__}; {args.dataset} at 1%, {args.steps} steps per cell, 2 cells")
    print(f"{'method':<10} {'one after another (s)':>22} {'two at once, 1 thread (s)':>26} {'ratio':>6}")
    context = multiprocessing.get_context("spawn")
    for method in args.methods:
        sequential = sum(train(args.dataset, method, seed, args.steps, work, cpus) for seed in (0, 1))
        with context.Pool(2) as pool:  # the two trainings run at once; their start-up is not timed
            parallel = max(pool.starmap(train, [(args.dataset, method, seed, args.steps, work, 1) for seed in (0, 1)]))
        print(f"{method:<10} {sequential:>22.1f} {parallel:>26.1f} {sequential / parallel:>5.2f}x")


if __name__ == "__main__":
    main()
