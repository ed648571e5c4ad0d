"""Run table cells side by side on the Ray cluster.

Each cell is a Ray task that reserves nothing itself (num_cpus=0): the trainings and the
injection job it starts reserve the CPUs and GPUs they need, so cells share the cluster
through their jobs, and at most `parallel` cells are in flight. Cells run on the driver's node:
they read what the driver was given (the data root, checkpoint files, a local artifact root),
and their jobs' workers, on any node, get their inputs through cluster.shipping. Shared stages (a dataset's
diffusion model, a (dataset, ratio, seed)'s bias classifier) are built once: cells exclude
each other per artifact key with the cache's file locks, or, for a remote cache root that
several drivers may share, with the cluster's leased locks (cluster.locks).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

import ray

from diffinject.cluster.locks import cluster_lock
from diffinject.cluster.session import alive_nodes, node_cpus, node_id, on_node
from diffinject.config.schema import ExperimentConfig
from diffinject.core.errors import DiffInjectError
from diffinject.experiment.cache import ArtifactCache, is_remote
from diffinject.experiment.cells import CellResult, CellRunner
from diffinject.tracking.client import Tracker, run_source

@dataclass
class RunnerSpec:
    """What a cell task needs to build its own CellRunner (runners hold clients: not shipped)."""

    cache_root: str
    tracking_uri: str
    checkpoints: dict[str, str]
    random_lpips_backbone: bool = False
    source: str = field(default_factory=run_source)  # the driver's script, for the runs' Source column

    def tracker(self) -> Tracker:
        return Tracker(self.tracking_uri, self.source)

    def runner(self) -> CellRunner:
        lock = cluster_lock if is_remote(self.cache_root) else None
        return CellRunner(ArtifactCache(self.cache_root, lock=lock), self.tracker(), self.checkpoints,
                          self.random_lpips_backbone)


@ray.remote(num_cpus=0, max_retries=0)
def cell_task(spec: RunnerSpec, cfg: ExperimentConfig, method: str, torch_threads: int) -> CellResult:
    """One cell in a task of its own. Ray starts zero-CPU tasks with one torch thread; in-process
    trainings (run.num_workers=0) get `torch_threads`, their share of the node's CPUs."""
    import torch

    torch.set_num_threads(max(1, min(torch_threads, os.cpu_count() or 1)))
    return spec.runner().cell(cfg, method)


def threads_per_cell(parallel: int) -> int:
    """Torch threads for each of `parallel` cells sharing the CPUs of this (the driver's) node."""
    return max(1, node_cpus(node_id()) // max(1, parallel))


def default_parallel(on_gpu: bool, capacity: dict, quick: bool) -> int:
    """Cells in flight by default: one per GPU the cluster has or can add; on CPUs, for the quick
    preset's small models, one per CPU of the cluster with one torch thread each (faster than
    one cell on every thread: bench/cell_parallel.py), else one."""
    if on_gpu:
        return max(1, capacity["alive"] + capacity["scalable"])
    return max(1, int(ray.cluster_resources().get("CPU", 1))) if quick else 1


def default_num_workers(on_gpu: bool) -> int:
    """Ray Train workers per training by default: one (on a GPU, or on a node other than the
    driver's); 0 (the loop in the cell's own process) only on a single CPU node that offers CPUs."""
    return int(on_gpu or alive_nodes() > 1 or node_cpus(node_id()) == 0)


def in_job_order(results: list[CellResult], jobs: list[tuple[ExperimentConfig, str]]) -> list[CellResult]:
    """`results` (in the order cells finished) in the order of their `jobs`, so that what is
    computed from them does not depend on which cell finished first."""
    order = {(cfg.data.dataset, cfg.data.ratio, cfg.run.seed, method): i for i, (cfg, method) in enumerate(jobs)}
    return sorted(results, key=lambda r: order[(r.dataset, r.ratio, r.seed, r.method)])


def run_cells(spec: RunnerSpec, jobs: list[tuple[ExperimentConfig, str]], parallel: int,
              on_result: Callable[[CellResult], None]) -> list[CellResult]:
    """Run every (config, method) cell, `parallel` at a time (1: one after another in this
    process); `on_result` sees each result as it finishes. A DiffInjectError in a cell stops
    the run with that error once the cells in flight have finished."""
    results: list[CellResult] = []
    if parallel <= 1:
        runner = spec.runner()
        for cfg, method in jobs:
            results.append(runner.cell(cfg, method))
            on_result(results[-1])
        return results
    pending, in_flight, error = list(jobs), {}, None
    threads = threads_per_cell(parallel)
    here = on_node(node_id())
    while pending or in_flight:
        while pending and len(in_flight) < parallel and error is None:
            cfg, method = pending.pop(0)
            in_flight[cell_task.options(scheduling_strategy=here).remote(spec, cfg, method, threads)] = (cfg, method)
        if not in_flight:
            break
        done, _ = ray.wait(list(in_flight), num_returns=1)
        in_flight.pop(done[0])
        try:
            results.append(ray.get(done[0]))
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if isinstance(exc.cause, DiffInjectError) else exc
            error = error or cause
            continue
        on_result(results[-1])
    if error is not None:
        raise error
    return results
