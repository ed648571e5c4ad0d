"""What every stage run shares: its outcome, its MLflow tags and name, the selected weights'
metrics, the prepared dataset it reads, the checks made before a long run reaches a stage, and
progress lines while a Ray job runs."""
from __future__ import annotations

import contextlib
import copy
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffinject.config.schema import ExperimentConfig, flatten
from diffinject.config.validation import validate
from diffinject.core.errors import ConfigError
from diffinject.data.parquet import conversion_counts, load_labels, prepare_dataset
from diffinject.data.registry import get_dataset_spec
from diffinject.methods import get_method
from diffinject.tracking.client import Tracker
from diffinject.tracking.descriptions import HEADLINE


# how a training job went, not what it made: left out of an artifact's metrics, which a resumed job
# must leave as an uninterrupted one does
RESUME_KEYS = ("resumed_from", "steps_run")
# the selected weights' metrics a stage logs as `selected_*`
SELECTED_KEYS = ("test_acc", "test_aligned_acc", "test_conflicting_acc", "test_cell_mean_acc", "valid_acc")


@dataclass
class StageOutcome:
    run_id: str
    metrics: dict
    checkpoint_dir: Path
    stage_run_id: str = ""  # a cell's nested stage-4 run


def run_tags(cfg: ExperimentConfig, role: str) -> dict:
    return {"dataset": cfg.data.dataset, "ratio": cfg.data.ratio, "seed": cfg.run.seed, "diffinject.role": role}


def stage_tags(cfg: ExperimentConfig, role: str, algorithm: str, tags: dict | None) -> dict:
    return {**run_tags(cfg, role), "stage.algorithm": algorithm, **(tags or {})}


def run_label(cfg: ExperimentConfig) -> str:
    """How run names end: ratio and seed first, so a cut-off name still tells runs apart."""
    return f"{cfg.data.ratio}% s{cfg.run.seed} {cfg.data.dataset}"


def cell_name(cfg: ExperimentConfig, method: str) -> str:
    return f"{method} {run_label(cfg)}"


def method_protocol(cfg: ExperimentConfig, method: str) -> dict:
    """{"protocol": ...} for a method trained on synthetic data (DiffInject's protocol), else {}."""
    return {"protocol": cfg.injection.protocol} if get_method(method).needs_synthetic else {}


def cell_tags(cfg: ExperimentConfig, method: str) -> dict:
    """Tags of a cell run; `baselines` is how its classifier trained (baselines.protocol)."""
    return {**run_tags(cfg, "cell"), "method": method, "baselines": cfg.baselines.protocol, **method_protocol(cfg, method)}


def cell_params(cfg: ExperimentConfig, method: str) -> dict:
    """The flattened config plus what tells cells apart, as params: MLflow's Compare view and its
    plots split runs by params and metrics only."""
    return {"method": method, "dataset": cfg.data.dataset, "ratio": cfg.data.ratio, "seed": cfg.run.seed,
            **method_protocol(cfg, method), **flatten(cfg)}


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


def diffusion_data(cfg: ExperimentConfig) -> tuple[str, str]:
    """(dataset, ratio) of the images stage 2 trains on (diffusion.train_data), without preparing them."""
    from diffinject.data.registry import normalize_ratio

    if cfg.diffusion.train_data == "train":
        return cfg.data.dataset, cfg.data.ratio
    dataset, _, ratio = cfg.diffusion.train_data.partition("@")
    spec = get_dataset_spec(dataset)
    return spec.name, normalize_ratio(spec, ratio)


def diffusion_training_data(cfg: ExperimentConfig) -> tuple[str, str, Path]:
    """(dataset, ratio, Parquet folder) of the images stage 2 trains on, converted on first use."""
    if cfg.diffusion.train_data == "train":
        return cfg.data.dataset, cfg.data.ratio, dataset_folder(cfg)
    dataset, ratio = diffusion_data(cfg)
    return dataset, ratio, prepare_dataset(Path(cfg.data.data_root), Path(cfg.data.cache_root),
                                           get_dataset_spec(dataset), ratio)


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


def with_seed(cfg: ExperimentConfig, seed: int) -> ExperimentConfig:
    out = copy.deepcopy(cfg)
    out.run.seed = seed
    return out
