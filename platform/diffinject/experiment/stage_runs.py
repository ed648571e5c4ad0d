"""Driver-side runs of the stages, each an MLflow run around its Ray job.

MLflow layout: one experiment per study; a `stage1` run per (dataset, ratio, seed) with
the bias classifier's curves, precision@K, the top-K set and its image grid; a `stage2`
run per diffusion model with its loss curve, sample grids and EMA checkpoint; a `stage3` run per
synthetic set (every stage-3 kind through one skeleton, run_synthetic_set) with N_syn, speed, its
grid and quality report; a `cell` parent run per (dataset, ratio, method, seed) holding the final
metrics, tags and params `method`, `dataset`, `ratio`, `seed`, with a nested `stage4` run that
holds the training curves and the model checkpoint. Every stage run is tagged `stage.algorithm`
(what it trains: gce, p2_diffusion, the stage-3 kind's algorithm, the method) and, when a cell
builds it, with the cell's `method` (the caller's `tags`).
"""
from __future__ import annotations

from pathlib import Path

from diffinject.cluster.train_jobs import TrainJob, run_train_job
from diffinject.config.schema import ExperimentConfig, flatten, to_dict
from diffinject.config.validation import validate
from diffinject.core.plots import curve_plot, image_grid
from diffinject.core.vocabulary import SELECTIONS
from diffinject.data.parquet import load_labels
from diffinject.experiment.run_context import (RESUME_KEYS, StageOutcome, cell_name, cell_params, cell_tags,
                                               dataset_folder, check_topk_size, diffusion_training_data, progress_lines,
                                               run_label, selected_metrics, stage_tags)
from diffinject.experiment.set_makers import GanSet, InjectionSet
from diffinject.methods import get_method
from diffinject.nets.diffusion.models import get_preset
from diffinject.stages.kinds import get_stage3_kind
from diffinject.stages.stage1 import TOPK_FILE, load_topk, precision_at_k
from diffinject.stages.stage2 import DIFFUSION_FILE
from diffinject.tracking.client import Tracker
from diffinject.tracking.descriptions import cell_note

FINAL_KEYS = ("test_acc", "test_aligned_acc", "test_conflicting_acc", "test_cell_mean_acc",
              "valid_acc", "step")
# a cell's reported test accuracy under each model selection (core.vocabulary.SELECTIONS), from the same run
SELECTION_KEYS = (*SELECTIONS.values(), "best_test_step", "valid_conflict_share")


def run_stage1(cfg: ExperimentConfig, tracker: Tracker | None = None, parent: str | None = None,
               output_dir: Path | None = None, tags: dict | None = None) -> StageOutcome:
    """Train the GCE bias classifier, extract the top-K set, log precision@K and the grid
    (a `stage1` run, nested under `parent` when given, with `tags` too; files in `output_dir`)."""
    tracker = tracker or Tracker()
    parquet = dataset_folder(cfg)
    check_topk_size(cfg, parquet)
    exp = tracker.experiment(cfg.run.experiment)
    run_id = tracker.start_run(exp, f"stage1 gce {run_label(cfg)}", stage_tags(cfg, "stage1", "gce", tags), flatten(cfg),
                               parent=parent)
    with tracker.ending(run_id):
        job = TrainJob(kind="bias", method="gce", config=to_dict(cfg), parquet=str(parquet),
                       tracking_uri=tracker.uri, mlflow_run_id=run_id)
        out = run_train_job(job, output_dir=output_dir)
        topk = load_topk(out.checkpoint_dir)
        labels, biases = load_labels(parquet, "train")
        aligned = labels == biases  # bias labels score stage 1; they never train anything
        precision = precision_at_k(topk["indices"], aligned)
        metrics = {f"final_{k}": out.metrics[k] for k in FINAL_KEYS if k in out.metrics}
        metrics[f"precision_at_{cfg.bias.k}"] = precision
        metrics["precision_at_k"] = precision
        tracker.log_metrics(run_id, {**metrics, **selected_metrics(out.metrics)})
        grid = image_grid(out.checkpoint_dir / "topk_grid.png", topk["images"],
                          [f"y={y} loss={l:.2f}{' *' if not a else ''}" for y, l, a in
                           zip(topk["labels"], topk["losses"], aligned[topk["indices"]])],
                          f"top-{cfg.bias.k} by GCE bias classifier (* = truly bias-conflicting); "
                          f"precision@{cfg.bias.k} = {precision:.2f}")
        for name in (TOPK_FILE, "model.pt"):
            tracker.log_artifact(run_id, out.checkpoint_dir / name)
        tracker.log_artifact(run_id, grid)
        return StageOutcome(run_id=run_id, metrics=metrics, checkpoint_dir=out.checkpoint_dir)


def run_stage2(cfg: ExperimentConfig, tracker: Tracker | None = None, fault=None, parent: str | None = None,
               output_dir: Path | None = None, name: str | None = None, tags: dict | None = None) -> StageOutcome:
    """Train the P2-weighted diffusion model; its EMA checkpoint is `diffusion.pt` in the
    outcome's folder and an MLflow artifact, beside sample grids and the loss curve."""
    tracker = tracker or Tracker()
    validate(cfg)
    dataset, ratio, parquet = diffusion_training_data(cfg)
    exp = tracker.experiment(cfg.run.experiment)
    tags = {"dataset": dataset, "ratio": ratio, "seed": cfg.diffusion.seed, "diffinject.role": "stage2",
            "stage.algorithm": "p2_diffusion", "preset": cfg.diffusion.preset, **(tags or {})}
    run_id = tracker.start_run(exp, f"stage2 {cfg.diffusion.preset} {ratio}% s{cfg.diffusion.seed} {dataset}", tags,
                               flatten(cfg), parent=parent)
    with tracker.ending(run_id):
        job = TrainJob(kind="diffusion", method="", config=to_dict(cfg), parquet=str(parquet),
                       tracking_uri=tracker.uri, mlflow_run_id=run_id, fault=fault)
        with progress_lines(tracker, run_id, cfg.diffusion.num_steps, f"stage 2 ({cfg.diffusion.preset})"):
            out = run_train_job(job, name=name or f"diffusion-{dataset}-{ratio}-{cfg.diffusion.preset}-"
                                                  f"s{cfg.diffusion.seed}-{run_id[:8]}", output_dir=output_dir)
        metrics = {f"final_{k}": out.metrics[k] for k in ("loss", "step") if k in out.metrics}
        tracker.log_metrics(run_id, metrics)
        metrics.update({k: out.metrics[k] for k in RESUME_KEYS})
        history = tracker.client.get_metric_history(run_id, "loss")
        if history:
            curve = curve_plot(out.checkpoint_dir / "loss_curve.png",
                               {"loss": ([m.step for m in history], [m.value for m in history])},
                               f"{cfg.diffusion.preset} on {dataset} @ {ratio}% (gamma={cfg.diffusion.gamma})",
                               "step", "P2 loss + VB term" if get_preset(cfg.diffusion.preset).learned_sigma
                               else "P2 loss", log_y=True)
            tracker.log_artifact(run_id, curve)
        return StageOutcome(run_id=run_id, metrics=metrics, checkpoint_dir=out.checkpoint_dir)


def diffusion_checkpoint(outcome: StageOutcome) -> Path:
    return outcome.checkpoint_dir / DIFFUSION_FILE


def run_synthetic_set(cfg: ExperimentConfig, maker: InjectionSet | GanSet, topk_dir: Path, tracker: Tracker | None = None,
                      out_dir: Path | None = None, parent: str | None = None, figures_dir: Path | None = None,
                      tags: dict | None = None, oracles_dir: Path | None = None) -> StageOutcome:
    """The one stage-3 run of every kind (set_makers: what a kind does differently): a `stage3`
    MLflow run with N_syn, speed, the kind's grid and the set's quality report (`quality.*` metrics,
    by the oracles in `oracles_dir`, trained here when None, and their grid). The outcome's folder is
    the synthetic set (Parquet, split train); its figures go to `figures_dir`, by default a folder
    beside it."""
    from diffinject.data.parquet import load_split
    from diffinject.stages.inject.synthetic import check_output_folder

    if out_dir is not None:
        check_output_folder(out_dir)
    tracker = tracker or Tracker()
    parquet = dataset_folder(cfg)
    maker.check(cfg)
    train, topk = load_split(parquet, "train"), load_topk(topk_dir)
    manifest = maker.manifest(cfg, train, topk)
    exp = tracker.experiment(cfg.run.experiment)
    run_id = tracker.start_run(exp, maker.run_name(run_label(cfg)),
                               stage_tags(cfg, "stage3", get_stage3_kind(maker.kind).algorithm, tags), flatten(cfg),
                               parent=parent)
    out_dir = Path(out_dir or Path(cfg.run.storage_path) / "synthetic" / maker.folder_name(cfg, run_id))
    with tracker.ending(run_id):
        folder = Path(figures_dir or out_dir.parent / f".{out_dir.name}-figures")  # beside: finalize replaces out_dir
        folder.mkdir(parents=True, exist_ok=True)
        own, seconds = maker.make(cfg, manifest, train, topk, out_dir, tracker, run_id, folder)
        synthetic = load_split(out_dir, "train")
        metrics = {**own, "n_syn": len(synthetic), maker.seconds_metric: seconds,
                   "samples_per_s": len(synthetic) / seconds}
        metrics.update(synthetic_quality(cfg, parquet, train, out_dir, oracles_dir, folder / "quality_grid.png"))
        tracker.log_metrics(run_id, metrics)
        tracker.log_artifact(run_id, folder / "quality_grid.png")
        tracker.log_artifact(run_id, maker.grid(folder / "triptych.png", cfg, manifest, train, topk, synthetic))
        return StageOutcome(run_id=run_id, metrics=metrics, checkpoint_dir=out_dir)


def run_stage3(cfg: ExperimentConfig, topk_dir: Path, checkpoint: Path, tracker: Tracker | None = None,
               out_dir: Path | None = None, random_lpips_backbone: bool = False,
               parent: str | None = None, figures_dir: Path | None = None, tags: dict | None = None,
               oracles_dir: Path | None = None) -> StageOutcome:
    """DiffInject's synthetic set: N_syn pairs (original, top-K content) injected with the diffusion
    checkpoint on Ray Data actors, with t_edit and the paper's Fig. 2 triptych (run_synthetic_set)."""
    return run_synthetic_set(cfg, InjectionSet(Path(checkpoint), random_lpips_backbone), topk_dir, tracker, out_dir,
                             parent, figures_dir, tags, oracles_dir)


def synthetic_quality(cfg: ExperimentConfig, parquet: Path, train, synthetic_dir: Path, oracles_dir: Path | None,
                      figure: Path) -> dict[str, float]:
    """The `quality.*` metrics of a synthetic set, by the dataset's oracles (read from
    `oracles_dir`, or trained on the training split when None), and its quality grid. Bias labels
    score the set here; they never train anything."""
    from diffinject.data.parquet import load_split
    from diffinject.stages.quality.oracles import ORACLE_FILE, dataset_oracles, load_oracles, score_folder
    from diffinject.stages.quality.metrics import prefixed

    oracles = (load_oracles(Path(oracles_dir) / ORACLE_FILE) if oracles_dir is not None
               else dataset_oracles(cfg.data.dataset, train, load_split(parquet, "valid")))
    report = score_folder(oracles, train, synthetic_dir, figure, f"{cfg.data.dataset} @ {cfg.data.ratio}%")
    return prefixed(report)


def run_cell(cfg: ExperimentConfig, method: str, tracker: Tracker | None = None,
             extra_train: list[Path] | None = None, parent: str | None = None,
             output_dir: Path | None = None, tags: dict | None = None) -> StageOutcome:
    """Train and evaluate one registered method: a parent run with a nested stage4 run
    (an existing `parent` is used, and left open for its owner to finish and describe; `tags`
    go on both runs)."""
    get_method(method)
    tracker = tracker or Tracker()
    parquet = dataset_folder(cfg)
    exp = tracker.experiment(cfg.run.experiment)
    owns_parent = parent is None
    if owns_parent:
        parent = tracker.start_run(exp, cell_name(cfg, method), {**cell_tags(cfg, method), **(tags or {})},
                                   cell_params(cfg, method))
    child = tracker.start_run(exp, f"stage4 {cell_name(cfg, method)}",
                              stage_tags(cfg, "stage4", method, {"method": method, **(tags or {})}), parent=parent)
    with tracker.ending(child, *([parent] if owns_parent else [])):
        job = TrainJob(kind="classifier", method=method, config=to_dict(cfg), parquet=str(parquet),
                       extra_train=[str(p) for p in extra_train or []], tracking_uri=tracker.uri,
                       mlflow_run_id=child)
        out = run_train_job(job, output_dir=output_dir)
        metrics = {k: out.metrics[k] for k in (*FINAL_KEYS, *SELECTION_KEYS, "selected_step") if k in out.metrics}
        tracker.log_metrics(parent, {**metrics, **selected_metrics(metrics, headline=True)})
        tracker.log_metrics(child, {**{f"final_{k}": v for k, v in metrics.items() if k in FINAL_KEYS},
                                    **selected_metrics(metrics)})
        tracker.log_artifact(child, out.checkpoint_dir / "model.pt")
        if owns_parent:
            stages = [("stage4", child, "built by this cell")]
            tracker.describe(parent, cell_note(tracker, cfg, method, metrics, stages))
        return StageOutcome(run_id=parent, metrics=metrics, checkpoint_dir=out.checkpoint_dir, stage_run_id=child)


