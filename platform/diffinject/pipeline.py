"""Driver-side orchestration of stage 1, 2 and 4 runs, with MLflow bookkeeping.

MLflow layout: one experiment per study; a `stage1` run per (dataset, ratio, seed) with
the bias classifier's curves, precision@K, the top-K set and its image grid; a `stage2`
run per diffusion model with its loss curve, sample grids and EMA checkpoint; a `cell`
parent run per (dataset, ratio, method, seed) holding the final metrics and tags, with
a nested `stage4` run that holds the training curves and the model checkpoint.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from .config import ExperimentConfig, flatten, to_dict, validate
from .data.parquet import conversion_counts, load_labels, prepare_dataset
from .data.registry import get_dataset_spec
from .diffusion.models import get_preset
from .errors import ConfigError
from .methods import get_method
from .plots import image_grid
from .plots import curve_plot
from .ray_train import DIFFUSION_FILE, TrainJob, load_topk, run_train_job
from .stage1 import precision_at_k
from .tracking import Tracker

FINAL_KEYS = ("test_acc", "test_aligned_acc", "test_conflicting_acc", "test_cell_mean_acc",
              "valid_acc", "step")


def ensure_ray(num_cpus: int | None = None) -> None:
    """Join RAY_ADDRESS's cluster, or start a local one without the dashboard."""
    import ray

    # Ray Train V2 answers each ray.train.report only at its controller's poll interval
    # (2 s by default): far too slow for the frequent evaluations of small runs.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"])
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)


@dataclass
class StageOutcome:
    run_id: str
    metrics: dict
    checkpoint_dir: Path


def _tags(cfg: ExperimentConfig, method: str, role: str) -> dict:
    return {"dataset": cfg.data.dataset, "ratio": cfg.data.ratio, "method": method,
            "seed": cfg.run.seed, "diffinject.role": role}


def _prepare(cfg: ExperimentConfig) -> Path:
    validate(cfg)
    spec = get_dataset_spec(cfg.data.dataset)
    return prepare_dataset(Path(cfg.data.data_root), Path(cfg.data.cache_root), spec, cfg.data.ratio)


def run_stage1(cfg: ExperimentConfig, tracker: Tracker | None = None) -> StageOutcome:
    """Train the GCE bias classifier, extract the top-K set, log precision@K and the grid."""
    tracker = tracker or Tracker()
    parquet = _prepare(cfg)
    num_train = conversion_counts(parquet)["train"]
    if cfg.bias.k > num_train:
        raise ConfigError(f"bias.k = {cfg.bias.k} is larger than the training set of "
                          f"{cfg.data.dataset} at {cfg.data.ratio}% ({num_train} samples)")
    exp = tracker.experiment(cfg.run.experiment)
    run_id = tracker.start_run(exp, f"stage1-{cfg.data.dataset}-{cfg.data.ratio}-s{cfg.run.seed}",
                               _tags(cfg, "gce", "stage1"), flatten(cfg))
    ok = False
    try:
        job = TrainJob(kind="bias", method="gce", config=to_dict(cfg), parquet=str(parquet),
                       tracking_uri=tracker.uri, mlflow_run_id=run_id)
        out = run_train_job(job)
        topk = load_topk(out.checkpoint_dir)
        labels, biases = load_labels(parquet, "train")
        aligned = labels == biases  # bias labels score stage 1; they never train anything
        precision = precision_at_k(topk["indices"], aligned)
        metrics = {f"final_{k}": out.metrics[k] for k in FINAL_KEYS if k in out.metrics}
        metrics[f"precision_at_{cfg.bias.k}"] = precision
        metrics["precision_at_k"] = precision
        tracker.log_metrics(run_id, metrics)
        grid = image_grid(out.checkpoint_dir / "topk_grid.png", topk["images"],
                          [f"y={y} loss={l:.2f}{' *' if not a else ''}" for y, l, a in
                           zip(topk["labels"], topk["losses"], aligned[topk["indices"]])],
                          f"top-{cfg.bias.k} by GCE bias classifier (* = truly bias-conflicting); "
                          f"precision@{cfg.bias.k} = {precision:.2f}")
        for name in ("topk.json", "model.pt"):
            tracker.log_artifact(run_id, out.checkpoint_dir / name)
        tracker.log_artifact(run_id, grid)
        ok = True
        return StageOutcome(run_id=run_id, metrics=metrics, checkpoint_dir=out.checkpoint_dir)
    finally:
        tracker.finish(run_id, ok)


def diffusion_training_data(cfg: ExperimentConfig) -> tuple[str, str, Path]:
    """(dataset, ratio, Parquet folder) of the images stage 2 trains on (diffusion.train_data)."""
    from .data.registry import normalize_ratio

    if cfg.diffusion.train_data == "train":
        return cfg.data.dataset, cfg.data.ratio, _prepare(cfg)
    dataset, _, ratio = cfg.diffusion.train_data.partition("@")
    spec = get_dataset_spec(dataset)
    ratio = normalize_ratio(spec, ratio)
    return spec.name, ratio, prepare_dataset(Path(cfg.data.data_root), Path(cfg.data.cache_root), spec, ratio)


@contextlib.contextmanager
def progress_lines(tracker: Tracker, run_id: str, total_steps: int, label: str, every_s: float = 15.0):
    """Print "label: step N/total, loss L, R img/s" while a job runs, from what its rank 0 logs
    to MLflow (workers' own output is not forwarded to the driver)."""
    stop = threading.Event()

    def poll() -> None:
        shown = -1
        while not stop.wait(every_s):
            try:
                history = tracker.client.get_metric_history(run_id, "loss")
                speed = tracker.client.get_metric_history(run_id, "images_per_s")
            except Exception:  # a busy SQLite file: try again next time
                continue
            if history and history[-1].step != shown:
                shown = history[-1].step
                rate = f", {speed[-1].value:.0f} img/s" if speed else ""
                print(f"{label}: step {shown}/{total_steps}, loss {history[-1].value:.4f}{rate}", flush=True)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def run_stage2(cfg: ExperimentConfig, tracker: Tracker | None = None, fault=None) -> StageOutcome:
    """Train the P2-weighted diffusion model; its EMA checkpoint is `diffusion.pt` in the
    outcome's folder and an MLflow artifact, beside sample grids and the loss curve."""
    tracker = tracker or Tracker()
    validate(cfg)
    dataset, ratio, parquet = diffusion_training_data(cfg)
    exp = tracker.experiment(cfg.run.experiment)
    tags = {"dataset": dataset, "ratio": ratio, "seed": cfg.run.seed, "diffinject.role": "stage2",
            "preset": cfg.diffusion.preset}
    run_id = tracker.start_run(exp, f"stage2-{dataset}-{ratio}-{cfg.diffusion.preset}-s{cfg.run.seed}", tags,
                               flatten(cfg))
    ok = False
    try:
        job = TrainJob(kind="diffusion", method="", config=to_dict(cfg), parquet=str(parquet),
                       tracking_uri=tracker.uri, mlflow_run_id=run_id, fault=fault)
        with progress_lines(tracker, run_id, cfg.diffusion.num_steps, f"stage 2 ({cfg.diffusion.preset})"):
            out = run_train_job(job, name=f"diffusion-{dataset}-{ratio}-{cfg.diffusion.preset}-s{cfg.run.seed}-"
                                          f"{run_id[:8]}")
        metrics = {f"final_{k}": out.metrics[k] for k in ("loss", "step") if k in out.metrics}
        tracker.log_metrics(run_id, metrics)
        metrics["resumed_from"] = out.metrics["resumed_from"]
        history = tracker.client.get_metric_history(run_id, "loss")
        if history:
            curve = curve_plot(out.checkpoint_dir / "loss_curve.png",
                               {"loss": ([m.step for m in history], [m.value for m in history])},
                               f"{cfg.diffusion.preset} on {dataset} @ {ratio}% (gamma={cfg.diffusion.gamma})",
                               "step", "P2 loss + VB term" if get_preset(cfg.diffusion.preset).learned_sigma
                               else "P2 loss", log_y=True)
            tracker.log_artifact(run_id, curve)
        ok = True
        return StageOutcome(run_id=run_id, metrics=metrics, checkpoint_dir=out.checkpoint_dir)
    finally:
        tracker.finish(run_id, ok)


def diffusion_checkpoint(outcome: StageOutcome) -> Path:
    return outcome.checkpoint_dir / DIFFUSION_FILE


def run_cell(cfg: ExperimentConfig, method: str, tracker: Tracker | None = None,
             extra_train: list[Path] | None = None) -> StageOutcome:
    """Train and evaluate one registered method: a parent run with a nested stage4 run."""
    get_method(method)
    tracker = tracker or Tracker()
    parquet = _prepare(cfg)
    exp = tracker.experiment(cfg.run.experiment)
    name = f"{method}-{cfg.data.dataset}-{cfg.data.ratio}-s{cfg.run.seed}"
    parent = tracker.start_run(exp, name, _tags(cfg, method, "cell"), flatten(cfg))
    child = tracker.start_run(exp, f"stage4-{name}", _tags(cfg, method, "stage4"), parent=parent)
    ok = False
    try:
        job = TrainJob(kind="classifier", method=method, config=to_dict(cfg), parquet=str(parquet),
                       extra_train=[str(p) for p in extra_train or []], tracking_uri=tracker.uri,
                       mlflow_run_id=child)
        out = run_train_job(job)
        metrics = {k: out.metrics[k] for k in FINAL_KEYS if k in out.metrics}
        tracker.log_metrics(parent, metrics)
        tracker.log_metrics(child, {f"final_{k}": v for k, v in metrics.items()})
        tracker.log_artifact(child, out.checkpoint_dir / "model.pt")
        ok = True
        return StageOutcome(run_id=parent, metrics=metrics, checkpoint_dir=out.checkpoint_dir)
    finally:
        tracker.finish(child, ok)
        tracker.finish(parent, ok)


def with_seed(cfg: ExperimentConfig, seed: int) -> ExperimentConfig:
    out = copy.deepcopy(cfg)
    out.run.seed = seed
    return out
