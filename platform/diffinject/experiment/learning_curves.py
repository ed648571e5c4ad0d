"""Learning curves of the classifier methods: valid and test accuracy at every evaluation of one
training, per method and seed, for choosing training lengths from the curves (never from a
paired difference).

`flattening_step` is the criterion, fixed before any curve is looked at: the first evaluation
after which the mean (over seeds) valid accuracy never rises more than `tolerance` above its
value there.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffinject.cluster.train_jobs import TrainJob, load_train_data
from diffinject.config.schema import ExperimentConfig, to_dict
from diffinject.experiment.run_context import dataset_folder, with_seed
from diffinject.methods import method_classifier
from diffinject.reporting.table1 import DISPLAY
from diffinject.stages.stage4 import train_classifier
from diffinject.training.loop import TrainContext

CURVE_METRICS = ("valid_acc", "test_acc", "test_aligned_acc", "test_conflicting_acc")
# one figure per family: a method and its BiasEnsemble variant share their schedule
FAMILIES = {"vanilla": ("vanilla",), "lff": ("lff", "lff_be"), "disent": ("disent", "disent_be")}
FLATTENING_TOLERANCE = 0.01  # one point of accuracy


@dataclass(frozen=True)
class CurvePoint:
    method: str
    seed: int
    step: int
    metrics: dict[str, float]  # CURVE_METRICS


def learning_curve(cfg: ExperimentConfig, method: str, seed: int) -> list[CurvePoint]:
    """Train `method` in-process as a table cell trains it (cfg's regime and length) and keep every
    evaluation."""
    seeded = with_seed(cfg, seed)
    data = load_train_data(TrainJob(kind="classifier", method=method, config=to_dict(seeded),
                                    parquet=str(dataset_folder(seeded))), seeded)
    points: list[CurvePoint] = []

    def log(step: int, metrics: dict) -> None:
        if "valid_acc" in metrics:  # an evaluation (training logs carry train_* only)
            points.append(CurvePoint(method, seed, step, {k: float(metrics[k]) for k in CURVE_METRICS}))

    train_classifier(method, seeded, data, TrainContext(log=log))
    return points


def length_of(cfg: ExperimentConfig, method: str) -> int:
    return method_classifier(cfg, method).num_steps


def mean_curve(points: list[CurvePoint], method: str, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps, mean and std over seeds of `metric` for `method` (steps every seed reached)."""
    seeds = sorted({p.seed for p in points if p.method == method})
    by_step: dict[int, list[float]] = {}
    for p in points:
        if p.method == method:
            by_step.setdefault(p.step, []).append(p.metrics[metric])
    steps = np.array(sorted(s for s, v in by_step.items() if len(v) == len(seeds)))
    values = [np.array(by_step[s]) for s in steps]
    return steps, np.array([v.mean() for v in values]), np.array([v.std() for v in values])


def flattening_step(steps: np.ndarray, mean: np.ndarray, tolerance: float = FLATTENING_TOLERANCE) -> int:
    """The first step after which `mean` never rises more than `tolerance` above its value there."""
    for i, step in enumerate(steps):
        if mean[i:].max() - mean[i] <= tolerance:
            return int(step)
    return int(steps[-1])


def write_csv(points: list[CurvePoint], path: Path) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "seed", "step", *CURVE_METRICS])
        for p in sorted(points, key=lambda p: (p.method, p.seed, p.step)):
            writer.writerow([p.method, p.seed, p.step, *(f"{p.metrics[m]:.4f}" for m in CURVE_METRICS)])
    return path


def family_figure(points: list[CurvePoint], family: str, path: Path, title: str) -> Path:
    """Valid (solid) and test (dashed) accuracy against the step for each method of `family`,
    mean ± std over seeds, with each method's flattening step marked."""
    from diffinject.core.plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, method in enumerate(m for m in FAMILIES[family] if any(p.method == m for p in points)):
        colour = f"C{i}"
        for metric, style in (("valid_acc", "-"), ("test_acc", "--")):
            steps, mean, std = mean_curve(points, method, metric)
            ax.plot(steps, 100 * mean, style, color=colour,
                    label=f"{DISPLAY.get(method, method)} {metric.split('_')[0]}")
            ax.fill_between(steps, 100 * (mean - std), 100 * (mean + std), color=colour, alpha=0.12)
        steps, mean, _ = mean_curve(points, method, "valid_acc")
        ax.axvline(flattening_step(steps, mean), color=colour, linestyle=":", linewidth=1)
    ax.set(title=title, xlabel="training step", ylabel="unbiased accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
