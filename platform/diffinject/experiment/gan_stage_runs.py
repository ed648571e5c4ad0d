"""Driver-side orchestration of the GAN stage-3 kinds, with MLflow bookkeeping (pipeline.py's
counterpart for A² and AmpliBias).

Runs: a `generator` run per generator training (A²'s source StyleGAN2 per dataset, its CDC
adaptation per (dataset, ratio, seed), AmpliBias's FastGANs per (dataset, ratio, seed)) with its
loss curve, sample grids and the generator file; a `stage3` run per synthetic set with N_syn,
speed, a triptych-style grid and the set's quality report, as for DiffInject.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from diffinject.config.schema import ExperimentConfig, flatten, to_dict
from diffinject.config.validation import validate
from diffinject.data.parquet import load_split
from diffinject.experiment.stage_runs import StageOutcome, _label, _tags, dataset_folder, progress_lines, synthetic_quality
from diffinject.core.plots import curve_plot, triptych
from diffinject.cluster.train_jobs import GENERATOR_FILE, TrainJob, load_topk, run_train_job
from diffinject.stages.kinds import GAN_KINDS, GENERATOR_JOBS, STAGE3_KINDS
from diffinject.tracking.client import Tracker

# what each generator job trains, for run names and the `stage.algorithm` tag
ALGORITHMS = {name: job.algorithm for name, job in GENERATOR_JOBS.items()}
# the stage-3 run's `stage.algorithm` for each kind
SYNTHESIS = {name: STAGE3_KINDS[name].algorithm for name in GAN_KINDS}


def generator_steps(cfg: ExperimentConfig, kind: str, classes: int = 1) -> int:
    return {"stylegan2_source": cfg.stylegan2.num_steps, "stylegan2_adapt": cfg.stylegan2.adapt_steps,
            "fastgan": cfg.fastgan.num_steps * classes, "fastgan_init": cfg.fastgan.num_steps * classes}[kind]


def run_generator_training(cfg: ExperimentConfig, kind: str, tracker: Tracker | None = None,
                           inputs: dict[str, str] | None = None, parent: str | None = None,
                           output_dir: Path | None = None, name: str | None = None, tags: dict | None = None,
                           random_lpips_backbone: bool = False) -> StageOutcome:
    """Train one GAN job (ray_train.GAN_JOBS); its generator file is `generator.pt` in the outcome's
    folder and an MLflow artifact, beside the loss curves."""
    tracker = tracker or Tracker()
    validate(cfg)
    parquet = dataset_folder(cfg)
    seed = cfg.stylegan2.seed if kind == "stylegan2_source" else cfg.run.seed
    label = f"{cfg.data.ratio}% s{seed} {cfg.data.dataset}"
    exp = tracker.experiment(cfg.run.experiment)
    run_tags = {**_tags(cfg, "generator", ALGORITHMS[kind], tags), "seed": seed}
    run_id = tracker.start_run(exp, f"generator {ALGORITHMS[kind]} {label}", run_tags, flatten(cfg), parent=parent)
    with tracker.ending(run_id):
        job = TrainJob(kind=kind, method="", config=to_dict(cfg), parquet=str(parquet), tracking_uri=tracker.uri,
                       mlflow_run_id=run_id, inputs=dict(inputs or {}), random_lpips_backbone=random_lpips_backbone)
        classes = (len(set(load_topk(Path(inputs["topk"]))["labels"])) if kind == "fastgan" else
                   len(set(load_split(parquet, "train").labels.tolist())) if kind == "fastgan_init" else 1)
        with progress_lines(tracker, run_id, generator_steps(cfg, kind, classes), f"generator ({ALGORITHMS[kind]})"):
            out = run_train_job(job, name=name, output_dir=output_dir)
        metrics = {f"final_{k}": v for k, v in out.metrics.items()
                   if k in ("d_loss", "g_loss", "loss", "step") and isinstance(v, (int, float))}
        tracker.log_metrics(run_id, metrics)
        curves = {key: ([m.step for m in history], [m.value for m in history])
                  for key in ("d_loss", "g_loss") if (history := tracker.client.get_metric_history(run_id, key))}
        if curves:
            tracker.log_artifact(run_id, curve_plot(out.checkpoint_dir / "loss_curve.png", curves,
                                                    f"{ALGORITHMS[kind]} on {cfg.data.dataset} @ {cfg.data.ratio}%",
                                                    "step", "loss"))
        tracker.log_artifact(run_id, out.checkpoint_dir / GENERATOR_FILE)
        return StageOutcome(run_id=run_id, metrics=metrics, checkpoint_dir=out.checkpoint_dir)


def gan_manifest(cfg: ExperimentConfig, kind: str, train, topk: dict):
    """The images stage 3 makes for `kind` (synthesis.sets)."""
    from diffinject.stages.synthesis.sets import class_manifest, projection_manifest

    if kind == "stylegan2_adapt":
        return projection_manifest(train.labels, topk["indices"], train.biases, cfg.injection.conflict_ratio,
                                   cfg.injection.originals, cfg.run.seed)
    return class_manifest(topk["labels"], len(train), cfg.injection.conflict_ratio, cfg.run.seed)


def run_gan_stage3(cfg: ExperimentConfig, kind: str, topk_dir: Path, checkpoints: dict[str, Path],
                   tracker: Tracker | None = None, out_dir: Path | None = None, parent: str | None = None,
                   figures_dir: Path | None = None, tags: dict | None = None, oracles_dir: Path | None = None,
                   random_lpips_backbone: bool = False) -> StageOutcome:
    """Make a GAN kind's synthetic set (N_syn images, Parquet split train) on Ray Data actors: a
    `stage3` run with N_syn, speed, the triptych-style grid and the quality report (`quality.*`)."""
    from diffinject.stages.inject.synthetic import check_output_folder
    from diffinject.cluster.synthesis_job import run_gan_synthesis_job

    if out_dir is not None:
        check_output_folder(out_dir)
    tracker = tracker or Tracker()
    parquet = dataset_folder(cfg)
    train, topk = load_split(parquet, "train"), load_topk(topk_dir)
    manifest = gan_manifest(cfg, kind, train, topk)
    exp = tracker.experiment(cfg.run.experiment)
    run_id = tracker.start_run(exp, f"stage3 {kind} {_label(cfg)}", _tags(cfg, "stage3", SYNTHESIS[kind], tags),
                               flatten(cfg), parent=parent)
    out_dir = Path(out_dir or Path(cfg.run.storage_path) / "synthetic" / f"{kind}-{cfg.data.dataset}-"
                   f"{cfg.data.ratio}-s{cfg.run.seed}-{run_id[:8]}")
    section = cfg.stylegan2 if kind == "stylegan2_adapt" else cfg.fastgan
    batch = cfg.stylegan2.project_batch_size if kind == "stylegan2_adapt" else 256
    with tracker.ending(run_id):
        folder = Path(figures_dir or out_dir.parent / f".{out_dir.name}-figures")  # beside: finalize replaces out_dir
        folder.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        run_gan_synthesis_job(kind, manifest, checkpoints, section, train.images, train.ids, out_dir, batch,
                              use_gpu={"true": True, "false": False}.get(cfg.run.use_gpu, "auto"),
                              random_lpips_backbone=random_lpips_backbone)
        seconds = time.perf_counter() - started
        synthetic = load_split(out_dir, "train")
        metrics = {"n_syn": len(synthetic), "synthesis_seconds": seconds, "samples_per_s": len(synthetic) / seconds}
        metrics.update(synthetic_quality(cfg, parquet, train, out_dir, oracles_dir, folder / "quality_grid.png"))
        tracker.log_metrics(run_id, metrics)
        tracker.log_artifact(run_id, folder / "quality_grid.png")
        tracker.log_artifact(run_id, synthesis_grid(folder / "triptych.png", kind, cfg, manifest, train, topk,
                                                    synthetic))
        return StageOutcome(run_id=run_id, metrics=metrics, checkpoint_dir=out_dir)


def synthesis_grid(path: Path, kind: str, cfg: ExperimentConfig, manifest, train, topk: dict, synthetic,
                   shown: int = 10) -> Path:
    """The triptych-style grid of a GAN set. A²: original | a top-K image of the original's class
    (the domain the generator was adapted to) | its A² image. AmpliBias, one column per class:
    two top-K images of the class (its FastGAN's training data) | a generated image."""
    labels = np.asarray(topk["labels"])
    where = f"{cfg.data.dataset} @ {cfg.data.ratio}%"
    if kind == "stylegan2_adapt":
        rows = manifest.slice(0, min(shown, manifest.num_rows)).to_pydict()
        same_class = [np.flatnonzero(labels == y) for y in rows["label"]]
        target = np.stack([topk["images"][idx[0] if len(idx) else 0] for idx in same_class])
        return triptych(path, train.images[rows["original_index"]], target, synthetic.images[:len(target)],
                        f"A² on {where}: projected into the source generator, decoded by the adapted one",
                        [f"y={y}" for y in rows["label"]], ("original", "top-K (same class)", "A²"))
    classes = [c for c in np.unique(labels) if (synthetic.labels == c).any()][:shown]
    first = [np.flatnonzero(labels == c) for c in classes]
    made = [int(np.flatnonzero(synthetic.labels == c)[0]) for c in classes]
    return triptych(path, topk["images"][[idx[0] for idx in first]], topk["images"][[idx[-1] for idx in first]],
                    synthetic.images[made], f"AmpliBias on {where}: one FastGAN per class on its top-K images",
                    [f"class {c}" for c in classes], ("top-K", "top-K", "FastGAN"))
