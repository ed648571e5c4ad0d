"""The quality of DiffInject's synthetic set against the diffusion model's training length.

For each checkpoint (e.g. the `checkpoints/step_NNNNNNN.pt` that `diffusion.keep_checkpoints`
logs) and seed, build the set as a table cell would (stages 1 and 3 through the artifact cache,
the checkpoint given as the dataset's stage 2) and read its quality report: label fidelity,
conflict rate and useful share, and the useful share of the same images under either labelling
(injection.label_from: the original's or the content's label). No classifier is trained on the
sets, so a length (or an injection setting) chosen from this curve is chosen before any stage-4
accuracy is seen. `stops_rising` is the length criterion, fixed before the curve was measured.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .artifacts import ArtifactCache
from .cells import CellRunner
from .config import ExperimentConfig, stage1_config
from .diffusion.checkpoint import load_unet_checkpoint
from .learning_curves import flattening_step
from .pipeline import dataset_folder, with_seed
from .tracking import Tracker

SHARES = ("label_fidelity", "conflict_rate", "useful_rate", "useful_as_original", "useful_as_content")
LABELLINGS = {"original": "useful_as_original", "content": "useful_as_content"}  # injection.label_from -> share
STOP_TOLERANCE = 0.02  # two points of useful share: about the standard error of one 350-image set


@dataclass(frozen=True)
class QualityPoint:
    checkpoint: str
    step: int
    seed: int
    shares: dict[str, float]  # SHARES


def checkpoint_step(path: Path) -> int:
    """The training step a project checkpoint records (strict load: a damaged file is an error)."""
    return int(load_unet_checkpoint(path)[1]["step"])


def measure(cfg: ExperimentConfig, checkpoints: list[Path], seeds: list[int], cache_root: Path,
            tracker: Tracker | None = None, done: Callable[[QualityPoint], None] = lambda point: None,
            ) -> list[QualityPoint]:
    """One QualityPoint per (checkpoint, seed), in that order; `done` sees each as it comes."""
    from .data.parquet import load_split
    from .quality.oracles import ORACLE_FILE, load_oracles, score_folder

    tracker = tracker or Tracker()
    cache, points = ArtifactCache(cache_root), []
    steps = {path: checkpoint_step(path) for path in checkpoints}  # every file checked before any work
    train = load_split(dataset_folder(cfg), "train")
    # the dataset's scoring oracles (one pair for every checkpoint and seed), read once
    oracles = load_oracles(CellRunner(cache, tracker, {}).oracles(cfg).path / ORACLE_FILE)
    for path in checkpoints:
        runner = CellRunner(cache, tracker, {cfg.data.dataset: str(path)})
        for seed in seeds:
            seeded = with_seed(cfg, seed)
            stage1 = runner.stage1(stage1_config(seeded, "diffinject"))
            synthetic = runner.stage3(seeded, stage1, runner.stage2(seeded))
            # scored again: a set built before a share existed has it too
            report = score_folder(oracles, train, synthetic.path / "synthetic")
            point = QualityPoint(str(path), steps[path], seed, {k: float(report[k]) for k in SHARES})
            points.append(point)
            done(point)
    return points


def summary(points: list[QualityPoint]) -> list[dict]:
    """Per checkpoint (ascending step): mean and std over seeds of each share."""
    rows = []
    for step in sorted({p.step for p in points}):
        at = [p for p in points if p.step == step]
        row = {"step": step, "seeds": len(at)}
        for share in SHARES:
            values = np.array([p.shares[share] for p in at])
            row[share], row[f"{share}_std"] = float(values.mean()), float(values.std(ddof=1)) if len(at) > 1 else 0.0
        rows.append(row)
    return rows


def stops_rising(rows: list[dict], share: str, tolerance: float = STOP_TOLERANCE) -> int:
    """The first length after which the mean `share` never rises more than `tolerance` above its
    value there (rows: `summary`'s)."""
    return flattening_step(np.array([r["step"] for r in rows]), np.array([r[share] for r in rows]), tolerance)


def write_csv(points: list[QualityPoint], path: Path) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "seed", *SHARES, "checkpoint"])
        for p in sorted(points, key=lambda p: (p.step, p.seed)):
            writer.writerow([p.step, p.seed, *(f"{p.shares[s]:.4f}" for s in SHARES), p.checkpoint])
    return path


def curve_figure(rows: list[dict], path: Path, title: str) -> Path:
    """The shares against the training step, mean ± std over seeds (the useful share under each
    labelling dashed)."""
    from .plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    steps = [r["step"] for r in rows]
    labels = ("label fidelity", "conflict rate", "useful share (as labelled)", "useful, labelled with the original's",
              "useful, labelled with the content's")
    for share, label in zip(SHARES, labels):
        mean, std = np.array([r[share] for r in rows]), np.array([r[f"{share}_std"] for r in rows])
        ax.errorbar(steps, mean, yerr=std, marker="o", capsize=3, label=label,
                    linestyle="--" if share in LABELLINGS.values() else "-")
    ax.set(title=title, xlabel="diffusion training step", ylabel="share of the synthetic set", ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
