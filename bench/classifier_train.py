"""Classifier training throughput: the bare loop vs. the same job through Ray Train.

    python bench/classifier_train.py [--steps 400] [--workers 0 1 2]

Trains Vanilla on Colored Digits at 1% (MLP, batch 256, evaluation every 50 steps) in-process
with no Ray at all (the reference path, timed after a warm-up run), then with torch's per-parameter
Adam loop instead of the multi-tensor (foreach) update the methods use, then through `TorchTrainer`
with each worker count, and prints wall time, images/s, the ratio to the reference and whether the
accuracy is the reference's, all in one run.
"""
from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import torch

from diffinject.cluster.session import ensure_ray
from diffinject.cluster.train_jobs import TrainJob, load_train_data, run_train_job
from diffinject.config.builder import experiment_config
from diffinject.config.schema import to_dict
from diffinject.data.parquet import prepare_dataset
from diffinject.data.registry import get_dataset_spec
from diffinject.methods import Method
from diffinject.stages.stage4 import train_classifier
from diffinject.training.loop import TrainContext


@contextlib.contextmanager
def per_parameter_adam():
    """Methods build torch's default Adam (on CPU: one update per parameter tensor)."""
    foreach = Method.adam
    Method.adam = lambda self, module, lr=None: torch.optim.Adam(module.parameters(), lr=lr or self.cfg.lr,
                                                                 weight_decay=self.cfg.weight_decay)
    try:
        yield
    finally:
        Method.adam = foreach


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-clf-"))
    cfg = experiment_config("colored_digits", "1", quick=True)
    cfg.data.data_root, cfg.data.cache_root = str(work / "data"), str(work / "cache")
    cfg.run.storage_path = str(work / "ray_results")
    cfg.classifier.num_steps = args.steps
    parquet = prepare_dataset(work / "data", work / "cache", get_dataset_spec("colored_digits"), "1")
    images = args.steps * cfg.classifier.batch_size

    job = TrainJob(kind="classifier", method="vanilla", config=to_dict(cfg), parquet=str(parquet))
    data = load_train_data(job, cfg)
    train_classifier("vanilla", cfg, data, TrainContext())  # warm-up: allocator, kernels, imports
    start = time.perf_counter()
    accuracy = train_classifier("vanilla", cfg, data, TrainContext()).metrics["reported_acc"]
    reference = time.perf_counter() - start
    rows = [("bare loop, no Ray (reference)", reference, accuracy)]
    with per_parameter_adam():
        start = time.perf_counter()
        accuracy = train_classifier("vanilla", cfg, data, TrainContext()).metrics["reported_acc"]
        rows.append(("bare loop, per-parameter Adam", time.perf_counter() - start, accuracy))

    ensure_ray()
    for workers in args.workers:
        cfg.run.num_workers = workers
        start = time.perf_counter()
        out = run_train_job(TrainJob(kind="classifier", method="vanilla", config=to_dict(cfg), parquet=str(parquet)))
        label = "TorchTrainer, in-process (num_workers=0)" if workers == 0 else f"TorchTrainer, {workers} DDP worker(s)"
        rows.append((label, time.perf_counter() - start, out.metrics["reported_acc"]))

    print(f"\n{args.steps} steps x batch {cfg.classifier.batch_size} = {images} images, eval every "
          f"{cfg.classifier.eval_every} steps")
    print(f"{'path':<42} {'wall s':>8} {'images/s':>10} {'x reference':>12} {'accuracy':>9}")
    for label, seconds, acc in rows:
        same = "same" if acc == rows[0][2] else f"{acc:.4f}"
        print(f"{label:<42} {seconds:8.1f} {images / seconds:10.0f} {seconds / reference:12.2f} {same:>9}")


if __name__ == "__main__":
    main()
