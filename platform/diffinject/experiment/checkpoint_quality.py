"""The quality of a method's synthetic set against its generator's training length.

For each checkpoint (e.g. the `checkpoints/step_NNNNNNN.pt` that `diffusion.keep_checkpoints`
logs) and seed, build the set as a table cell would (stages 1 to 3 through the artifact cache)
and read its quality report: label fidelity, conflict rate and useful share, and for DiffInject
the useful share of the same images under either labelling (injection.label_from: the
original's or the content's label). The checkpoint is DiffInject's stage 2, A²'s source
StyleGAN2 (stylegan2.source_checkpoint) or AmpliBias's FastGAN starting points
(fastgan.init_checkpoint). No classifier is trained on the sets, so a length (or an injection
setting) chosen from this curve is chosen before any stage-4 accuracy is seen. `stops_rising` is
the length criterion, fixed before the curve was measured.
"""
from __future__ import annotations

import csv
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from diffinject.config.schema import ExperimentConfig
from diffinject.experiment.cache import ArtifactCache
from diffinject.experiment.cells import CellRunner
from diffinject.experiment.learning_curves import flattening_step
from diffinject.experiment.run_context import dataset_folder, with_seed
from diffinject.nets.diffusion.checkpoint import load_unet_checkpoint
from diffinject.tracking.client import Tracker

SHARES = ("label_fidelity", "conflict_rate", "useful_rate", "useful_as_original", "useful_as_content")
# the config field a GAN method's checkpoint goes into, and the checkpoint's family
GAN_CHECKPOINT_FIELDS = {"a2": ("stylegan2", "source_checkpoint"), "amplibias": ("fastgan", "init_checkpoint")}
LABELLINGS = {"original": "useful_as_original", "content": "useful_as_content"}  # injection.label_from -> share
STOP_TOLERANCE = 0.02  # two points of useful share: about the standard error of one 350-image set


@dataclass(frozen=True)
class QualityPoint:
    checkpoint: str
    step: int
    seed: int
    shares: dict[str, float]  # SHARES


def checkpoint_step(path: Path, method: str = "diffinject") -> int:
    """The training step a project checkpoint records (strict load for a diffusion model: a
    damaged file is an error; a GAN file is checked to be of the method's family)."""
    if method in GAN_CHECKPOINT_FIELDS:
        from diffinject.nets.gan.checkpoint import read_gan_checkpoint

        return int(read_gan_checkpoint(path, GAN_CHECKPOINT_FIELDS[method][0])["step"])
    return int(load_unet_checkpoint(path)[1]["step"])


def with_checkpoint(cfg: ExperimentConfig, method: str, path: Path) -> ExperimentConfig:
    """cfg with a GAN method's starting generator set to `path`."""
    section, name = GAN_CHECKPOINT_FIELDS[method]
    return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **{name: str(path)})})


def measure(cfg: ExperimentConfig, checkpoints: list[Path], seeds: list[int], cache_root: Path,
            tracker: Tracker | None = None, done: Callable[[QualityPoint], None] = lambda point: None,
            method: str = "diffinject") -> list[QualityPoint]:
    """One QualityPoint per (checkpoint, seed), in that order; `done` sees each as it comes. A
    GAN method's set has one labelling (the original's, or its generator's class): its
    useful_as_* shares are NaN."""
    from diffinject.data.parquet import load_split
    from diffinject.stages.quality.oracles import ORACLE_FILE, load_oracles, score_folder

    tracker = tracker or Tracker()
    cache, points = ArtifactCache(cache_root), []
    steps = {path: checkpoint_step(path, method) for path in checkpoints}  # every file checked before any work
    train = load_split(dataset_folder(cfg), "train")
    # the dataset's scoring oracles (one pair for every checkpoint and seed), read once
    oracles = load_oracles(CellRunner(cache, tracker, {}).oracles(cfg).path / ORACLE_FILE)
    gan = method in GAN_CHECKPOINT_FIELDS
    shares = SHARES[:3] if gan else SHARES  # the labellings are DiffInject's choice
    for path in checkpoints:
        runner = CellRunner(cache, tracker, {} if gan else {cfg.data.dataset: str(path)})
        for seed in seeds:
            seeded = with_seed(with_checkpoint(cfg, method, path) if gan else cfg, seed)
            synthetic = runner.synthetic_stages(seeded, method, None)[-1]
            # scored again: a set built before a share existed has it too
            report = score_folder(oracles, train, synthetic.path / "synthetic")
            point = QualityPoint(str(path), steps[path], seed,
                                 {k: float(report[k]) if k in shares else np.nan for k in SHARES})
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


def curve_figure(rows: list[dict], path: Path, title: str, xlabel: str = "diffusion training step") -> Path:
    """The shares against the training step, mean ± std over seeds (the useful share under each
    labelling dashed)."""
    from diffinject.core.plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    steps = [r["step"] for r in rows]
    labels = ("label fidelity", "conflict rate", "useful share (as labelled)", "useful, labelled with the original's",
              "useful, labelled with the content's")
    for share, label in zip(SHARES, labels):
        mean, std = np.array([r[share] for r in rows]), np.array([r[f"{share}_std"] for r in rows])
        if np.isnan(mean).all():  # a share the method's sets do not have
            continue
        ax.errorbar(steps, mean, yerr=std, marker="o", capsize=3, label=label,
                    linestyle="--" if share in LABELLINGS.values() else "-")
    ax.set(xlabel=xlabel, ylabel="share of the synthetic set", ylim=(0, 1))
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
