"""The generator runs of the GAN stage-3 kinds: a `generator` MLflow run per generator training
(A²'s source StyleGAN2 per dataset, its CDC adaptation per (dataset, ratio, seed), AmpliBias's
FastGANs per (dataset, ratio, seed)) with its loss curve, sample grids and the generator file.
Their sets are made by stage_runs.run_synthetic_set, as DiffInject's."""
from __future__ import annotations

from pathlib import Path


from diffinject.cluster.train_jobs import TrainJob, run_train_job
from diffinject.config.schema import ExperimentConfig, flatten, to_dict
from diffinject.config.validation import validate
from diffinject.core.plots import curve_plot
from diffinject.data.parquet import load_split
from diffinject.experiment.run_context import StageOutcome, dataset_folder, progress_lines, stage_tags
from diffinject.stages.kinds import GENERATOR_FILE, GENERATOR_JOBS
from diffinject.stages.stage1 import load_topk
from diffinject.tracking.client import Tracker

# what each generator job trains, for run names and the `stage.algorithm` tag
ALGORITHMS = {name: job.algorithm for name, job in GENERATOR_JOBS.items()}


def generator_steps(cfg: ExperimentConfig, kind: str, classes: int = 1) -> int:
    return {"stylegan2_source": cfg.stylegan2.num_steps, "stylegan2_adapt": cfg.stylegan2.adapt_steps,
            "fastgan": cfg.fastgan.num_steps * classes, "fastgan_init": cfg.fastgan.num_steps * classes}[kind]


def run_generator_training(cfg: ExperimentConfig, kind: str, tracker: Tracker | None = None,
                           inputs: dict[str, str] | None = None, parent: str | None = None,
                           output_dir: Path | None = None, name: str | None = None, tags: dict | None = None,
                           random_lpips_backbone: bool = False) -> StageOutcome:
    """Train one GAN job (stages.kinds.GENERATOR_JOBS); its generator file is `generator.pt` in the outcome's
    folder and an MLflow artifact, beside the loss curves."""
    tracker = tracker or Tracker()
    validate(cfg)
    parquet = dataset_folder(cfg)
    seed = cfg.stylegan2.seed if kind == "stylegan2_source" else cfg.run.seed
    label = f"{cfg.data.ratio}% s{seed} {cfg.data.dataset}"
    exp = tracker.experiment(cfg.run.experiment)
    run_tags = {**stage_tags(cfg, "generator", ALGORITHMS[kind], tags), "seed": seed}
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


