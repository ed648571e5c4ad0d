"""The classifier training loop shared by every method and by the stage-1 bias model.

It knows nothing of Ray: a `TrainContext` tells it its rank, device and checkpoint to
resume from, and gives it `report` (metrics + optional checkpoint state) and `log`
callbacks. Under torch.distributed each rank takes a strided share of every global batch
and networks are wrapped in DistributedDataParallel, so the effective batch size is the
preset's whatever the number of workers. The sample order and augmentation depend only
on (seed, step, rank), so a run resumed from a checkpoint continues exactly.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from diffinject.config.schema import ClassifierConfig
from diffinject.core.accel import bf16_autocast, in_layout, memory_format
from diffinject.core.errors import NonFiniteLoss, TrainingError
from diffinject.core.numerics import bf16_autocast_on
from diffinject.data.parquet import ArraySplit
from diffinject.nets.metrics import accuracy_metrics, all_reduce_sum, cell_counts


# the normalisation of ResNet inputs (DisEnt's and LfF's preprocessing: CIFAR-10's channel statistics)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


class Learner(Protocol):
    """What the loop asks of a method (diffinject.methods.base.Method is one): its networks move,
    wrap for DDP, switch mode, take one update, predict, and save and load their state."""

    def to(self, device: torch.device, memory_format: torch.memory_format) -> object: ...
    def wrap(self, wrapper: Callable) -> None: ...
    def train(self, mode: bool) -> None: ...
    def update(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> dict[str, float]: ...
    def predict(self, x: torch.Tensor) -> torch.Tensor: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...
    def net_states(self) -> dict: ...
    def load_net_states(self, states: dict) -> None: ...


@dataclass
class TrainData:
    train: ArraySplit
    valid: ArraySplit
    test: ArraySplit
    num_classes: int
    num_biases: int
    # the accuracy (an accuracy_metrics key) the dataset reports on its test split: "acc", or
    # "conflicting_acc" where the references score only the bias-conflicting test images (BFFHQ)
    reported: str = "acc"


@dataclass
class TrainContext:
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    resume_state: dict | None = None
    # report(metrics, state): `state` references live tensors; serialise it before returning.
    report: Callable[[dict, dict | None], None] = lambda metrics, state: None
    log: Callable[[int, dict], None] = lambda step, metrics: None
    last_checkpoint: Callable[[], str | None] = lambda: None
    # log_artifact(name, payload, folder): a file for the run's MLflow artifacts (rank 0)
    log_artifact: Callable[[str, bytes, str], None] = lambda name, payload, folder: None


@dataclass
class FitResult:
    method: Learner
    step: int
    # final: test and valid metrics of the selected weights, selected_step, the reported test
    # accuracy under each selection (SELECTIONS), and steps_run: the updates this call made
    # (num_steps less the step it resumed from), which shows whether a resume took its state
    metrics: dict[str, float]


# The reported test accuracy (TrainData.reported) of one run under each model selection, all from
# the same evaluations: the weights cfg.select chose, the best test accuracy of any evaluation (the
# reference repositories' number), and the last weights.


class Preprocess:
    """uint8 N x H x W x 3 batches -> float N x 3 x H' x W' on the device (resize, augment,
    normalise; channels_last when cfg.channels_last), done on tensors so it runs on the GPU when
    there is one. `autocast()`: bf16 autocast where cfg.bf16 asks for it and the device is a GPU."""

    def __init__(self, cfg: ClassifierConfig, device: torch.device):
        self.cfg = cfg
        self.device = device
        self.layout = memory_format(cfg.channels_last)
        self.mean = torch.tensor(CIFAR_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(CIFAR_STD, device=device).view(1, 3, 1, 1)

    def output_shape(self, image_shape: tuple[int, ...]) -> tuple[int, int, int]:
        h, w = image_shape[:2]
        size = self.cfg.resize
        return (3, size, size) if size else (3, h, w)

    def __call__(self, images: np.ndarray, train: bool, generator: torch.Generator | None = None) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device).permute(0, 3, 1, 2).float() / 255.0
        if self.cfg.resize and x.shape[-1] != self.cfg.resize:
            x = F.interpolate(x, size=(self.cfg.resize, self.cfg.resize), mode="bilinear",
                              align_corners=False, antialias=True)
        if train and self.cfg.augment == "crop_flip":
            x = random_crop_flip(x, padding=4, generator=generator)
        if self.cfg.normalize:
            x = (x - self.mean) / self.std
        return in_layout(x, self.cfg.channels_last)

    def autocast(self):
        return bf16_autocast(self.device, bf16_autocast_on(self.cfg.bf16, self.device.type == "cuda"))


def random_crop_flip(x: torch.Tensor, padding: int, generator: torch.Generator | None) -> torch.Tensor:
    """torchvision's RandomCrop(size, padding) + RandomHorizontalFlip, batched."""
    n, c, h, w = x.shape
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator).to(x.device)
    flips = torch.rand(n, generator=generator).to(x.device) < 0.5
    padded = F.pad(x, (padding, padding, padding, padding))
    rows = offsets[:, 0:1] + torch.arange(h, device=x.device)
    cols = offsets[:, 1:2] + torch.arange(w, device=x.device)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    out = padded.gather(2, rows[:, None, :, None].expand(n, c, h, w + 2 * padding))
    return out.gather(3, cols[:, None, None, :].expand(n, c, h, w))


def seed_everything(seed: int) -> None:
    """Seed the generators that network initialisation uses (identically on every rank)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def batch_indices(num_samples: int, batch_size: int, seed: int, step: int, rank: int,
                  world_size: int) -> np.ndarray:
    """This rank's sample indices for global step `step` (epochs are seeded permutations)."""
    steps_per_epoch = math.ceil(num_samples / batch_size)
    epoch, position = divmod(step, steps_per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(num_samples)
    global_batch = order[position * batch_size:(position + 1) * batch_size]
    return global_batch[rank::world_size]


@torch.no_grad()
def evaluate(method: Learner, split: ArraySplit, prep: Preprocess, batch_size: int, num_classes: int,
             num_biases: int, rank: int = 0, world_size: int = 1) -> dict[str, float]:
    """Accuracy metrics over `split`; each rank scores a strided shard, counts are summed."""
    method.train(False)
    device = prep.device
    counts = torch.zeros(2, num_classes, num_biases, dtype=torch.float64, device=device)
    mine = np.arange(rank, len(split), world_size)
    for start in range(0, len(mine), batch_size):
        idx = mine[start:start + batch_size]
        with prep.autocast():
            logits = method.predict(prep(split.images[idx], train=False))
        labels = torch.from_numpy(split.labels[idx]).to(device)
        biases = torch.from_numpy(split.biases[idx]).to(device)
        counts += cell_counts(logits.argmax(1), labels, biases, num_classes, num_biases)
    method.train(True)
    return accuracy_metrics(all_reduce_sum(counts))


def fit(method: Learner, data: TrainData, cfg: ClassifierConfig, ctx: TrainContext, seed: int,
        eval_offset: int = 0) -> FitResult:
    """Train `method` for cfg.num_steps, evaluating after every cfg.eval_every steps and the last
    one (with `eval_offset` 1 after steps 1, 1 + eval_every, ... only: the references'
    `step % valid_freq == 0` on 0-based steps), and saving the resume state at those evaluations
    (only at multiples of cfg.checkpoint_every and the last, when it is set: each save costs the
    quick run's MLP more than its evaluation).

    Model selection (cfg.select): the weights with the best valid accuracy (default), the
    best test accuracy (the reference repos' practice, for comparison only), or the last. The
    final metrics carry the reported test accuracy under every selection (SELECTIONS).
    """
    prep = Preprocess(cfg, ctx.device)
    method.to(ctx.device, prep.layout)
    if dist.is_available() and dist.is_initialized():
        from torch.nn.parallel import DistributedDataParallel

        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        method.wrap(lambda net: DistributedDataParallel(net, device_ids=ids))
    method.train(True)
    reported = f"test_{data.reported}"

    step, best_score, best_step, best_nets = 0, -math.inf, -1, None
    best_test, best_test_step, latest_test, latest_step = -math.inf, -1, None, -1
    if ctx.resume_state is not None:
        method.load_state_dict(ctx.resume_state["method"])
        step = ctx.resume_state["step"]
        best_score = ctx.resume_state["best_score"]
        best_step = ctx.resume_state.get("best_step", -1)  # -1: a checkpoint from before it was kept
        best_nets = ctx.resume_state["best_nets"]
        best_test = ctx.resume_state.get("best_test", -math.inf)
        best_test_step = ctx.resume_state.get("best_test_step", -1)
        latest_test, latest_step = ctx.resume_state.get("latest_test"), ctx.resume_state.get("latest_step", -1)

    def scores() -> dict[str, float]:
        args = (prep, cfg.batch_size * 2, data.num_classes, data.num_biases, ctx.rank, ctx.world_size)
        out = {f"valid_{k}": v for k, v in evaluate(method, data.valid, *args).items()}
        out.update({f"test_{k}": v for k, v in evaluate(method, data.test, *args).items()})
        return out

    def evaluated(step: int) -> bool:
        if eval_offset:
            return (step - eval_offset) % cfg.eval_every == 0
        return step % cfg.eval_every == 0 or step == cfg.num_steps

    started, start_step, last_log = time.perf_counter(), step, {}
    while step < cfg.num_steps:
        idx = batch_indices(len(data.train), cfg.batch_size, seed, step, ctx.rank, ctx.world_size)
        generator = torch.Generator().manual_seed(hash((seed, step, ctx.rank)) & 0x7FFFFFFF)
        x = prep(data.train.images[idx], train=True, generator=generator)
        y = torch.from_numpy(data.train.labels[idx]).to(ctx.device)
        try:
            with prep.autocast():
                stats = method.update(x, y, torch.from_numpy(idx).to(ctx.device))
        except NonFiniteLoss as exc:
            last = ctx.last_checkpoint()
            raise TrainingError(f"{exc} at step {step + 1}; last good checkpoint: "
                                f"{last or 'none (no checkpoint was written yet)'}") from None
        step += 1
        if step % cfg.log_every == 0:
            last_log = {f"train_{k}": v for k, v in stats.items()}
            ctx.log(step, last_log)
        if evaluated(step):
            metrics = scores()
            key = {"valid": "valid_acc", "test": reported, "last": None}[cfg.select]
            score = metrics[key] if key else step
            if score > best_score:
                best_score, best_step, best_nets = score, step, method.net_states()
            if metrics[reported] > best_test:
                best_test, best_test_step = metrics[reported], step
            latest_test, latest_step = metrics[reported], step
            metrics.update(step=step, images_per_s=(step - start_step) * cfg.batch_size / (time.perf_counter() - started))
            ctx.log(step, metrics)
            state = None
            if not cfg.checkpoint_every or step % cfg.checkpoint_every == 0 or step == cfg.num_steps:
                state = {"method": method.state_dict(), "step": step, "best_score": best_score,
                         "best_step": best_step, "best_nets": best_nets, "best_test": best_test,
                         "best_test_step": best_test_step, "latest_test": latest_test, "latest_step": latest_step}
            ctx.report({**metrics, **last_log}, state)

    if cfg.select == "last" and best_step != step:  # the last weights, evaluated or not
        best_step, best_nets = step, method.net_states()
    method.load_net_states(best_nets)
    final = scores()
    final.update(step=step, steps_run=step - start_step, selected_score=float(best_score), selected_step=best_step,
                 reported_acc=final[reported], reported_acc_best_test=float(best_test), best_test_step=best_test_step,
                 valid_conflict_share=float(1.0 - data.valid.aligned.mean()))
    if latest_step == step:  # the last weights were evaluated (always, unless eval_offset)
        final["reported_acc_last"] = latest_test
    return FitResult(method=method, step=step, metrics=final)
