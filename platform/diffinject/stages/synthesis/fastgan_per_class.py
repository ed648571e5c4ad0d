"""AmpliBias's generators (Ko et al., CIKM 2023, Sec. 3): one FastGAN (Liu et al., ICLR 2021)
per class, trained on that class's top-K bias-conflicting images; a generator's images are
labelled with its class. Knows nothing of Ray.

Each class trains in turn, in label order: the discriminator on DiffAugment-ed real (randomly
flipped, with fastgan.hflip) and fake images with the hinge loss (random margins in [0.8, 1), as
FastGAN-pytorch train.py) plus its decoders' reconstruction loss on the reals (summed over the
batch, as FastGAN-pytorch train.py), the generator with the hinge loss, Adam for both, an EMA of
the generator. Every random draw of a step (batch, latents, noise maps, the decoded quadrant,
flips, augmentation, hinge margins) is seeded by (seed, class, step, rank)
and each class's networks are initialised from (seed, class), so the state at a checkpoint is
the whole state: a resumed run continues exactly, mid-class or at a class boundary.

With a starting-point file (fastgan.init_checkpoint: per-class G and D, e.g. the quick run's
shipped FastGANs trained on all of each class's images) each class's G, its EMA and D start from
that class's networks instead of (seed, class). The written file holds every class's EMA
generator (`class_<c>`) and discriminator (`class_<c>_discriminator`), so it can start another.
"""
from __future__ import annotations

import contextlib
import copy
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from diffinject.config.schema import FastGANConfig
from diffinject.core.errors import CheckpointError, ConfigError, DataError, TrainingError
from diffinject.core.numerics import bf16_autocast_on
from diffinject.core.plots import png_bytes, tile_images
from diffinject.nets.diffusion.checkpoint import load_strict
from diffinject.nets.diffusion.pixels import to_model_pixels, to_uint8
from diffinject.nets.gan.checkpoint import gan_checkpoint_bytes, load_net, read_gan_checkpoint
from diffinject.nets.gan.diffaugment import diff_augment
from diffinject.nets.gan.fastgan import QUADRANTS, Discriminator, Generator
from diffinject.nets.gan.losses import hinge_d_loss, hinge_g_loss, reconstruction_loss
from diffinject.nets.gan.presets import FastGANPreset, get_gan_preset
from diffinject.nets.metrics import all_ranks_finite, all_reduce_sum
from diffinject.training.loop import TrainContext, seed_everything

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
SEED_MASK = 0x7FFFFFFF


@dataclass
class FastGANResult:
    generators: dict[int, Generator]  # class -> its EMA generator, eval mode
    step: int                         # steps over all classes
    metrics: dict[str, float]
    checkpoint: bytes                 # every class's EMA generator as a diffinject GAN checkpoint


def check_training_data(images: np.ndarray, labels: np.ndarray) -> None:
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise DataError(f"FastGAN training images must be uint8 N x H x W x 3, got {images.dtype} "
                        f"{tuple(images.shape)}")
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"FastGAN training labels must be {len(images)} integers (one per image), got "
                        f"{labels.dtype} {tuple(labels.shape)}")
    if len(images) == 0:
        raise DataError("FastGAN training set is empty")


def class_batch(num_images: int, batch_size: int, class_seed: int, step: int, rank: int,
                world_size: int) -> np.ndarray:
    """This rank's share of the step's global batch, always batch_size images: seeded epochs of
    the class's images (each epoch's remainder left out), or draws with replacement when the
    class has fewer images than a batch."""
    if num_images < batch_size:
        draws = np.random.default_rng([class_seed, step]).integers(0, num_images, batch_size)
        return draws[rank::world_size]
    epoch, position = divmod(step, num_images // batch_size)
    order = np.random.default_rng([class_seed, epoch]).permutation(num_images)
    return order[position * batch_size:(position + 1) * batch_size][rank::world_size]


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """Parameters: ema <- decay ema + (1 - decay) model; buffers (BN statistics) copied."""
    for averaged, current in zip(ema.parameters(), model.parameters()):
        averaged.lerp_(current, 1.0 - decay)
    for averaged, current in zip(ema.buffers(), model.buffers()):
        averaged.copy_(current)


def random_hflip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image of an N x C x H x W batch mirrored left-right with probability 1/2, one draw
    per image from `generator` (on the CPU), as FastGAN-pytorch train.py's RandomHorizontalFlip."""
    flip = (torch.rand(len(images), generator=generator) < 0.5).to(images.device)
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


@torch.no_grad()
def sample_class_images(generators: dict[int, Generator], counts: dict[int, int], seeds: np.ndarray, out_size: int,
                        batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """counts[c] images of each class c (in label order), labelled c: image i comes from the
    latent and noise maps (one per noise injection, Generator.noise_shapes) drawn from seeds[i]
    alone, so it is the same whatever the batching; resized (antialiased) to out_size. The
    generators are put in eval mode."""
    seeds = np.asarray(seeds, dtype=np.int64)
    total = sum(counts.values())
    if seeds.shape != (total,):
        raise ConfigError(f"sample_class_images needs one seed per image ({total}), got {seeds.shape[0]}")
    missing = sorted(set(counts) - set(generators))
    if missing:
        raise ConfigError(f"no FastGAN generator for class(es) {missing} (have {sorted(generators)})")
    images, labels, position = [], [], 0
    for c in sorted(counts):
        generator = generators[c].eval()
        device = next(generator.parameters()).device
        class_seeds = seeds[position:position + counts[c]]
        for start in range(0, len(class_seeds), batch_size):
            inputs = [generator.random_inputs(1, torch.Generator().manual_seed(int(s)))
                      for s in class_seeds[start:start + batch_size]]
            z = torch.cat([z for z, _ in inputs]).to(device)
            noise = [torch.cat(maps).to(device) for maps in zip(*(maps for _, maps in inputs))]
            images.append(to_uint8(generator(z, noise)[0], out_size, out_size))
        labels.append(np.full(counts[c], c, dtype=np.int64))
        position += counts[c]
    if not images:
        return np.zeros((0, out_size, out_size, 3), np.uint8), np.zeros(0, np.int64)
    return np.concatenate(images), np.concatenate(labels)


def load_class_generators(path: Path) -> dict[int, Generator]:
    """class -> EMA generator (eval mode) of an AmpliBias FastGAN checkpoint file."""
    path = Path(path)
    payload = read_gan_checkpoint(path, "fastgan")
    preset = get_gan_preset("fastgan", payload["preset"])
    generators = {}
    for name in payload["nets"]:
        match = re.fullmatch(r"class_(\d+)(_discriminator)?", name)
        if match is None:
            raise CheckpointError(f"{path} has a network {name!r}; a FastGAN checkpoint names them class_<label> "
                                  f"(and class_<label>_discriminator)")
        if match[2] is None:
            generators[int(match[1])] = load_net(Generator(preset), payload, name, path)
    if not generators:
        raise CheckpointError(f"{path} holds no FastGAN generator (no class_<label> network)")
    return dict(sorted(generators.items()))


def start_from(init: dict, c: int, G: Generator, ema: Generator, D: Discriminator) -> None:
    """G and its EMA from the starting-point file's class-c generator, D from its discriminator
    (strictly: the file must be of the run's preset and hold both networks of class c)."""
    where = f"fastgan.init_checkpoint ({init['preset']})"
    if init["preset"] != G.preset.name:
        raise CheckpointError(f"{where} holds {init['preset']} FastGANs; the config's preset is {G.preset.name}")
    for name in (f"class_{c}", f"class_{c}_discriminator"):
        if name not in init["nets"]:
            raise CheckpointError(f"{where} has no network {name!r}: it does not start class {c} (it has "
                                  f"{', '.join(init['nets'])})")
    load_strict(G, init["nets"][f"class_{c}"], f"{where}, class {c} generator")
    load_strict(ema, init["nets"][f"class_{c}"], f"{where}, class {c} generator")
    load_strict(D, init["nets"][f"class_{c}_discriminator"], f"{where}, class {c} discriminator")


def _sample_grid(ema: Generator, cfg: FastGANConfig, seed: int, c: int) -> np.ndarray:
    """The EMA generator's images from fixed seeds (the same each time, so grids show progress)."""
    seeds = np.arange(cfg.sample_images, dtype=np.int64) + hash((seed, c, 12345)) % SEED_MASK
    images, _ = sample_class_images({c: ema}, {c: cfg.sample_images}, seeds, ema.preset.resolution)
    return tile_images(images, columns=10)


def _train_class(cfg: FastGANConfig, preset: FastGANPreset, images: np.ndarray, c: int, index: int,
                 ctx: TrainContext, seed: int, distance: Distance, finished: dict[int, dict], init: dict | None,
                 kept: dict[int, dict]) -> tuple[Generator, Discriminator, dict[str, float]]:
    device = ctx.device
    class_seed = hash((seed, c)) & SEED_MASK
    seed_everything(class_seed)
    G, D = Generator(preset), Discriminator(preset)
    ema = copy.deepcopy(G)
    if init is not None:
        start_from(init, c, G, ema, D)
    G, D, ema = G.to(device), D.to(device), ema.to(device).eval().requires_grad_(False)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    step, resume = 0, ctx.resume_state
    if resume is not None and resume["class_index"] == index:
        G.load_state_dict(resume["generator"])
        D.load_state_dict(resume["discriminator"])
        ema.load_state_dict(resume["ema"])
        opt_g.load_state_dict(resume["optimizer_g"])
        opt_d.load_state_dict(resume["optimizer_d"])
        step = int(resume["step"])
    g_model, d_model = G, D
    if dist.is_available() and dist.is_initialized():
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        g_model, d_model = DistributedDataParallel(G, device_ids=ids), DistributedDataParallel(D, device_ids=ids)
    use_bf16 = bf16_autocast_on(cfg.bf16, device.type == "cuda")
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_bf16 else contextlib.nullcontext
    G.train()
    D.train()

    sums, started, start_step = torch.zeros(4, dtype=torch.float64), time.perf_counter(), step
    metrics: dict[str, float] = {}
    while step < cfg.num_steps:
        idx = class_batch(len(images), cfg.batch_size, class_seed, step, ctx.rank, ctx.world_size)
        generator = torch.Generator().manual_seed(hash((seed, c, step, ctx.rank)) & SEED_MASK)
        real = to_model_pixels(images[idx], preset.resolution, device)
        z, noise = G.random_inputs(len(idx), generator, device)
        part = int(torch.randint(QUADRANTS, (1,), generator=generator))
        if cfg.hflip:
            real = random_hflip(real, generator)
        with autocast():
            fake = g_model(z, noise)
        real = diff_augment(real, cfg.policy, generator)
        fake = tuple(diff_augment(image.float(), cfg.policy, generator) for image in fake)

        with autocast():
            real_logits, decoded = d_model(real, "real", part)
            fake_logits = d_model(tuple(image.detach() for image in fake), "fake")
        # summed over this rank's images; DDP averages the gradients over the ranks, so x world_size
        # keeps it the sum over the global batch
        recon = reconstruction_loss(decoded, real, part, distance) * ctx.world_size
        d_loss = hinge_d_loss(real_logits.float(), fake_logits.float(), generator) + recon
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()

        D.requires_grad_(False)  # the generator's step: gradients through D, not into it
        with autocast():
            g_loss = hinge_g_loss(D(fake, "fake").float())
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        D.requires_grad_(True)
        update_ema(ema, G, cfg.ema_decay)
        step += 1

        values = [float(d_loss.detach()), float(g_loss.detach()), float(recon.detach())]
        if not all_ranks_finite(sum(values), device):
            last = ctx.last_checkpoint()
            raise TrainingError(f"non-finite FastGAN loss (d {values[0]}, g {values[1]}, recon {values[2]}) for "
                                f"class {c} at step {step}; last good checkpoint: "
                                f"{last or 'none (no checkpoint was written yet)'}")
        sums += torch.tensor([*values, 1.0], dtype=torch.float64)
        global_step = index * cfg.num_steps + step
        if step % cfg.log_every == 0 or step == cfg.num_steps:
            total = all_reduce_sum(sums.to(device)).cpu()
            metrics = {"d_loss": float(total[0] / total[3]), "g_loss": float(total[1] / total[3]),
                       "recon": float(total[2] / total[3]), "class": c,
                       "images_per_s": (step - start_step) * cfg.batch_size / (time.perf_counter() - started),
                       "step": global_step}
            ctx.log(global_step, metrics)
            sums.zero_()
        if cfg.sample_every and (step % cfg.sample_every == 0 or step == cfg.num_steps) and ctx.rank == 0:
            grid = _sample_grid(ema, cfg, seed, c)
            ctx.log_artifact(f"class_{c}_step_{step:07d}.png", png_bytes(grid, scale=max(1, 128 // preset.resolution)),
                             "samples")
        if step % cfg.checkpoint_every == 0 or step == cfg.num_steps:
            if cfg.keep_checkpoints and ctx.rank == 0:
                kept.setdefault(step, {})[c] = _class_nets(ema, D)
            done = {c: _class_nets(ema, D)} if step == cfg.num_steps else {}
            state = {"class_index": index, "step": step, "generator": G.state_dict(),
                     "discriminator": D.state_dict(), "ema": ema.state_dict(), "optimizer_g": opt_g.state_dict(),
                     "optimizer_d": opt_d.state_dict(), "finished": {**finished, **done}}
            ctx.report({**metrics, "step": global_step}, state)
    return ema, D, metrics


def _class_nets(ema: Generator, D: Discriminator) -> dict[str, dict]:
    return {"generator": copy.deepcopy(ema.state_dict()), "discriminator": copy.deepcopy(D.state_dict())}


def train_class_generators(cfg: FastGANConfig, images: np.ndarray, labels: np.ndarray, ctx: TrainContext, seed: int,
                           distance: Distance, init: dict | None = None) -> FastGANResult:
    """One FastGAN per class present in `labels`, cfg.num_steps each, on uint8 `images`
    (N x H x W x 3, resized to the preset). `distance(a, b)`: per-sample distances of [-1, 1]
    image batches, the decoders' reconstruction distance (cfg.distance names it). `init`: a
    read_gan_checkpoint payload of per-class starting points (G and D of every class trained).
    With cfg.keep_checkpoints, every checkpoint_every-th step's networks of all classes are one
    MLflow artifact `checkpoints/step_NNNNNNN.pt` at the end (the steps every class reached in
    this process: a run resumed mid-way keeps the steps of the classes it trained)."""
    preset = get_gan_preset("fastgan", cfg.preset)
    check_training_data(images, labels)
    if cfg.batch_size < ctx.world_size:
        raise ConfigError(f"fastgan.batch_size {cfg.batch_size} is smaller than the {ctx.world_size} workers; "
                          f"each needs at least one image a step")
    classes = sorted(int(c) for c in np.unique(labels))
    finished = {int(c): nets for c, nets in (ctx.resume_state or {}).get("finished", {}).items()}
    nets: dict[int, dict] = {}
    generators: dict[int, Generator] = {}
    kept: dict[int, dict] = {}
    metrics: dict[str, float] = {}
    for index, c in enumerate(classes):
        if c not in finished:
            ema, D, metrics = _train_class(cfg, preset, images[labels == c], c, index, ctx, seed, distance, finished,
                                           init, kept)
            finished[c] = _class_nets(ema, D)
        generators[c] = Generator(preset).to(ctx.device)
        generators[c].load_state_dict(finished[c]["generator"])
        generators[c].eval().requires_grad_(False)
    step = len(classes) * cfg.num_steps
    for at, by_class in sorted(kept.items()):
        if set(by_class) == set(classes):
            ctx.log_artifact(f"step_{at:07d}.pt", _checkpoint(preset, by_class, at, cfg), "checkpoints")
    checkpoint = _checkpoint(preset, finished, cfg.num_steps, cfg)
    return FastGANResult(generators=generators, step=step, metrics={**metrics, "step": step}, checkpoint=checkpoint)


def _checkpoint(preset: FastGANPreset, by_class: dict[int, dict], step: int, cfg: FastGANConfig) -> bytes:
    """A FastGAN file: each class's EMA generator and discriminator; `step` per class."""
    nets = {}
    for c in sorted(by_class):
        nets[f"class_{c}"] = by_class[c]["generator"]
        nets[f"class_{c}_discriminator"] = by_class[c]["discriminator"]
    return gan_checkpoint_bytes("fastgan", preset.name, nets, step, asdict(cfg))
