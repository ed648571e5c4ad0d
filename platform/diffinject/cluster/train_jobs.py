"""The Ray Train layer: runs stage 1, 2 and 4 trainings, and the GAN stage-3 kinds' generator
trainings, in a TorchTrainer.

Each worker loads the Parquet shards itself, resumes from `ray.train.get_checkpoint()`
after a failure, logs to MLflow from rank 0, and reports checkpoints through
`ray.train.report`. The final report carries the selected weights (and for stage 1 the
top-K set; for stage 2 the EMA diffusion checkpoint), which is what `Result.checkpoint`
hands back to the driver.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import shutil
import signal
import socket
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from diffinject.cluster.session import fake_gpus, resolve_use_gpu
from diffinject.cluster.shipping import Shipment, receive, ship
from diffinject.config.schema import ExperimentConfig, from_dict
from diffinject.core import errors
from diffinject.core.atomic import process_alive, read_json, write_json
from diffinject.core.numerics import TRAINING_TF32
from diffinject.data.parquet import concat_splits, load_split
from diffinject.data.registry import get_dataset_spec
from diffinject.stages.kinds import GENERATOR_FILE, GENERATOR_JOBS
from diffinject.stages.stage1 import load_topk, topk_files, train_bias_classifier
from diffinject.stages.stage2 import DIFFUSION_FILE, train_diffusion
from diffinject.stages.stage4 import train_classifier
from diffinject.tracking.client import Tracker
from diffinject.training.loop import TrainContext, TrainData

STATE_FILE = "state.pt"
# the generator trainings of the GAN stage-3 kinds (synthesis/): A²'s source StyleGAN2 and its CDC
# adaptation to the top-K set, AmpliBias's FastGAN per class
GAN_JOBS = tuple(GENERATOR_JOBS)  # the GAN generators a job trains (stages.kinds)
KEEP_CHECKPOINTS = 2
LPIPS_TRUNK = "lpips_trunk"  # a job input: the VGG16 trunk's weights file (perceptual.backbone_checkpoint)
OWNER_FILE = "owner.json"  # in the run folder of a running anonymous job: the host and process running it


@dataclass
class FaultInjection:
    """Make rank 0 fail once when it logs `step` (a multiple of log_every), for tests and
    drills. `marker` is a file whose existence means the fault already happened."""

    step: int
    marker: str
    mode: str = "raise"  # raise | kill (SIGKILL of the worker process)


@dataclass
class TrainJob:
    kind: str                      # "bias" (stage 1) | "diffusion" (stage 2) | "classifier" (stage 4) | GAN_JOBS
    method: str                    # registered method for "classifier"
    config: dict                   # ExperimentConfig as a dict
    # paths on the driver's node; run_train_job ships them (cluster.shipping) and workers receive them
    parquet: str | Shipment        # finished Parquet conversion of the dataset/ratio (stage 2: its images)
    extra_train: list = field(default_factory=list)  # more Parquet folders added to train
    tracking_uri: str | None = None
    mlflow_run_id: str | None = None
    fault: FaultInjection | None = None
    inputs: dict = field(default_factory=dict)  # GAN jobs: "topk" (a stage-1 folder), "source", "init" (files)
    random_lpips_backbone: bool = False  # GAN jobs measuring with LPIPS: a random trunk (tests only)


@dataclass
class JobOutput:
    metrics: dict  # final metrics; "resumed_from" is the step of the checkpoint resumed from, or -1
    checkpoint_dir: Path  # local copy of the final checkpoint (model.pt, topk.json or diffusion.pt)


def load_train_data(job: TrainJob, cfg: ExperimentConfig) -> TrainData:
    spec = get_dataset_spec(cfg.data.dataset)
    train = load_split(job.parquet, "train")
    if job.extra_train:
        train = concat_splits(train, *(load_split(p, "train") for p in job.extra_train))
    return TrainData(train=train, valid=load_split(job.parquet, "valid"), test=load_split(job.parquet, "test"),
                     num_classes=spec.num_classes, num_biases=spec.num_biases, reported=spec.reported_test)


def read_resume_state(checkpoint) -> tuple[dict | None, int]:
    """The training state in `checkpoint` (a ray.train.Checkpoint, or None) and its step; (None, -1)
    when there is none.

    Every tensor of the state comes back on the CPU, whatever device the worker trains on: each
    consumer puts what it uses where it uses it. Networks' and torch optimisers' load_state_dict
    copy into their parameters' device; SampleLossEMA and BiasEnsemble's mask stay on the CPU,
    where they are indexed; model selection's best_nets go through the networks; stage 2 moves
    its EMA, StyleGAN2 its pl_mean, to the device. Loaded onto a GPU, LfF's and DisEnt's loss
    EMAs met their CPU updates on the first step after a worker restart."""
    if checkpoint is None:
        return None, -1
    with checkpoint.as_directory() as folder:
        path = Path(folder) / STATE_FILE
        if not path.exists():  # not when a rerun finds the error a job ended on
            return None, -1
        state = torch.load(path, map_location="cpu", weights_only=True)
    return state, int(state["step"])


def _worker_loop(loop_config: dict) -> None:
    import ray.train

    job: TrainJob = loop_config["job"]
    cfg = from_dict(job.config)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    use_cuda = loop_config["use_gpu"] and torch.cuda.is_available()
    device_error = None
    if loop_config["gpu_required"] and not torch.cuda.is_available():
        device_error = (f"a Ray Train worker on {socket.gethostname()} was given a GPU, but torch sees no CUDA device "
                        f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}, torch {torch.__version__}):"
                        f" the GPU nodes need a CUDA build of torch and the NVIDIA driver")
    if use_cuda:
        import ray.train.torch

        device = ray.train.torch.get_device()
        torch.backends.cuda.matmul.allow_tf32 = TRAINING_TF32
        torch.backends.cudnn.allow_tf32 = TRAINING_TF32
    else:
        device = torch.device("cpu")

    resume_state, resumed_from = read_resume_state(ray.train.get_checkpoint())
    tracker = Tracker(job.tracking_uri) if rank == 0 and job.mlflow_run_id else None
    staging = Path(loop_config["staging_dir"])
    staged: list[Path] = []

    def report(metrics: dict, state: dict | None, extra_files: dict[str, bytes] | None = None) -> None:
        metrics = {**metrics, "resumed_from": resumed_from}
        if rank == 0 and (state is not None or extra_files):
            # Staged outside any temporary directory: in local mode (num_workers=0) Ray keeps
            # referring to this folder instead of copying it to storage.
            folder = staging / ("final" if metrics.get("final") else f"step{int(metrics['step']):09d}")
            folder.mkdir(parents=True, exist_ok=True)
            if state is not None:
                torch.save(state, folder / STATE_FILE)
            for name, payload in (extra_files or {}).items():
                (folder / name).write_bytes(payload)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(folder)))
            staged.append(folder)
            for old in staged[:-KEEP_CHECKPOINTS]:
                shutil.rmtree(old, ignore_errors=True)
        else:
            ray.train.report(metrics)

    def log(step: int, metrics: dict) -> None:
        if tracker:
            tracker.log_metrics(job.mlflow_run_id, metrics, step)
        fault = job.fault
        if rank == 0 and fault and step == fault.step and not os.path.exists(fault.marker):
            Path(fault.marker).touch()
            if fault.mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"injected worker failure at step {fault.step}")

    def last_checkpoint() -> str | None:
        if staged:
            return str(staged[-1])
        return f"the step-{resumed_from} checkpoint this attempt resumed from" if resumed_from >= 0 else None

    def log_artifact(name: str, payload: bytes, folder: str) -> None:
        if tracker:
            path = staging / "artifacts" / folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(payload)
            tracker.log_artifact(job.mlflow_run_id, path, folder)

    ctx = TrainContext(rank=rank, world_size=world, device=device, resume_state=resume_state,
                       report=report, log=log, last_checkpoint=last_checkpoint, log_artifact=log_artifact)
    try:
        if device_error:
            raise errors.ConfigError(device_error)
        job = received(job)  # its files, where this worker can read them
        files: dict[str, bytes] = {}
        if job.kind == "diffusion":
            images = load_split(job.parquet, "train").images
            result = train_diffusion(cfg.diffusion, images, ctx, cfg.diffusion.seed)
            files[DIFFUSION_FILE] = result.checkpoint
        elif job.kind in GAN_JOBS:
            result = train_generator(job, cfg, ctx)
            files[GENERATOR_FILE] = result.checkpoint
        else:
            data = load_train_data(job, cfg)
            if job.kind == "bias":
                result, topk = train_bias_classifier(cfg, data, ctx)
                files.update(topk_files(topk))
            else:
                result = train_classifier(job.method, cfg, data, ctx)
            files["model.pt"] = _to_bytes(lambda buffer: torch.save({"nets": result.method.state_dict()["nets"]},
                                                                    buffer))
        report({**result.metrics, "final": 1}, None, files)
    except errors.DiffInjectError as exc:  # its message may name a staged checkpoint: staging stays
        payload = json.dumps({"type": type(exc).__name__, "message": str(exc)}).encode()
        report({"final": 1, "error": 1}, None, {"error.json": payload})
        return
    if rank == 0 and cfg.run.num_workers > 0:  # Ray has copied what rank 0 staged, maybe on another node
        shutil.rmtree(staging, ignore_errors=True)


def train_generator(job: TrainJob, cfg: ExperimentConfig, ctx: TrainContext):
    """The generator training a GAN job names; its result's `checkpoint` is a GAN checkpoint file."""
    if job.kind == "stylegan2_source":
        from diffinject.stages.synthesis.stylegan2_adapt import train_source

        return train_source(cfg.stylegan2, load_split(job.parquet, "train").images, ctx, cfg.stylegan2.seed)
    if job.kind == "fastgan_init":  # per-class starting points: every training image of each class
        train = load_split(job.parquet, "train")
        return _train_fastgans(job, cfg, ctx, train.images, train.labels, None)
    topk = load_topk(Path(job.inputs["topk"]))
    if job.kind == "stylegan2_adapt":
        from diffinject.nets.gan.checkpoint import read_gan_checkpoint
        from diffinject.stages.synthesis.stylegan2_adapt import adapt

        return adapt(cfg.stylegan2, read_gan_checkpoint(Path(job.inputs["source"]), "stylegan2"), topk["images"], ctx,
                     cfg.run.seed)
    init = None
    if "init" in job.inputs:
        from diffinject.nets.gan.checkpoint import read_gan_checkpoint

        init = read_gan_checkpoint(Path(job.inputs["init"]), "fastgan")
    return _train_fastgans(job, cfg, ctx, topk["images"], topk["labels"], init)


def _train_fastgans(job: TrainJob, cfg: ExperimentConfig, ctx: TrainContext, images, labels, init: dict | None):
    from diffinject.nets.perceptual import distance_fn
    from diffinject.stages.synthesis.fastgan_per_class import train_class_generators

    distance = distance_fn(cfg.fastgan.distance, random_backbone=job.random_lpips_backbone, device=ctx.device)
    return train_class_generators(cfg.fastgan, images, np.asarray(labels, dtype=np.int64), ctx, cfg.run.seed,
                                  distance, init=init)


def _to_bytes(write) -> bytes:
    """What `write(buffer)` writes into an in-memory buffer."""
    buffer = io.BytesIO()
    write(buffer)
    return buffer.getvalue()


def shipped(job: TrainJob, cfg: ExperimentConfig) -> TrainJob:
    """`job` with every file it reads named for a worker on any node (cluster.shipping), and, for a
    FastGAN job measuring with LPIPS, the VGG trunk's weights from this node's torch hub cache."""
    inputs = {name: ship(path) for name, path in job.inputs.items()}
    if job.kind in ("fastgan", "fastgan_init") and cfg.fastgan.distance == "lpips_vgg" and not job.random_lpips_backbone:
        from diffinject.nets.perceptual import backbone_checkpoint

        inputs[LPIPS_TRUNK] = ship(backbone_checkpoint("vgg")[0])
    return dataclasses.replace(job, parquet=ship(job.parquet), extra_train=[ship(p) for p in job.extra_train],
                               inputs=inputs)


def received(job: TrainJob) -> TrainJob:
    """`job` with local paths for what `shipped` named; the LPIPS trunk put in this node's hub cache."""
    inputs = {name: str(receive(item)) for name, item in job.inputs.items()}
    if LPIPS_TRUNK in inputs:
        install_hub_file(Path(inputs.pop(LPIPS_TRUNK)))
    return dataclasses.replace(job, parquet=str(receive(job.parquet)),
                               extra_train=[str(receive(p)) for p in job.extra_train], inputs=inputs)


def install_hub_file(path: Path) -> None:
    """Put `path` (a torchvision weights file) into this node's torch hub cache, where
    perceptual.load_lpips reads it, unless it is there already."""
    target = Path(torch.hub.get_dir()) / "checkpoints" / path.name
    if target.exists() or target.resolve() == path.resolve():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}")
    shutil.copyfile(path, tmp)
    os.replace(tmp, target)


def run_train_job(job: TrainJob, name: str | None = None, output_dir: Path | None = None,
                  placement_strategy: str = "PACK") -> JobOutput:
    """Run one training on the Ray cluster (ray.init() must have been called) and copy its
    final checkpoint to `output_dir`. A DiffInjectError inside the workers is re-raised here.
    `placement_strategy` places the workers (Ray's PACK | SPREAD | STRICT_PACK | STRICT_SPREAD);
    SPREAD puts them on different nodes where it can."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    cfg = from_dict(job.config)
    use_gpu = resolve_use_gpu(cfg.run.use_gpu)
    job = shipped(job, cfg)
    anonymous = name is None
    name = name or f"{job.kind}-{cfg.data.dataset}-{cfg.data.ratio}-{job.method}-s{cfg.run.seed}-{uuid.uuid4().hex[:8]}"
    # run.storage_path: a folder, or a URI pyarrow opens (s3://...: checkpoints shared by all nodes);
    # checkpoints are staged and the final one copied out on local disk either way
    remote = "://" in cfg.run.storage_path
    storage = cfg.run.storage_path if remote else str(Path(cfg.run.storage_path).resolve())
    local = Path(tempfile.gettempdir()) / "diffinject-train" if remote else Path(storage)
    staging = local / name / "staging"
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"job": job, "use_gpu": use_gpu, "staging_dir": str(staging),
                           "gpu_required": use_gpu and cfg.run.num_workers > 0 and not fake_gpus()},
        scaling_config=ScalingConfig(num_workers=cfg.run.num_workers, use_gpu=use_gpu and cfg.run.num_workers > 0,
                                     placement_strategy=placement_strategy),
        torch_config=TorchConfig(backend="gloo") if fake_gpus() else None,
        run_config=RunConfig(name=name, storage_path=storage,
                             failure_config=FailureConfig(max_failures=cfg.run.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS)),
    )
    sweep_killed_runs(local)
    claim = claim_run_folder(local / name, f"{storage.rstrip('/')}/{name}" if remote else None) if anonymous else None
    sigint = signal.getsignal(signal.SIGINT)
    try:
        result = trainer.fit()
    except Exception:  # Ray gave up on the job: its folder stays, like that of a job ended on an error
        _release(claim)
        raise
    finally:  # Ray Train leaves its SIGINT handler, bound to this finished run, in place
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, sigint)
    _release(claim)
    if result.error is not None:
        raise result.error
    output_dir = Path(output_dir or local / name / "final")
    with result.checkpoint.as_directory() as folder:
        if (Path(folder) / "error.json").exists():
            info = json.loads((Path(folder) / "error.json").read_text())
            raise getattr(errors, info["type"], errors.DiffInjectError)(info["message"])
        output_dir.mkdir(parents=True, exist_ok=True)
        for item in Path(folder).iterdir():
            if item.name != STATE_FILE:
                shutil.copy2(item, output_dir / item.name)
    _drop_run_folder(result, staging, output_dir.resolve())
    return JobOutput(metrics=dict(result.metrics), checkpoint_dir=output_dir)


def claim_run_folder(folder: Path, storage_uri: str | None) -> Path:
    """Mark `folder`, the local run folder of an anonymous job (named with a fresh uuid, so no
    rerun resumes it), as this process's while the job runs; `storage_uri`: the job's folder
    under a URI run.storage_path, where Ray keeps its own copies. Returns the claim, which the
    job removes when it ends with a result or an error; a killed process leaves it behind."""
    claim = folder / OWNER_FILE
    write_json(claim, {"host": socket.gethostname(), "pid": os.getpid(), "storage_uri": storage_uri})
    return claim


def _release(claim: Path | None) -> None:
    if claim is not None:
        claim.unlink(missing_ok=True)


def sweep_killed_runs(local: Path) -> None:
    """Delete the run folders under `local` that anonymous jobs claimed (claim_run_folder) in a
    process of this host that is gone: killed (SIGKILL, out of memory) before its job ended.
    Their checkpoints (in local mode the staged ones, the only copies) would otherwise stay under
    run.storage_path for good, since a rerun of the job starts under a new name."""
    from pyarrow.fs import FileSystem

    for claim in Path(local).glob(f"*/{OWNER_FILE}"):
        owner = read_json(claim)
        if not owner or owner.get("host") != socket.gethostname() or process_alive(int(owner.get("pid", 0))):
            continue  # unreadable, another host's, or its job may still run
        if owner.get("storage_uri"):
            filesystem, path = FileSystem.from_uri(owner["storage_uri"])
            with contextlib.suppress(OSError):  # Ray had written nothing there yet
                filesystem.delete_dir(path)
        shutil.rmtree(claim.parent, ignore_errors=True)


def _drop_run_folder(result, staging: Path, keep: Path) -> None:
    """Empty the folder of a finished job, except `keep`, where its final files are. Its
    checkpoints only served resuming this run: left behind they pile up under
    run.storage_path (a diffusion model's twice over, staged and Ray's copy), and a rerun under
    the same name (stage 2 is named by its artifact key) would resume from them. A job that
    stopped on an error keeps its folder (the error names its last good checkpoint); one Ray
    gave up on (more worker failures than run.max_failures) too, and a rerun resumes from it."""
    from pyarrow.fs import FileSelector, FileType

    shutil.rmtree(staging, ignore_errors=True)  # local mode (num_workers=0): the only copy of its checkpoints
    for info in result.filesystem.get_file_info(FileSelector(result.path)) if result.path else []:
        if info.type == FileType.Directory and Path(info.path) != keep:
            result.filesystem.delete_dir(info.path)
        elif info.type == FileType.File:
            result.filesystem.delete_file(info.path)
    with contextlib.suppress(OSError):  # missing, or it holds `keep`
        staging.parent.rmdir()


