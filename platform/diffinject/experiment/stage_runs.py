"""Driver-side orchestration of stage 1, 2 and 4 runs, with MLflow bookkeeping.

MLflow layout: one experiment per study; a `stage1` run per (dataset, ratio, seed) with
the bias classifier's curves, precision@K, the top-K set and its image grid; a `stage2`
run per diffusion model with its loss curve, sample grids and EMA checkpoint; a `cell`
parent run per (dataset, ratio, method, seed) holding the final metrics, tags and params
`method`, `dataset`, `ratio`, `seed`, with a nested `stage4` run that holds the training
curves and the model checkpoint. Every stage run is tagged `stage.algorithm` (what it
trains: gce, p2_diffusion, h_space_injection, the method) and, when a cell builds it, with
the cell's `method` (the caller's `tags`).
"""
from __future__ import annotations

import contextlib
import copy
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffinject.config.schema import ExperimentConfig, flatten, to_dict
from diffinject.config.validation import validate
from diffinject.data.parquet import conversion_counts, load_labels, prepare_dataset
from diffinject.data.registry import get_dataset_spec
from diffinject.nets.diffusion.models import get_preset
from diffinject.core.errors import CheckpointError, ConfigError
from diffinject.methods import get_method
from diffinject.tracking.descriptions import HEADLINE, cell_note
from diffinject.core.plots import curve_plot, image_grid
from diffinject.cluster.train_jobs import DIFFUSION_FILE, TrainJob, load_topk, run_train_job
from diffinject.stages.stage1 import precision_at_k
from diffinject.core.vocabulary import SELECTIONS
from diffinject.tracking.client import Tracker

FINAL_KEYS = ("test_acc", "test_aligned_acc", "test_conflicting_acc", "test_cell_mean_acc",
              "valid_acc", "step")
# a cell's reported test accuracy under each model selection (train.SELECTIONS), from the same run
SELECTION_KEYS = (*SELECTIONS.values(), "best_test_step", "valid_conflict_share")
# how a training job went, not what it made: left out of an artifact's metrics, which a resumed job
# must leave as an uninterrupted one does
RESUME_KEYS = ("resumed_from", "steps_run")
SELECTED_KEYS = ("test_acc", "test_aligned_acc", "test_conflicting_acc", "test_cell_mean_acc", "valid_acc")


@dataclass
class StageOutcome:
    run_id: str
    metrics: dict
    checkpoint_dir: Path
    stage_run_id: str = ""  # a cell's nested stage-4 run


def _run_tags(cfg: ExperimentConfig, role: str) -> dict:
    return {"dataset": cfg.data.dataset, "ratio": cfg.data.ratio, "seed": cfg.run.seed, "diffinject.role": role}


def _tags(cfg: ExperimentConfig, role: str, algorithm: str, tags: dict | None) -> dict:
    return {**_run_tags(cfg, role), "stage.algorithm": algorithm, **(tags or {})}


def _label(cfg: ExperimentConfig) -> str:
    """How run names end: ratio and seed first, so a cut-off name still tells runs apart."""
    return f"{cfg.data.ratio}% s{cfg.run.seed} {cfg.data.dataset}"


def cell_name(cfg: ExperimentConfig, method: str) -> str:
    return f"{method} {_label(cfg)}"


def _protocol(cfg: ExperimentConfig, method: str) -> dict:
    """{"protocol": ...} for a method trained on synthetic data (DiffInject's protocol), else {}."""
    return {"protocol": cfg.injection.protocol} if get_method(method).needs_synthetic else {}


def cell_tags(cfg: ExperimentConfig, method: str) -> dict:
    """Tags of a cell run; `baselines` is how its classifier trained (baselines.protocol)."""
    return {**_run_tags(cfg, "cell"), "method": method, "baselines": cfg.baselines.protocol, **_protocol(cfg, method)}


def cell_params(cfg: ExperimentConfig, method: str) -> dict:
    """The flattened config plus what tells cells apart, as params: MLflow's Compare view and its
    plots split runs by params and metrics only."""
    return {"method": method, "dataset": cfg.data.dataset, "ratio": cfg.data.ratio, "seed": cfg.run.seed,
            **_protocol(cfg, method), **flatten(cfg)}


def selected_metrics(metrics: dict, headline: bool = False) -> dict:
    """The selected weights' metrics as `selected_*` (and `selected_step`, when known), plus the
    headline `unbiased_acc_pct` with `headline`."""
    out = {f"selected_{k}": metrics[k] for k in SELECTED_KEYS if k in metrics}
    if "selected_step" in metrics:
        out["selected_step"] = metrics["selected_step"]
    if headline and "reported_acc" in metrics:
        out[HEADLINE] = round(100.0 * metrics["reported_acc"], 2)
    return out


def dataset_folder(cfg: ExperimentConfig) -> Path:
    """The finished Parquet conversion of cfg's dataset and ratio (converted on first use)."""
    validate(cfg)
    spec = get_dataset_spec(cfg.data.dataset)
    return prepare_dataset(Path(cfg.data.data_root), Path(cfg.data.cache_root), spec, cfg.data.ratio)


def check_topk_size(cfg: ExperimentConfig, parquet: Path, field: str = "bias.k") -> None:
    """bias.k (named `field` in the error) fits the training set (bias.scope=per_class: its smallest class)."""
    if cfg.bias.scope == "per_class":
        counts = np.bincount(load_labels(parquet, "train")[0])
        size, what = int(counts[counts > 0].min()), "per class is larger than the smallest class of"
    else:
        size, what = conversion_counts(parquet)["train"], "is larger than"
    if cfg.bias.k > size:
        raise ConfigError(f"{field} = {cfg.bias.k} {what} the training set of {cfg.data.dataset} at {cfg.data.ratio}% "
                          f"({size} samples)")


def check_against_data(cfg: ExperimentConfig, methods: tuple[str, ...] = ()) -> None:
    """What stages 1 and 3 need of the training data, checked before a long run reaches them:
    the top-K set fits it (AmpliBias's own too, when among `methods`), and
    injection.conflict_ratio gives at least one synthetic sample."""
    from diffinject.methods import stage1_config
    from diffinject.stages.inject.manifest import synthetic_count

    parquet = dataset_folder(cfg)
    check_topk_size(cfg, parquet)
    if "amplibias" in methods:
        check_topk_size(stage1_config(cfg, "amplibias"), parquet, "fastgan.k_per_class")
    check_lpips_weights(cfg, methods)
    num_train = conversion_counts(parquet)["train"]
    if synthetic_count(num_train, cfg.injection.conflict_ratio) == 0:
        raise ConfigError(f"injection.conflict_ratio = {cfg.injection.conflict_ratio} of the {num_train} training "
                          f"samples of {cfg.data.dataset} at {cfg.data.ratio}% rounds to 0 synthetic samples")


def check_lpips_weights(cfg: ExperimentConfig, methods) -> None:
    """A² and AmpliBias measuring with LPIPS-VGG find its VGG16 weights in the torch hub cache
    (checked before anything trains: the projection and the FastGANs come late in a cell)."""
    from diffinject.nets.perceptual import require_backbone

    users = [field for method, field in (("a2", "stylegan2.distance"), ("amplibias", "fastgan.distance"))
             if method in methods and getattr(cfg, field.split(".")[0]).distance == "lpips_vgg"]
    if users:
        require_backbone("vgg", f"{' and '.join(users)}=lpips_vgg", f"measure with --set {users[0]}=mse")


def run_stage1(cfg: ExperimentConfig, tracker: Tracker | None = None, parent: str | None = None,
               output_dir: Path | None = None, tags: dict | None = None) -> StageOutcome:
    """Train the GCE bias classifier, extract the top-K set, log precision@K and the grid
    (a `stage1` run, nested under `parent` when given, with `tags` too; files in `output_dir`)."""
    tracker = tracker or Tracker()
    parquet = dataset_folder(cfg)
    check_topk_size(cfg, parquet)
    exp = tracker.experiment(cfg.run.experiment)
    run_id = tracker.start_run(exp, f"stage1 gce {_label(cfg)}", _tags(cfg, "stage1", "gce", tags), flatten(cfg),
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
        for name in ("topk.json", "model.pt"):
            tracker.log_artifact(run_id, out.checkpoint_dir / name)
        tracker.log_artifact(run_id, grid)
        return StageOutcome(run_id=run_id, metrics=metrics, checkpoint_dir=out.checkpoint_dir)


def diffusion_training_data(cfg: ExperimentConfig) -> tuple[str, str, Path]:
    """(dataset, ratio, Parquet folder) of the images stage 2 trains on (diffusion.train_data)."""
    from diffinject.data.registry import normalize_ratio

    if cfg.diffusion.train_data == "train":
        return cfg.data.dataset, cfg.data.ratio, dataset_folder(cfg)
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


def check_checkpoint_resolution(cfg: ExperimentConfig, checkpoint_preset: str, checkpoint: Path) -> None:
    """A diffusion checkpoint serves a dataset only at the resolution its diffusion preset says."""
    want, have = get_preset(cfg.diffusion.preset).image_size, get_preset(checkpoint_preset).image_size
    if want != have:
        raise CheckpointError(f"{checkpoint} is a {have}x{have} model ({checkpoint_preset}), but {cfg.data.dataset} "
                              f"uses {want}x{want} diffusion models (diffusion.preset={cfg.diffusion.preset})")


def resolve_t_edit(cfg: ExperimentConfig, checkpoint: Path, images, tracker: Tracker, run_id: str, folder: Path,
                   random_lpips_backbone: bool = False) -> int:
    """The fixed injection.t_edit, or the LPIPS calibration's choice (curve logged as a plot)."""
    if not cfg.injection.calibrate_t_edit:
        return cfg.injection.t_edit
    import torch

    from diffinject.nets.diffusion.checkpoint import load_unet_checkpoint
    from diffinject.stages.inject import InjectionEngine
    from diffinject.stages.inject.calibrate import calibrate_t_edit
    from diffinject.nets.perceptual import load_lpips

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    engine = InjectionEngine(load_unet_checkpoint(checkpoint)[0], cfg.injection, contents=None, device=device)
    lpips_model = load_lpips(random_backbone=random_lpips_backbone)
    t_edit, timesteps, curve = calibrate_t_edit(engine, images, cfg.injection, lpips_model,
                                                plot_path=folder / "t_edit_calibration.png")
    for t, value in zip(timesteps, curve):
        tracker.log_metrics(run_id, {"calibration_lpips": float(value)}, step=int(t))
    tracker.log_artifact(run_id, folder / "t_edit_calibration.png")
    return t_edit


def run_stage3(cfg: ExperimentConfig, topk_dir: Path, checkpoint: Path, tracker: Tracker | None = None,
               out_dir: Path | None = None, random_lpips_backbone: bool = False,
               parent: str | None = None, figures_dir: Path | None = None, tags: dict | None = None,
               oracles_dir: Path | None = None) -> StageOutcome:
    """Make the synthetic set: N_syn pairs (original, top-K content) injected with the diffusion
    checkpoint on Ray Data actors; a `stage3` MLflow run with t_edit, N_syn, speed, the
    paper's Fig. 2 triptych and the set's quality report (`quality.*` metrics, by the oracles
    in `oracles_dir`, trained here when None, and their grid). The outcome's folder is the
    synthetic set (Parquet, split train); the triptych, quality grid (and the t_edit curve) go
    to `figures_dir`, by default a folder beside it."""
    import time

    from diffinject.data.parquet import load_split
    from diffinject.nets.diffusion.checkpoint import checkpoint_meta
    from diffinject.stages.inject.manifest import build_manifest
    from diffinject.stages.inject.synthetic import check_output_folder
    from diffinject.core.plots import triptych
    from diffinject.cluster.inject_job import run_injection_job

    if out_dir is not None:
        check_output_folder(out_dir)
    tracker = tracker or Tracker()
    parquet = dataset_folder(cfg)
    check_checkpoint_resolution(cfg, checkpoint_meta(checkpoint)["preset"], checkpoint)
    train, topk = load_split(parquet, "train"), load_topk(topk_dir)
    manifest = build_manifest(len(train), topk["indices"], train.labels, train.biases, cfg.injection.conflict_ratio,
                              cfg.injection.originals, cfg.run.seed)
    exp = tracker.experiment(cfg.run.experiment)
    run_id = tracker.start_run(exp, f"stage3 {_label(cfg)}", _tags(cfg, "stage3", "h_space_injection", tags),
                               flatten(cfg), parent=parent)
    out_dir = Path(out_dir or Path(cfg.run.storage_path) / "synthetic" / f"{cfg.data.dataset}-{cfg.data.ratio}-"
                   f"s{cfg.run.seed}-{run_id[:8]}")
    with tracker.ending(run_id):
        folder = Path(figures_dir or out_dir.parent / f".{out_dir.name}-figures")  # beside: finalize replaces out_dir
        folder.mkdir(parents=True, exist_ok=True)
        t_edit = resolve_t_edit(cfg, checkpoint, train.images[:cfg.injection.calibration_images], tracker, run_id, folder,
                                random_lpips_backbone)
        started = time.perf_counter()
        run_injection_job(manifest, train.images, train.ids, train.labels, train.biases, topk["images"],
                          np.asarray(topk["ids"], dtype=object), np.asarray(topk["labels"]),
                          train.biases[topk["indices"]], checkpoint,
                          cfg.injection, out_dir, t_edit=t_edit,
                          use_gpu={"true": True, "false": False}.get(cfg.run.use_gpu, "auto"))
        seconds = time.perf_counter() - started
        synthetic = load_split(out_dir, "train")
        metrics = {"t_edit": t_edit, "n_syn": len(synthetic), "injection_seconds": seconds,
                   "samples_per_s": len(synthetic) / seconds}
        metrics.update(synthetic_quality(cfg, parquet, train, out_dir, oracles_dir, folder / "quality_grid.png"))
        tracker.log_metrics(run_id, metrics)
        tracker.log_artifact(run_id, folder / "quality_grid.png")
        shown = min(10, len(synthetic))
        rows = manifest.slice(0, shown).to_pydict()
        grid = triptych(folder / "triptych.png", train.images[rows["original_index"]],
                        topk["images"][rows["content_index"]], synthetic.images[:shown],
                        f"{cfg.data.dataset} @ {cfg.data.ratio}%: gamma {cfg.injection.gamma}, t_edit {t_edit}, "
                        f"{cfg.injection.mode}", [f"y={y}" for y in synthetic.labels[:shown]])
        tracker.log_artifact(run_id, grid)
        return StageOutcome(run_id=run_id, metrics=metrics, checkpoint_dir=out_dir)


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
                              _tags(cfg, "stage4", method, {"method": method, **(tags or {})}), parent=parent)
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


def with_seed(cfg: ExperimentConfig, seed: int) -> ExperimentConfig:
    out = copy.deepcopy(cfg)
    out.run.seed = seed
    return out
